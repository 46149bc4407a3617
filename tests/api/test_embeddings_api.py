"""Submitting `/v1/embeddings` batches: what an entry, a param and an OpenAI Batch line may be,
each mistake a 422 naming its field (and nothing stored); the batch says its endpoint."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

EMBED = {"endpoint": "/v1/embeddings"}


async def test_an_embeddings_batch_takes_texts_and_input_objects(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/batches", json={
        **EMBED, "prompts": ["first text", {"custom_id": "b", "input": "second text"}],
        "params": {"dimensions": 64, "encoding_format": "base64"},
    })  # fmt: skip
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["endpoint"] == "/v1/embeddings"
    assert batch["model"] == "text-embedding-3-small"  # PROMPTBATCH_DEFAULT_EMBEDDING_MODEL
    page = (await client.get(f"/v1/batches/{batch['id']}/results")).json()
    assert [(i["custom_id"], i["status"]) for i in page["data"]] == [
        ("0", "pending"),
        ("b", "pending"),
    ]
    assert "embedding" not in page["data"][0]  # set only once there is one
    chat = (await client.post("/v1/batches", json={"prompts": ["hi"]})).json()
    assert chat["endpoint"] == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**EMBED, "prompts": ["x"], "params": {"temperature": 0.5}}, "params.temperature"),
        ({**EMBED, "prompts": ["x"], "system": "Be brief."}, "system"),
        ({**EMBED, "template": "Say {x}", "inputs": [{"x": "a"}]}, "template"),
        ({**EMBED, "prompts": ["x"], "mode": "provider_batch"}, "mode"),
        ({**EMBED, "prompts": [{"custom_id": "a", "prompt": "x"}]}, "prompts[0].prompt"),
        ({**EMBED, "prompts": [{"custom_id": "a"}]}, "prompts[0].input"),
        ({**EMBED, "prompts": [{"input": "  "}]}, "prompts[0].input"),
        ({**EMBED, "prompts": ["x"], "params": {"dimensions": 0}}, "params.dimensions"),
        ({"prompts": ["x"], "params": {"dimensions": 8}}, "params.dimensions"),
        ({"prompts": [{"input": "x"}]}, "prompts[0].input"),
        ({"endpoint": "/v1/completions", "prompts": ["x"]}, "endpoint"),
    ],
)
async def test_a_wrong_embeddings_request_is_a_422_naming_its_field_and_stores_nothing(
    client: httpx.AsyncClient, redis_url: str, body: dict[str, Any], param: str
) -> None:
    response = await client.post("/v1/batches", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param
    async with Redis.from_url(redis_url) as redis:
        assert [k async for k in redis.scan_iter("pb:batch:*")] == []


def _lines(*rows: dict[str, Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _line(n: int, url: str = "/v1/embeddings", **body: Any) -> dict[str, Any]:
    if url == "/v1/embeddings":
        body = {"input": f"text {n}", **body}
    else:
        body = {"messages": [{"role": "user", "content": f"text {n}"}], **body}
    return {"custom_id": f"c{n}", "method": "POST", "url": url, "body": body}


NDJSON = {"Content-Type": "application/x-ndjson"}


async def test_openai_batch_lines_of_embeddings_make_an_embeddings_batch(
    client: httpx.AsyncClient,
) -> None:
    body = _lines(_line(1, dimensions=32), _line(2, dimensions=32))
    response = await client.post("/v1/batches", content=body, headers=NDJSON)
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["endpoint"] == "/v1/embeddings"
    page = (await client.get(f"/v1/batches/{batch['id']}/results")).json()
    assert [i["custom_id"] for i in page["data"]] == ["c1", "c2"]


@pytest.mark.parametrize(
    ("rows", "param"),
    [
        ([_line(1), _line(2, url="/v1/chat/completions")], "line[2].url"),
        ([_line(1, dimensions=8), _line(2, dimensions=16)], "line[2].body"),
        ([_line(1), _line(2, user="u")], "line[2].body.user"),
        ([_line(1), {**_line(2), "body": {"input": ["a", "b"]}}], "line[2].body.input"),
        ([{**_line(1), "url": "/v1/responses"}], "line[1].url"),
    ],
)
async def test_a_wrong_embeddings_line_is_a_422_naming_it(
    client: httpx.AsyncClient, rows: list[dict[str, Any]], param: str
) -> None:
    response = await client.post("/v1/batches", content=_lines(*rows), headers=NDJSON)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


async def test_the_default_endpoint_spelt_out_is_the_same_request_for_an_idempotency_key(
    client: httpx.AsyncClient,
) -> None:
    key = {"Idempotency-Key": "same-request"}
    first = await client.post("/v1/batches", json={"prompts": ["hi"]}, headers=key)
    assert first.status_code == 202
    again = await client.post(
        "/v1/batches", json={"prompts": ["hi"], "endpoint": "/v1/chat/completions"}, headers=key
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = await client.post("/v1/batches", json={**EMBED, "prompts": ["hi"]}, headers=key)
    assert other.status_code == 409  # embedding it is another request


async def test_a_chat_items_embeddings_param_is_a_422(client: httpx.AsyncClient) -> None:
    body = {"prompts": [{"prompt": "hi", "params": {"dimensions": 64}}]}
    response = await client.post("/v1/batches", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "prompts[0].params.dimensions"


async def test_a_native_embeddings_batch_shows_its_endpoint_in_the_openai_view(
    client: httpx.AsyncClient,
) -> None:
    batch = (await client.post("/v1/batches", json={**EMBED, "prompts": ["a"]})).json()
    view = (await client.get(f"/openai/v1/batches/{batch['id']}")).json()
    assert view["endpoint"] == "/v1/embeddings"
