"""Template batches: a LangChain `ChatPromptTemplate` (f-string variables, never jinja2, which can
run code) filled from each row of `inputs` at submit, so a worker never evaluates a template and a
bad row is a 422 rather than a failed item later."""

from __future__ import annotations

from collections import Counter
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
    spec: PromptTemplate,
    rows: Sequence[dict[str, RowValue]],
    max_chars: int,
    max_total_chars: int,
    *,
    hoist: bool,
) -> Rendered:
    """Each row through the template; InvalidRequest names `inputs[i]` for a row that lacks a
    variable. Values are inserted literally: braces in a value stay braces. With `hoist` (the
    batch names no `system` of its own), a fixed leading system message becomes the batch's.

    A small body can ask for a huge batch (a template of a thousand `{x}` over rows of long
    `x`), so sizes are counted from the template's parts before anything is rendered: the
    template's text, each row's prompt (`max_chars`), and all the rows together
    (`max_total_chars`: no larger than the largest body that could have listed the prompts)."""
    template_chars = sum(len(text) for _, text in spec.messages)
    if template_chars > max_chars:
        raise InvalidRequest(
            f"The template is longer than {max_chars} characters.", param="template"
        )
    template, system = _split_system(_template(spec)) if hoist else (_template(spec), None)
    variables = set(template.input_variables)
    literal, uses = _parts(spec.messages[1:] if system is not None else spec.messages)
    items: list[ItemRecord] = []
    ids = UniqueIds("inputs")
    total = 0
    for index, row in enumerate(rows):
        param = f"inputs[{index}]"
        missing = variables.difference(row)
        if missing:
            raise InvalidRequest(
                f"Row {index + 1} ({param}) has no value for {', '.join(sorted(missing))} (the "
                f"template's variables: {', '.join(sorted(variables))}).",
                param=param,
            )
        values = {v: _text(row[v]) for v in variables}
        chars = literal + sum(count * len(values[v]) for v, count in uses.items())
        if chars > max_chars:
            raise InvalidRequest(
                f"Row {index + 1} ({param}) makes a prompt longer than {max_chars} characters.",
                param=param,
            )
        total += chars
        if total > max_total_chars:
            raise InvalidRequest(
                f"The rows make prompts of more than {max_total_chars} characters in all.",
                param="inputs",
            )
        messages = _as_openai(template.format_messages(**values))
        items.append((ids.add(_custom_id(row, param), index), messages))
    return Rendered(items, system)


def _text(value: RowValue) -> str:
    """A row's value as the template inserts it; a null is an empty cell, not "None"."""
    return "" if value is None else str(value)


def _parts(messages: Sequence[tuple[str, str]]) -> tuple[int, Counter[str]]:
    """A template's literal characters (`{{` counted as the one brace it renders), and how
    many times each variable is inserted: a row's prompt length, without rendering it."""
    literal, uses = 0, Counter[str]()
    for _, text in messages:
        for before, name, _spec, _conversion in Formatter().parse(text):
            literal += len(before)
            if name is not None:
                uses[name] += 1
    return literal, uses


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
