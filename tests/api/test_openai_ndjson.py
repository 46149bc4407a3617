"""POST /v1/batches with an OpenAI Batch input file as an NDJSON body."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from api.ingest import INLINE_BYTES
from shared.store import BatchStore

NDJSON = {"Content-Type": "application/x-ndjson"}


def request(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "Answer in one line."},
                {"role": "user", "content": prompt}]  # fmt: skip
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": messages, **body},
    }


Post = Callable[[str | bytes], Awaitable[httpx.Response]]


@pytest.fixture(params=["inline", "spooled"])
def post(request: pytest.FixtureRequest, client: httpx.AsyncClient) -> Post:
    """POST an NDJSON body as it is, or padded past `INLINE_BYTES` with a last line of spaces
    (the same file: a blank line) so that it is spooled and staged a page at a time."""
    pad = b" " * (INLINE_BYTES + 1) if request.param == "spooled" else b""

    async def send(body: str | bytes) -> httpx.Response:
        raw = body.encode() if isinstance(body, str) else body
        return await client.post("/v1/batches", content=raw + pad, headers=NDJSON)

    return send


def ndjson(*lines: Any) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


async def test_an_openai_batch_file_is_one_batch(
    post: Post, client: httpx.AsyncClient, redis_url: str
) -> None:
    body = ndjson(
        request("q1", "Where is Seoul?", temperature=0.2, max_tokens=64, stop="\n\n"),
        request("q2", "What is 2+2?", temperature=0.2, max_tokens=64, stop="\n\n"),
    )
    response = await post(body)

    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["location"] == f"/v1/batches/{batch['id']}"
    assert batch["model"] == "gpt-4o"
    assert batch["request_counts"]["total"] == 2
    results = (await client.get(f"/v1/batches/{batch['id']}/results")).json()["data"]
    assert [(r["custom_id"], r["status"]) for r in results] == [
        ("q1", "pending"),
        ("q2", "pending"),
    ]
    async with Redis.from_url(redis_url) as redis:
        store = BatchStore(redis)
        spec = await store.spec(batch["id"])
        items = await store.pending_items(batch["id"], 0, 2)
    assert spec is not None
    assert (spec.system, spec.params.provider_kwargs()) == (None, {})
    assert [(item.prompt, item.params) for item in items] == [
        (request("q1", "Where is Seoul?")["body"]["messages"],
         {"temperature": 0.2, "max_completion_tokens": 64, "stop": "\n\n"}),
        (request("q2", "What is 2+2?")["body"]["messages"],
         {"temperature": 0.2, "max_completion_tokens": 64, "stop": "\n\n"}),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "param"),
    [
        ((request("a", "x"), {**request("b", "y"), "url": "/v1/embeddings"}), "line[2].url"),
        ((request("a", "x"), request("b", "y", model="gpt-4o-mini")), "line[2].body.model"),
        ((request("a", "x"), request("b", "y", top_p=5)), "line[2].body.top_p"),
        ((request("a", "x"), "", '{"custom_id": '), "line[3]"),
        ((request("a", "x"), request("a", "y")), "line[2].custom_id"),
        ((request("a", "x", n=2),), "line[1].body.n"),
        ((request("a", "x", functions=[]),), "line[1].body.functions"),
        (({**request("a", "x"), "body": {"messages": []}},), "line[1].body.messages"),
        (("",), "line[1]"),
    ],
    ids=[
        "url",
        "mixed-model",
        "out-of-range",
        "malformed",
        "duplicate-id",
        "n",
        "unknown-param",
        "no-messages",
        "empty",
    ],
)
async def test_a_bad_line_is_422_naming_it_and_stores_nothing(
    post: Post, redis_url: str, lines: tuple[Any, ...], param: str
) -> None:
    response = await post(ndjson(*lines))

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    with sync_redis.Redis.from_url(redis_url) as redis:
        assert list(redis.scan_iter("*")) == []


async def test_a_conversation_with_earlier_turns_keeps_every_turn(
    post: Post, redis_url: str
) -> None:
    line = request("a", "x")
    line["body"]["messages"] += [{"role": "assistant", "content": "hm"},
                                 {"role": "user", "content": "and?"}]  # fmt: skip
    response = await post(ndjson(line))
    assert response.status_code == 202, response.text
    async with Redis.from_url(redis_url) as redis:
        (item,) = await BatchStore(redis).pending_items(response.json()["id"], 0, 1)
    assert item.prompt == line["body"]["messages"]


async def test_openapi_documents_both_bodies(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    content = schema["paths"]["/v1/batches"]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/BatchCreate"}
    assert "application/x-ndjson" in content
    assert "requestBody" not in schema["paths"]["/v1/batches/{batch_id}"]["get"]


@pytest.mark.parametrize(
    ("second", "param"),
    [
        (request("b", "y", max_tokens=10**7), "line[3].body.max_tokens"),
        ({**request("b", "y"), "body": {"messages": [
            {"role": "user", "content": [{"type": "image_url"}]}]}},
         "line[3].body.messages[0].content[0].image_url"),
        ({**request("b", "y"), "body": {"messages": [{"role": "tool", "content": "x"}]}},
         "line[3].body.messages[0].tool_call_id"),
    ],
    ids=["max-tokens", "part-payload", "tool-call-id"],
)  # fmt: skip
async def test_what_planning_refuses_names_the_line_too(
    post: Post, redis_url: str, second: dict[str, Any], param: str
) -> None:
    body = ndjson(request("a", "x"), "", second)  # a blank line: lines count from 1, blanks too
    response = await post(body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["param"], error["message"].startswith("Line 3: ")) == (param, True)
    with sync_redis.Redis.from_url(redis_url) as redis:
        assert list(redis.scan_iter("*")) == []


async def test_a_file_written_with_raw_unicode_line_separators_and_a_bom_runs(
    post: Post, redis_url: str
) -> None:
    prompt = "one\u2028two\u2029three\x85four"
    lines = [json.dumps(request(c, prompt), ensure_ascii=False) for c in ("a", "b")]
    body = "\ufeff" + "\r\n".join(lines) + "\r\n"
    response = await post(body.encode())
    assert response.status_code == 202, response.text
    async with Redis.from_url(redis_url) as redis:
        items = await BatchStore(redis).pending_items(response.json()["id"], 0, 2)
    assert [item.prompt[-1]["content"] for item in items] == [prompt, prompt]  # type: ignore[index]
