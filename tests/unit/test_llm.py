"""The offline model, the chain, and how a provider's answer becomes an item's result."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.exceptions import ModelInvalidRequestError, ModelRateLimitError
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from shared.chat import BatchParams
from worker.llm import (
    OFFLINE_PREFIX,
    OfflineChatModel,
    batch_kwargs,
    error_info,
    outcome_of,
    rate_limited,
    to_messages,
)


async def test_offline_model_is_deterministic_with_usage() -> None:
    model = OfflineChatModel()
    messages = [SystemMessage(content="be brief"), HumanMessage(content="where is Seoul")]
    first = await model.ainvoke(messages)
    second = await model.ainvoke(messages)
    assert first.content == second.content == f"{OFFLINE_PREFIX}where is Seoul"
    assert isinstance(first, AIMessage)
    assert first.usage_metadata is not None
    assert first.usage_metadata["input_tokens"] == 5
    assert first.usage_metadata["output_tokens"] == 6


async def test_a_call_passes_system_prompt_and_keeps_braces_literal() -> None:
    model = OfflineChatModel()
    messages = to_messages("Answer {in} one line.", "what is {x}?")
    reply = await model.ainvoke(messages, **batch_kwargs(model, "m", BatchParams()))
    assert reply.content == f"{OFFLINE_PREFIX}what is {{x}}?"
    assert outcome_of(reply).usage is not None
    assert outcome_of(reply).usage.input_tokens == 7  # type: ignore[union-attr]


async def test_a_call_applies_the_batch_max_tokens() -> None:
    model = OfflineChatModel()
    kwargs = batch_kwargs(model, "m", BatchParams(max_tokens=3))
    reply = await model.ainvoke(to_messages(None, "one two three four"), **kwargs)
    assert reply.content == "[offline] You asked:"


async def test_abatch_as_completed_keeps_each_output_with_its_prompt() -> None:
    model = OfflineChatModel(latency_s=0.001)
    prompts = [f"prompt {i}" for i in range(50)]
    seen = {
        index: result
        async for index, result in model.abatch_as_completed(
            [to_messages(None, p) for p in prompts],
            config={"max_concurrency": 7},
            return_exceptions=True,
        )
    }
    assert {i: outcome_of(r).output for i, r in seen.items()} == {
        i: f"{OFFLINE_PREFIX}{p}" for i, p in enumerate(prompts)
    }


class _SdkStatusError(Exception):
    """Shaped like an SDK's status error: a status code and a JSON body."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"Error code: {status_code}")
        self.status_code = status_code
        self.body = {"message": message}


def test_provider_errors_keep_the_provider_message_and_a_type() -> None:
    bad = error_info(ModelInvalidRequestError("prompt too long"))
    assert (bad.type, bad.message) == ("invalid_request", "prompt too long")
    assert error_info(ModelRateLimitError("slow down")).type == "rate_limited"


def test_sdk_errors_are_typed_by_status_with_the_body_message() -> None:
    bad = error_info(_SdkStatusError(400, "no such thing"))
    assert (bad.type, bad.message) == ("invalid_request", "no such thing")
    assert error_info(_SdkStatusError(503, "x")).type == "provider_error"


def test_an_exception_fails_the_item() -> None:
    outcome = outcome_of(ValueError("boom"))
    assert outcome.status == "failed"
    assert outcome.output is None
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.message) == ("internal_error", "boom")


def test_an_items_messages_get_the_batch_system_only_without_their_own() -> None:
    own = [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    bare = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert [m.type for m in to_messages("Batch.", own)] == ["system", "human"]
    assert to_messages("Batch.", own)[0].content == "Be terse."
    assert [(m.type, m.content) for m in to_messages("Batch.", bare)] == [
        ("system", "Batch."), ("human", "hi"), ("ai", "yo"),
    ]  # fmt: skip


def reply(content: str, **fields: Any) -> AIMessage:
    return AIMessage(content=content, response_metadata={"finish_reason": "stop"}, **fields)


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "genre",
        "schema": {"type": "object", "properties": {"genre": {"type": "string"}},
                   "required": ["genre"]},
    },
}  # fmt: skip


def test_a_json_reply_is_parsed_into_output_json() -> None:
    outcome = outcome_of(reply('{"genre": "sci-fi"}'), SCHEMA)
    assert (outcome.status, outcome.output_json) == ("succeeded", {"genre": "sci-fi"})
    plain = outcome_of(reply('{"genre": "sci-fi"}'))
    assert plain.output_json is None


@pytest.mark.parametrize(
    ("text", "response_format", "says"),
    [
        ("Sure! Here it is.", {"type": "json_object"}, "not valid JSON"),
        ('{"genre": 5}', SCHEMA, "does not match the schema"),
        ('{"mood": "x"}', SCHEMA, "'genre' is a required property"),
    ],
    ids=["not-json", "wrong-type", "missing-field"],
)
def test_a_reply_that_is_not_the_json_asked_for_fails_as_invalid_output(
    text: str, response_format: dict[str, Any], says: str
) -> None:
    outcome = outcome_of(reply(text), response_format)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.type == "invalid_output"
    assert says in outcome.error.message
    assert outcome.output == text


def test_tool_calls_refusal_finish_reason_and_usage_details_are_kept() -> None:
    message = AIMessage(
        content="",
        tool_calls=[{"id": "c1", "name": "lookup", "args": {"city": "서울"}}],
        response_metadata={"finish_reason": "tool_calls"},
        usage_metadata={
            "input_tokens": 10, "output_tokens": 4, "total_tokens": 14,
            "input_token_details": {"cache_read": 6}, "output_token_details": {"reasoning": 2},
        },
    )  # fmt: skip
    outcome = outcome_of(message, {"type": "json_object"})
    assert (outcome.status, outcome.output, outcome.finish_reason) == (
        "succeeded", None, "tool_calls",
    )  # fmt: skip
    assert outcome.tool_calls == [
        {"id": "c1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"city": "서울"}'}},
    ]  # fmt: skip
    assert outcome.usage is not None
    assert (outcome.usage.cached_tokens, outcome.usage.reasoning_tokens) == (6, 2)
    refused = outcome_of(reply("", additional_kwargs={"refusal": "No."}))
    assert (refused.output, refused.refusal) == (None, "No.")


async def test_offline_model_says_length_when_cut_and_answers_json_when_asked() -> None:
    model = OfflineChatModel()
    cut = await model.ainvoke([HumanMessage(content="one two three")], max_completion_tokens=2)
    whole = await model.ainvoke([HumanMessage(content="one")])
    assert (outcome_of(cut).finish_reason, outcome_of(whole).finish_reason) == ("length", "stop")
    asked = await model.ainvoke(
        [HumanMessage(content="Seoul?")], response_format={"type": "json_object"}
    )
    assert outcome_of(asked, {"type": "json_object"}).output_json == {"you_asked": "Seoul?"}


def test_a_429_is_later_unless_the_quota_is_spent() -> None:
    later = _SdkStatusError(429, "Rate limit reached")
    spent = _SdkStatusError(429, "You exceeded your current quota")
    spent.body = {"message": "You exceeded your current quota", "code": "insufficient_quota"}
    assert (rate_limited(later), rate_limited(spent)) == (True, False)
    assert rate_limited(_SdkStatusError(503, "busy")) is False
