"""OpenAI Batch files: request lines -> one BatchCreate, results -> output lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.chat import dump_messages
from shared.errors import InvalidRequest
from shared.openai_format import batch_from_request_lines
from shared.output_lines import ChatCompletion, output_line
from shared.schemas import Batch, ErrorInfo, ItemResult, RequestCounts, Usage
from tests.helpers import prompt_items


def request(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": messages, **body},
    }


def lines(*values: Any) -> list[str]:
    return [v if isinstance(v, str) else json.dumps(v) for v in values]


def rejected(*values: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        batch_from_request_lines(lines(*values))
    return caught.value


def test_every_line_keeps_its_own_messages_and_params() -> None:
    params = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 40, "seed": 7, "stop": "END"}
    got = batch_from_request_lines(
        lines(request("a", "Where is Seoul?", **params), "", request("b", "Hi", temperature=1))
    )
    items = prompt_items(got)
    assert [item.custom_id for item in items] == ["a", "b"]
    assert [dump_messages(item.messages or []) for item in items] == [
        request("a", "Where is Seoul?")["body"]["messages"],
        request("b", "Hi")["body"]["messages"],
    ]
    assert [item.params.model_dump(exclude_unset=True) for item in items if item.params] == [
        params, {"temperature": 1},
    ]  # fmt: skip
    assert (got.model, got.system, got.params.model_dump(exclude_none=True)) == (
        "gpt-4o-mini", None, {},
    )  # fmt: skip


FEW_SHOT = [
    {"role": "developer", "content": [{"type": "text", "text": "Classify sentiment."}]},
    {"role": "user", "content": "I love it"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "It broke."},
    {"role": "user", "content": [
        {"type": "text", "text": "And this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}},
    ]},
]  # fmt: skip


def test_conversations_several_user_messages_and_content_parts_run_unchanged() -> None:
    line = request("a", "unused", response_format={"type": "json_object"}, frequency_penalty=0.5)
    line["body"]["messages"] = FEW_SHOT
    item = prompt_items(batch_from_request_lines(lines(line)))[0]
    assert dump_messages(item.messages or []) == FEW_SHOT
    assert item.params is not None
    assert item.params.provider_kwargs() == {
        "response_format": {"type": "json_object"}, "frequency_penalty": 0.5,
    }  # fmt: skip


def test_without_a_model_the_server_default_applies() -> None:
    line = request("a", "Hi")
    line["body"] = {"messages": [{"role": "user", "content": "Hi"}]}
    got = batch_from_request_lines(lines(line))
    assert (got.model, got.system) == (None, None)


@pytest.mark.parametrize(
    ("second", "param"),
    [
        ({**request("b", "x"), "url": "/v1/embeddings"}, "line[2].url"),
        ({**request("b", "x"), "method": "GET"}, "line[2].method"),
        ("{not json", "line[2]"),
        ([1, 2], "line[2]"),
        ({k: v for k, v in request("b", "x").items() if k != "custom_id"}, "line[2].custom_id"),
        (request("a", "x"), "line[2].custom_id"),
        (request("b", "x", model="gpt-4o"), "line[2].body.model"),
        (request("b", "x", temperature=5), "line[2].body.temperature"),
        (request("b", "x", logit_bias={"50256": 101}), "line[2].body.logit_bias.50256"),
        (request("b", "x", n=2), "line[2].body.n"),
        (request("b", "x", stream=True), "line[2].body.stream"),
        (request("b", "x", modalities=["audio"]), "line[2].body.modalities"),
        ({**request("b", "x"), "extra": 1}, "line[2].extra"),
    ],
    ids=[
        "url", "method", "json", "not-object", "no-custom-id", "duplicate-id", "other-model",
        "out-of-range", "logit-bias-range", "n", "stream", "unknown-param", "unknown-field",
    ],
)  # fmt: skip
def test_a_wrong_line_is_refused_naming_it(second: Any, param: str) -> None:
    error = rejected(request("a", "fine"), second)
    assert error.param == param
    assert "Line 2" in error.message


def test_n_and_stream_are_refused_saying_why() -> None:
    assert "one result" in rejected(request("a", "x", n=3)).message
    assert "stored whole" in rejected(request("a", "x", stream=True)).message


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "narrator", "content": "x"}],
        [{"role": "user", "content": [{"type": "video", "video": {}}]}],
        [{"role": "user", "content": "x", "audio": {}}],
    ],
    ids=["none", "unknown-role", "unknown-part", "unknown-field"],
)
def test_malformed_messages_are_refused(messages: list[Any]) -> None:
    line = request("b", "x")
    line["body"]["messages"] = messages
    error = rejected(request("a", "fine"), line)
    assert error.param is not None
    assert error.param.startswith("line[2].body.messages")


def test_an_empty_file_is_refused() -> None:
    assert rejected("", "  ").param == "line[1]"


def batch(**fields: Any) -> Batch:
    base: dict[str, Any] = {
        "id": "batch_abc", "status": "completed", "model": "gpt-4o-mini", "provider": "openai",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC), "started_at": None,
        "finished_at": datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
        "request_counts": RequestCounts(total=1, succeeded=1, failed=0, cancelled=0, pending=0),
        "usage": Usage(), "metadata": None, "error": None,
    }  # fmt: skip
    return Batch(**{**base, **fields})


def test_a_succeeded_item_is_a_chat_completion_response() -> None:
    item = ItemResult(
        index=4, custom_id="q4", status="succeeded", output="Seoul is in Korea.",
        usage=Usage.of(5, 4),
    )  # fmt: skip
    line = output_line(item, batch())
    assert line is not None
    assert line.model_dump(mode="json") == {
        "id": "batch_req_abc_4",
        "custom_id": "q4",
        "response": {
            "status_code": 200,
            "request_id": "req_abc_4",
            "body": {
                "id": "chatcmpl-abc-4",
                "object": "chat.completion",
                "created": int(datetime(2026, 1, 1, 0, 1, tzinfo=UTC).timestamp()),
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Seoul is in Korea.",
                                    "refusal": None, "tool_calls": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
                          "prompt_tokens_details": {"cached_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0}},
            },
        },
        "error": None,
    }  # fmt: skip


def test_failed_and_cancelled_items_are_errors_and_pending_ones_are_left_out() -> None:
    failed = ItemResult(
        index=0, custom_id="a", status="failed",
        error=ErrorInfo(type="timeout", message="The provider did not answer in time."),
    )  # fmt: skip
    cancelled = ItemResult(index=1, custom_id="b", status="cancelled")
    pending = ItemResult(index=2, custom_id="c", status="pending")
    failed_line, cancelled_line = output_line(failed, batch()), output_line(cancelled, batch())
    assert failed_line is not None
    assert cancelled_line is not None
    assert failed_line.response is None
    assert failed_line.error is not None
    assert (failed_line.error.code, failed_line.error.message) == (
        "timeout", "The provider did not answer in time.",
    )  # fmt: skip
    assert cancelled_line.error is not None
    assert cancelled_line.error.code == "batch_cancelled"
    assert output_line(pending, batch()) is None


def test_a_request_the_provider_refused_is_its_answer_with_its_status() -> None:
    refused = ItemResult(
        index=0, custom_id="a", status="failed",
        error=ErrorInfo(type="invalid_request", message="Prompt too long."),
    )  # fmt: skip
    line = output_line(refused, batch())
    assert line is not None
    assert line.error is None
    assert line.response is not None
    assert line.response.status_code == 400
    assert line.response.body.model_dump() == {"error": {
        "message": "Prompt too long.", "type": "invalid_request_error", "param": None,
        "code": "invalid_request",
    }}  # fmt: skip


def test_an_output_line_says_what_the_provider_said() -> None:
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "lookup", "arguments": '{"city": "Seoul"}'}}]  # fmt: skip
    item = ItemResult(
        index=0, custom_id="t", status="succeeded", output=None, finish_reason="tool_calls",
        tool_calls=calls, usage=Usage.of(9, 3, cached_tokens=4, reasoning_tokens=2),
    )  # fmt: skip
    line = output_line(item, batch())
    assert line is not None
    assert line.response is not None
    body = line.response.body.model_dump(mode="json")
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"] == {
        "role": "assistant", "content": None, "refusal": None, "tool_calls": calls,
    }  # fmt: skip
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}


def test_a_reply_cut_at_max_tokens_says_length() -> None:
    item = ItemResult(
        index=0, custom_id="c", status="succeeded", output="cut", finish_reason="length"
    )
    line = output_line(item, batch())
    assert line is not None
    assert line.response is not None
    assert isinstance(line.response.body, ChatCompletion)
    assert line.response.body.choices[0].finish_reason == "length"


def test_a_reply_refused_as_invalid_output_is_still_the_providers_response() -> None:
    item = ItemResult(
        index=0, custom_id="j", status="failed", output='{"genre": "sci', finish_reason="length",
        error=ErrorInfo(type="invalid_output", message="The reply is not valid JSON"),
    )  # fmt: skip
    line = output_line(item, batch())
    assert line is not None
    assert line.error is None
    assert line.response is not None
    assert isinstance(line.response.body, ChatCompletion)
    choice = line.response.body.choices[0]
    assert (choice.message.content, choice.finish_reason) == ('{"genre": "sci', "length")
