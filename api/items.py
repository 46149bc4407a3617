"""What one item of a submission must be, beyond its schema: a prompt within the limits, a
conversation OpenAI would take, params under the ceilings, a custom_id used once."""

from __future__ import annotations

from collections.abc import Callable

from shared.batches import ItemBody, ItemRecord
from shared.chat import BatchParams, Message, dump_messages
from shared.errors import InvalidRequest
from shared.schemas import PromptEntry, PromptItem
from shared.settings import Settings


def check_params(params: BatchParams, settings: Settings, param: str) -> None:
    """Refuse params beyond the configured ceilings."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(params, name)
        if value is not None and value > settings.max_output_tokens:
            raise InvalidRequest(
                f"{name} is at most {settings.max_output_tokens}.", param=f"{param}.{name}"
            )


def resolve_items(
    prompts: list[PromptEntry], settings: Settings, resolve: ResolveItem | None = None
) -> list[ItemRecord]:
    """A batch's entries as stored: a string as it is, an object by `resolve` (a chat item's,
    `resolve_item`, unless told: `resolve_input` for an embeddings batch)."""
    resolve = resolve or resolve_item
    items: list[ItemRecord] = []
    seen = UniqueIds("prompts")
    for index, entry in enumerate(prompts):
        param = f"prompts[{index}]"
        if isinstance(entry, str):
            check_prompt(entry, settings.max_prompt_chars, param)
            items.append((seen.add(None, index), entry))
            continue
        items.append(resolve(entry, seen.add(entry.custom_id, index), param, settings))
    return items


#: The params an `/v1/embeddings` batch takes, and only it.
EMBEDDING_PARAMS = ("dimensions", "encoding_format")


def check_endpoint_params(params: BatchParams, embeddings: bool, param: str) -> None:
    """Refuse chat params in an embeddings batch, and embeddings params in a chat batch."""
    given = params.model_dump(exclude_none=True)
    for name in given:
        if (name in EMBEDDING_PARAMS) != embeddings:
            endpoint = "/v1/embeddings" if name in EMBEDDING_PARAMS else "/v1/chat/completions"
            raise InvalidRequest(
                f"{name} is a param of {endpoint} batches only.", param=f"{param}.{name}"
            )


def resolve_input(item: PromptItem, custom_id: str, param: str, settings: Settings) -> ItemRecord:
    """An embeddings item object as stored: its text, checked (`param` names it in errors)."""
    extra = [name for name in ("prompt", "messages", "params") if getattr(item, name) is not None]
    if extra:
        raise InvalidRequest(
            f'An embeddings item is {{"custom_id", "input"}}; {extra[0]} is a chat item\'s.',
            param=f"{param}.{extra[0]}",
        )
    if item.input is None:
        raise InvalidRequest("An embeddings item needs input.", param=f"{param}.input")
    check_prompt(item.input, settings.max_prompt_chars, f"{param}.input")
    return (custom_id, item.input)


#: How an item object becomes what is stored: `(item, custom_id, param in errors, settings)`.
ResolveItem = Callable[[PromptItem, str, str, Settings], ItemRecord]


def resolve_item(item: PromptItem, custom_id: str, param: str, settings: Settings) -> ItemRecord:
    """An item object as stored: checked (`param` names it in errors), its own params kept."""
    body = _item_body(item, settings.max_prompt_chars, param)
    if item.params is None:
        return (custom_id, body)
    check_params(item.params, settings, f"{param}.params")
    check_endpoint_params(item.params, False, f"{param}.params")
    own = item.params.provider_kwargs()
    return (custom_id, body, own) if own else (custom_id, body)


def _item_body(item: PromptItem, max_chars: int, param: str) -> ItemBody:
    if item.input is not None:
        raise InvalidRequest(
            'input is an embeddings item\'s: give "endpoint": "/v1/embeddings", or a prompt.',
            param=f"{param}.input",
        )
    if item.prompt is None and item.messages is None:
        raise InvalidRequest("An item needs a prompt (or messages).", param=f"{param}.prompt")
    if item.prompt is not None and item.messages is not None:
        raise InvalidRequest("An item has a prompt or messages, not both.", param=param)
    if item.prompt is not None:
        check_prompt(item.prompt, max_chars, f"{param}.prompt")
        return item.prompt
    assert item.messages is not None
    check_messages(item.messages, max_chars, f"{param}.messages")
    return dump_messages(item.messages)


def check_prompt(prompt: str, max_chars: int, param: str) -> None:
    if not prompt.strip():
        raise InvalidRequest("A prompt must not be empty.", param=param)
    if len(prompt) > max_chars:
        raise InvalidRequest(f"A prompt is at most {max_chars} characters.", param=param)


def check_messages(messages: list[Message], max_chars: int, param: str) -> None:
    """What OpenAI requires of a conversation that a schema cannot say."""
    for number, message in enumerate(messages):
        where = f"{param}[{number}]"
        if message.content is None and not (message.role == "assistant" and message.tool_calls):
            raise InvalidRequest(
                f"A {message.role} message needs content.", param=f"{where}.content"
            )
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(
                "A tool message needs the tool_call_id it answers.", param=f"{where}.tool_call_id"
            )
        for n, part in enumerate(message.content if isinstance(message.content, list) else ()):
            problem = part.payload_error()
            if problem is not None:
                raise InvalidRequest(problem, param=f"{where}.content[{n}].{part.type}")
        if message.tool_calls is not None and message.role != "assistant":
            raise InvalidRequest(
                "Only an assistant message has tool_calls.", param=f"{where}.tool_calls"
            )
    if sum(len(m.text()) for m in messages) > max_chars:
        raise InvalidRequest(
            f"An item's messages hold at most {max_chars} characters.", param=param
        )


class UniqueIds:
    """The custom_ids of a batch so far: each one once, an item's index when it names none."""

    def __init__(self, field: str) -> None:
        self._field = field
        self._seen: set[str] = set()

    def add(self, custom_id: str | None, index: int) -> str:
        custom_id = custom_id if custom_id is not None else str(index)
        if custom_id in self._seen:
            raise InvalidRequest(
                f"custom_id {custom_id!r} appears twice in the batch.",
                param=f"{self._field}[{index}].custom_id",
            )
        self._seen.add(custom_id)
        return custom_id
