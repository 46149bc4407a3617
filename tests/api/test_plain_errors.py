"""Every 422 reads as a sentence about the caller's input, never in pydantic's words."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared import keys

#: What pydantic says that no user should have to read.
PYDANTIC = ("Value error", "Input should be", "instance of", "after validation", "Assertion")

BAD: list[tuple[Any, str, str]] = [
    ({"prompts": []}, "prompts", "prompts must hold at least 1 item."),
    ({"prompts": "x"}, "prompts", "prompts must be a list."),
    ({"prompts": [1]}, "prompts[0]", "prompts[0] must be a string or an object."),
    ({"prompts": ["a"], "template": 5}, "template", "template must be a string"),
    ({"template": "{x}", "inputs": []}, "inputs", "inputs must hold at least 1 item."),
    ({"prompts": ["a"], "max_concurrency": 0}, "max_concurrency", "must be at least 1."),
    ({"prompts": ["a"], "max_concurrency": "x"}, "max_concurrency", "must be a whole number."),
    ({"prompts": ["a"], "params": {"temperature": 5}}, "params.temperature", "must be at most 2"),
    ({"prompts": ["a"], "params": {"n": 2}}, "params.n", "n must be 1 or left out"),
    ({"prompts": ["a"], "params": {"response_format": {"type": "json_schema"}}},
     "params.response_format", "needs a name and a schema"),
    ({"prompts": [{"messages": [{"role": "wizard", "content": "x"}]}]},
     "prompts[0].messages[0].role", "must be 'system', 'developer', 'user'"),
    ({"prompts": ["a"], "model": ""}, "model", "model must not be empty."),
    ({"prompts": ["a"], "metadata": {"a": 1}}, "metadata.a", "metadata.a must be a string."),
    ([1, 2], "", "The body must be a JSON object."),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param", "says"), BAD, ids=[b[1] or "body" for b in BAD])
async def test_a_422_says_what_is_wrong_with_the_input_in_plain_words(
    client: httpx.AsyncClient, body: Any, param: str, says: str
) -> None:
    response = await client.post("/v1/batches", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == (param or None)
    assert says in error["message"]
    assert not any(words in error["message"] for words in PYDANTIC), error["message"]


async def test_a_line_of_an_openai_batch_file_is_refused_in_plain_words(
    client: httpx.AsyncClient,
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
    response = await client.post(
        "/v1/batches",
        content=json.dumps(line) + "\n",
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith("Line 1: n must be 1 or left out")
    assert not any(words in error["message"] for words in PYDANTIC), error["message"]


async def test_a_template_may_be_a_plain_string_one_human_message(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    rows = [{"book": "Dune"}, {"book": "Emma"}]
    text = await client.post("/v1/batches", json={"template": "Review {book}", "inputs": rows})
    pairs = {"messages": [["human", "Review {book}"]]}
    full = await client.post("/v1/batches", json={"template": pairs, "inputs": rows})
    assert (text.status_code, full.status_code) == (202, 202), text.text
    async with Redis.from_url(redis_url) as redis:
        stored = [await redis.lrange(keys.inputs(r.json()["id"]), 0, -1) for r in (text, full)]
    assert stored[0] == stored[1]
    assert b"Review Dune" in stored[0][0]
    empty = await client.post("/v1/batches", json={"template": " ", "inputs": rows})
    assert empty.status_code == 422
    assert empty.json()["error"]["message"] == "template must not be empty"
