"""Template batches: a LangChain `ChatPromptTemplate` (f-string variables, never jinja2, which can
run code) filled from each row of `inputs` at submit, so a worker never evaluates a template and a
bad row is a 422 rather than a failed item later."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from string import Formatter
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompts import ChatPromptTemplate, SystemMessagePromptTemplate

from api.items import UniqueIds
from shared.batches import ItemRecord
from shared.errors import InvalidRequest
from shared.schemas import MAX_CUSTOM_ID, PromptTemplate, RowValue

#: LangChain's message types as OpenAI's roles.
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


@dataclass(frozen=True, slots=True)
class Rendered:
    """A template's rows as items; a leading system message that no row changes is the batch's
    `system`, stored once rather than with every item."""

    items: list[ItemRecord]
    system: str | None


def render_rows(
    spec: PromptTemplate, rows: Sequence[dict[str, RowValue]], max_chars: int, *, hoist: bool
) -> Rendered:
    """Each row through the template; InvalidRequest names `inputs[i]` for a row that lacks a
    variable. Values are inserted literally: braces in a value stay braces. With `hoist` (the
    batch names no `system` of its own), a fixed leading system message becomes the batch's."""
    template, system = _split_system(_template(spec)) if hoist else (_template(spec), None)
    variables = set(template.input_variables)
    items: list[ItemRecord] = []
    ids = UniqueIds("inputs")
    for index, row in enumerate(rows):
        param = f"inputs[{index}]"
        missing = variables.difference(row)
        if missing:
            raise InvalidRequest(
                f"Row {index} has no value for {', '.join(sorted(missing))} (the template's "
                f"variables: {', '.join(sorted(variables))}).",
                param=param,
            )
        # A null is an empty cell, not the text "None".
        values = {v: "" if row[v] is None else row[v] for v in variables}
        messages = _as_openai(template.format_messages(**values))
        if sum(len(m["content"]) for m in messages) > max_chars:
            raise InvalidRequest(
                f"Row {index} makes a prompt longer than {max_chars} characters.", param=param
            )
        items.append((ids.add(_custom_id(row, param), index), messages))
    return Rendered(items, system)


def _custom_id(row: dict[str, RowValue], param: str) -> str | None:
    value = row.get("custom_id")
    if value is None:
        return None
    custom_id = str(value)
    if not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
        raise InvalidRequest(
            f"A custom_id has 1 to {MAX_CUSTOM_ID} characters.", param=f"{param}.custom_id"
        )
    return custom_id


def _template(spec: PromptTemplate) -> ChatPromptTemplate:
    try:
        template = ChatPromptTemplate.from_messages(spec.messages, template_format="f-string")
    except (ValueError, KeyError) as exc:
        raise InvalidRequest(f"The template is not valid: {exc}", param="template") from None
    if "" in template.input_variables:
        raise InvalidRequest(
            "The template has an empty placeholder {}; name every variable, as in {review}, "
            "or write {{ and }} for literal braces.",
            param="template",
        )
    for _, text in spec.messages:
        _check_fields(text)
    return template


def _check_fields(text: str) -> None:
    """Refuse format specs and conversions (`{x:>9999999}`, `{x!r}`): a variable is its value,
    inserted as is, and a spec could fail on a row or ask for gigabytes of padding."""
    for _, name, spec, conversion in Formatter().parse(text):
        if name is not None and (spec or conversion):
            raise InvalidRequest(
                f"The template's {{{name}}} has a format spec or conversion; write {{{name}}} "
                "alone (and {{ }} for literal braces).",
                param="template",
            )


def _split_system(template: ChatPromptTemplate) -> tuple[ChatPromptTemplate, str | None]:
    """A leading system message without variables, taken out of the template."""
    first, *rest = template.messages
    if not rest or not isinstance(first, SystemMessagePromptTemplate) or first.input_variables:
        return template, None
    return ChatPromptTemplate.from_messages(rest), str(first.format().content)


def _as_openai(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    return [{"role": _ROLES[m.type], "content": m.content} for m in messages]
