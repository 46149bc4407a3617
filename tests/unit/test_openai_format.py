"""OpenAI Batch files: request lines -> one BatchCreate, results -> output lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.errors import InvalidRequest
from shared.openai_format import batch_from_request_lines, output_line
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


def test_request_lines_become_one_batch() -> None:
    params = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 40, "seed": 7, "stop": "END"}
    got = batch_from_request_lines(
        lines(request("a", "Where is Seoul?", **params), "", request("b", "Hi", **params))
    )
    assert [(p.custom_id, p.prompt) for p in prompt_items(got)] == [
        ("a", "Where is Seoul?"),
        ("b", "Hi"),
    ]
    assert got.model == "gpt-4o-mini"
    assert got.system == "Be brief."
    assert got.params.model_dump() == {**params, "stop": ["END"]}


def test_text_parts_max_completion_tokens_and_developer_role_are_understood() -> None:
    line = request("a", "unused", max_completion_tokens=12)
    line["body"]["messages"] = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": t} for t in ("Hello ", "there")]},
    ]
    got = batch_from_request_lines(lines(line))
    assert (got.system, prompt_items(got)[0].prompt, got.params.max_tokens) == (
        "Be brief.", "Hello there", 12,
    )  # fmt: skip


def test_without_system_message_or_model_the_server_defaults_apply() -> None:
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
        (request("b", "x", temperature=0.9), "line[2].body.temperature"),
        (request("b", "x", temperature=5), "line[2].body.temperature"),
        (request("b", "x", logit_bias={}), "line[2].body.logit_bias"),
        ({**request("b", "x"), "extra": 1}, "line[2].extra"),
    ],
    ids=[
        "url",
        "method",
        "json",
        "not-object",
        "no-custom-id",
        "duplicate-id",
        "mixed-model",
        "mixed-params",
        "out-of-range",
        "unknown-param",
        "unknown-field",
    ],
)
def test_a_wrong_line_is_refused_naming_it(second: Any, param: str) -> None:
    error = rejected(request("a", "fine"), second)
    assert error.param == param
    assert "Line 2" in error.message


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "first"}, {"role": "assistant", "content": "hm"},
         {"role": "user", "content": "second"}],
        [{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
         {"role": "user", "content": "q"}],
        [{"role": "system", "content": "only"}],
        [{"role": "user", "content": "   "}],
        [],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    ],
    ids=["conversation", "two-systems", "no-user", "empty-prompt", "none", "image"],
)  # fmt: skip
def test_messages_must_be_one_prompt_and_an_optional_system(messages: list[Any]) -> None:
    line = request("b", "x")
    line["body"]["messages"] = messages
    error = rejected(request("a", "fine"), line)
    assert error.param is not None
    assert error.param.startswith("line[2].body.messages")


def test_a_different_system_message_is_refused() -> None:
    line = request("b", "x")
    line["body"]["messages"][0]["content"] = "Be verbose."
    error = rejected(request("a", "fine"), line)
    assert error.param == "line[2].body.messages"
    assert "system message differs from line 1" in error.message


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
                                    "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
            },
        },
        "error": None,
    }  # fmt: skip


def test_failed_and_cancelled_items_are_errors_and_pending_ones_are_left_out() -> None:
    failed = ItemResult(
        index=0, custom_id="a", status="failed",
        error=ErrorInfo(type="invalid_request", message="Prompt too long."),
    )  # fmt: skip
    cancelled = ItemResult(index=1, custom_id="b", status="cancelled")
    pending = ItemResult(index=2, custom_id="c", status="pending")
    failed_line, cancelled_line = output_line(failed, batch()), output_line(cancelled, batch())
    assert failed_line is not None
    assert cancelled_line is not None
    assert failed_line.response is None
    assert failed_line.error is not None
    assert (failed_line.error.code, failed_line.error.message) == (
        "invalid_request", "Prompt too long.",
    )  # fmt: skip
    assert cancelled_line.error is not None
    assert cancelled_line.error.code == "batch_cancelled"
    assert output_line(pending, batch()) is None
