"""The mock provider answers richer requests as a real OpenAI provider does."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.mock_openai import MAX_RECORDED, MockState, create_app, instance

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "height": {"type": "number"},
        "alive": {"type": "boolean"},
        "nickname": {"type": ["null", "string"]},
        "kind": {"enum": ["human", "robot"]},
        "version": {"const": 2},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "extra": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    },
    "required": ["name", "age"],
}
PERSON_INSTANCE = {
    "name": "mock",
    "age": 1,
    "height": 1.5,
    "alive": True,
    "nickname": "mock",
    "kind": "human",
    "version": 2,
    "tags": ["mock", "mock"],
    "extra": 1,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "clock",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "KST"]}}},
    },
}


@pytest.fixture
def state() -> MockState:
    return MockState()


@pytest.fixture
async def client(state: MockState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as client:
        yield client


def body(prompt: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], **extra}


async def chat(client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/chat/completions", json=payload)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


async def choice(client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = (await chat(client, payload))["choices"][0]
    return data


async def test_list_content_prompt_is_its_text_parts_joined(client: httpx.AsyncClient) -> None:
    parts = [
        {"type": "text", "text": "Hello "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "there"},
    ]
    got = await choice(client, body(parts))
    assert got["message"]["content"] == "mock reply to: Hello there"


async def test_directive_in_a_text_part_is_obeyed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json=body([{"type": "text", "text": "x [[status=400]]"}])
    )
    assert response.status_code == 400


async def test_prompt_tokens_count_string_contents_and_text_parts(
    client: httpx.AsyncClient,
) -> None:
    payload = body([{"type": "text", "text": "two words"}, {"type": "image_url"}])
    payload["messages"].insert(0, {"role": "system", "content": "be very brief"})
    usage = (await chat(client, payload))["usage"]
    assert usage["prompt_tokens"] == 5


async def test_requests_are_recorded_in_order_and_reset_clears_them(
    client: httpx.AsyncClient,
) -> None:
    first = body("one", temperature=0.5, metadata={"k": [1, 2]})
    second = body([{"type": "text", "text": "two"}], max_tokens=9)
    await chat(client, first)
    await chat(client, second)
    assert (await client.get("/_requests")).json() == {"data": [first, second]}
    (await client.post("/_reset")).raise_for_status()
    assert (await client.get("/_requests")).json() == {"data": []}


async def test_request_log_keeps_only_the_newest_bodies(
    client: httpx.AsyncClient, state: MockState
) -> None:
    state.requests.extend({"n": n} for n in range(MAX_RECORDED))
    await chat(client, body("newest"))
    data = (await client.get("/_requests")).json()["data"]
    assert len(data) == MAX_RECORDED == 100_000
    assert (data[0], data[-1]) == ({"n": 1}, body("newest"))


async def test_max_completion_tokens_cuts_the_reply_with_finish_length(
    client: httpx.AsyncClient,
) -> None:
    got = await choice(client, body("one two three", max_completion_tokens=4, max_tokens=50))
    assert got["message"]["content"] == "mock reply to: one"
    assert got["finish_reason"] == "length"


async def test_max_tokens_cuts_the_reply_when_max_completion_tokens_is_absent(
    client: httpx.AsyncClient,
) -> None:
    data = await chat(client, body("one two three", max_tokens=3))
    assert data["choices"][0]["message"]["content"] == "mock reply to:"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3


async def test_reply_within_max_tokens_is_whole_with_finish_stop(
    client: httpx.AsyncClient,
) -> None:
    got = await choice(client, body("one two", max_tokens=5))
    assert (got["message"]["content"], got["finish_reason"]) == ("mock reply to: one two", "stop")


async def test_plain_answer_has_null_refusal(client: httpx.AsyncClient) -> None:
    got = await choice(client, body("hi"))
    assert got["message"] == {"role": "assistant", "content": "mock reply to: hi", "refusal": None}


async def test_json_object_mode_answers_the_reply_as_json(client: httpx.AsyncClient) -> None:
    got = await choice(client, body("hi", response_format={"type": "json_object"}))
    assert json.loads(got["message"]["content"]) == {"reply": "mock reply to: hi"}
    assert got["finish_reason"] == "stop"


def test_instance_follows_each_schema_rule() -> None:
    assert instance(PERSON) == PERSON_INSTANCE
    assert instance({"oneOf": [{"type": "boolean"}, {"type": "string"}]}) is True
    assert instance({"type": "array"}) == []
    assert instance({"type": "array", "minItems": 2}) == [None, None]
    assert instance({"type": "array", "items": {"type": "integer"}}) == [1]
    assert [instance({"type": "null"}), instance({"type": ["null"]})] == [None, None]
    assert [instance({}), instance({"$ref": "#/x"}), instance(True)] == [None, None, None]


async def test_json_schema_mode_answers_an_instance_of_the_schema(
    client: httpx.AsyncClient,
) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    got = await choice(client, body("hi", response_format=response_format))
    assert json.loads(got["message"]["content"]) == PERSON_INSTANCE
    assert got["finish_reason"] == "stop"


async def test_not_json_answers_plain_text_in_json_mode(client: httpx.AsyncClient) -> None:
    got = await choice(client, body("hi [[not_json]]", response_format={"type": "json_object"}))
    assert got["message"]["content"] == "mock reply to: hi [[not_json]]"


async def test_wrong_json_answers_unexpected_json_in_json_mode(client: httpx.AsyncClient) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    got = await choice(client, body("hi [[wrong_json]]", response_format=response_format))
    assert json.loads(got["message"]["content"]) == {"unexpected": True}


async def test_max_tokens_does_not_cut_json_mode(client: httpx.AsyncClient) -> None:
    payload = body("one two three", max_tokens=1, response_format={"type": "json_object"})
    got = await choice(client, payload)
    assert json.loads(got["message"]["content"]) == {"reply": "mock reply to: one two three"}
    assert got["finish_reason"] == "stop"


async def test_cut_halves_the_json_with_finish_length(client: httpx.AsyncClient) -> None:
    payload = body("hi [[cut]]", response_format={"type": "json_object"})
    got = await choice(client, payload)
    whole = json.dumps({"reply": "mock reply to: hi [[cut]]"})
    assert got["message"]["content"] == whole[: len(whole) // 2]
    assert got["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(got["message"]["content"])


def assert_tool_call(got: dict[str, Any], name: str, arguments: dict[str, Any]) -> None:
    message = got["message"]
    assert (message["content"], message["refusal"], got["finish_reason"]) == (
        None, None, "tool_calls",
    )  # fmt: skip
    [call] = message["tool_calls"]
    assert re.fullmatch(r"call_[0-9a-f]{12}", call["id"])
    assert call["type"] == "function"
    assert call["function"]["name"] == name
    assert json.loads(call["function"]["arguments"]) == arguments


async def test_tool_choice_required_calls_the_first_tool(client: httpx.AsyncClient) -> None:
    got = await choice(client, body("hi", tools=[WEATHER, CLOCK], tool_choice="required"))
    assert_tool_call(got, "weather", {"city": "mock"})


async def test_tool_choice_naming_a_function_calls_that_tool(client: httpx.AsyncClient) -> None:
    tool_choice = {"type": "function", "function": {"name": "clock"}}
    got = await choice(client, body("hi", tools=[WEATHER, CLOCK], tool_choice=tool_choice))
    assert_tool_call(got, "clock", {"zone": "UTC"})


async def test_tool_call_directive_calls_the_first_tool(client: httpx.AsyncClient) -> None:
    got = await choice(client, body("hi [[tool_call]]", tools=[CLOCK, WEATHER]))
    assert_tool_call(got, "clock", {"zone": "UTC"})


async def test_tool_without_parameters_gets_empty_object_arguments(
    client: httpx.AsyncClient,
) -> None:
    bare = {"type": "function", "function": {"name": "ping"}}
    got = await choice(client, body("hi", tools=[bare], tool_choice="required"))
    assert_tool_call(got, "ping", {})


async def test_tools_without_a_demand_answer_text(client: httpx.AsyncClient) -> None:
    got = await choice(client, body("hi", tools=[WEATHER], tool_choice="auto"))
    assert (got["message"]["content"], got["finish_reason"]) == ("mock reply to: hi", "stop")
    assert "tool_calls" not in got["message"]


async def test_tool_call_directive_without_tools_answers_text(client: httpx.AsyncClient) -> None:
    got = await choice(client, body("hi [[tool_call]]"))
    assert got["finish_reason"] == "stop"
    assert "tool_calls" not in got["message"]


async def test_refuse_answers_a_refusal_without_content(client: httpx.AsyncClient) -> None:
    got = await choice(client, body("hi [[refuse]]"))
    assert got["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": "mock refuses this request",
    }
    assert got["finish_reason"] == "stop"


async def test_filtered_answers_empty_content_with_content_filter(
    client: httpx.AsyncClient,
) -> None:
    got = await choice(client, body("hi [[filtered]]"))
    assert (got["message"]["content"], got["message"]["refusal"]) == ("", None)
    assert got["finish_reason"] == "content_filter"


async def test_usage_details_default_to_zero(client: httpx.AsyncClient) -> None:
    usage = (await chat(client, body("hi")))["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}


async def test_cached_and_reasoning_directives_set_usage_details(
    client: httpx.AsyncClient,
) -> None:
    words = " ".join(["w"] * 8)
    usage = (await chat(client, body(f"{words} [[cached=5]] [[reasoning=7]]")))["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 5}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 7}


async def test_cached_tokens_are_clamped_to_prompt_tokens(client: httpx.AsyncClient) -> None:
    usage = (await chat(client, body("hi [[cached=50]]")))["usage"]
    assert usage["prompt_tokens"] == 2
    assert usage["prompt_tokens_details"] == {"cached_tokens": 2}
