"""The HTTP contract through the real app (lifespan included) and a real Redis, no worker."""

from __future__ import annotations

import json

import httpx
import pytest
import redis as sync_redis
from arq.constants import job_key_prefix

from shared import keys
from shared.settings import Settings
from tests.conftest import api_client, make_settings
from tests.helpers import free_port

BODY = {
    "prompts": [
        "What are some colors of rainbow?",
        {"custom_id": "q2", "prompt": "Where is Seoul?"},
    ],
    "model": "gpt-4o-mini",
    "system": "Answer in one line.",
    "params": {"temperature": 0.2, "max_tokens": 256},
    "max_concurrency": 4,
    "metadata": {"project": "demo"},
}


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "param"}
    error: dict[str, object] = body["error"]
    return error


def _stored_keys(redis_url: str) -> list[bytes]:
    with sync_redis.Redis.from_url(redis_url) as client:
        return list(client.scan_iter("*"))


async def test_submit_answers_202_with_the_batch_and_location(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/batches", json=BODY)
    assert response.status_code == 202
    batch = response.json()
    assert response.headers["location"] == f"/v1/batches/{batch['id']}"
    assert batch["id"].startswith("batch_")
    assert len(batch["id"]) > 30
    assert batch["object"] == "batch"
    assert batch["status"] == "queued"
    assert batch["provider"] == "offline"
    assert batch["metadata"] == {"project": "demo"}
    assert batch["request_counts"] == {
        "total": 2, "succeeded": 0, "failed": 0, "cancelled": 0, "expired": 0, "pending": 2,
    }  # fmt: skip
    assert batch["created_at"].endswith("Z")
    assert batch["error"] is None

    fetched = await client.get(f"/v1/batches/{batch['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == batch


async def test_submit_queues_one_arq_job_per_chunk(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    batch = (await client.post("/v1/batches", json=BODY)).json()
    with sync_redis.Redis.from_url(redis_url) as redis:
        queued = redis.zrange(keys.QUEUE, 0, -1)
    assert queued == [keys.job_id(batch["id"], 0).encode()]


async def test_the_queued_job_is_json_carrying_only_ids(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    batch = (await client.post("/v1/batches", json=BODY)).json()
    with sync_redis.Redis.from_url(redis_url) as redis:
        raw = redis.get(job_key_prefix + keys.job_id(batch["id"], 0))
    assert raw is not None
    job = json.loads(raw)  # JSON, not pickle
    assert job["f"] == "run_chunk"
    assert job["a"] == [batch["id"], 0]
    assert "Seoul" not in raw.decode()  # prompts stay in the batch's keys, not in the job


async def test_results_show_pending_items_in_input_order(client: httpx.AsyncClient) -> None:
    batch = (await client.post("/v1/batches", json=BODY)).json()
    page = (await client.get(f"/v1/batches/{batch['id']}/results")).json()
    assert page == {
        "object": "list",
        "data": [
            {
                "index": 0,
                "custom_id": "0",
                "status": "pending",
                "output": None,
                "output_json": None,
                "finish_reason": None,
                "tool_calls": None,
                "refusal": None,
                "error": None,
                "usage": None,
            },
            {
                "index": 1,
                "custom_id": "q2",
                "status": "pending",
                "output": None,
                "output_json": None,
                "finish_reason": None,
                "tool_calls": None,
                "refusal": None,
                "error": None,
                "usage": None,
            },
        ],
        "has_more": False,
        "next_after": None,
    }


async def test_results_paginate_with_limit_and_after(client: httpx.AsyncClient) -> None:
    batch = (await client.post("/v1/batches", json={"prompts": [f"p{i}" for i in range(7)]})).json()
    url = f"/v1/batches/{batch['id']}/results"
    seen: list[int] = []
    after = None
    while True:
        params = {"limit": 3} | ({"after": after} if after is not None else {})
        page = (await client.get(url, params=params)).json()
        seen += [item["index"] for item in page["data"]]
        if not page["has_more"]:
            assert page["next_after"] is None
            break
        after = page["next_after"]
        assert after == seen[-1]
    assert seen == list(range(7))
    _error(await client.get(url, params={"limit": 1001}), 422)


async def test_results_stream_as_ndjson(client: httpx.AsyncClient) -> None:
    batch = (
        await client.post("/v1/batches", json={"prompts": [f"p{i}" for i in range(2500)]})
    ).json()
    response = await client.get(
        f"/v1/batches/{batch['id']}/results", headers={"Accept": "application/x-ndjson"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(2500))
    assert json.loads(lines[7])["custom_id"] == "7"


async def test_list_is_newest_first_with_cursor(client: httpx.AsyncClient) -> None:
    ids = [
        (await client.post("/v1/batches", json={"prompts": ["x"]})).json()["id"] for _ in range(3)
    ]
    first = (await client.get("/v1/batches", params={"limit": 2})).json()
    assert first["object"] == "list"
    assert [b["id"] for b in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    rest = (
        await client.get("/v1/batches", params={"limit": 2, "after": first["next_after"]})
    ).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False


@pytest.mark.parametrize("path", ["", "/results"])
async def test_unknown_batch_is_404(client: httpx.AsyncClient, path: str) -> None:
    error = _error(await client.get(f"/v1/batches/batch_nope{path}"), 404)
    assert error["type"] == "not_found"
    assert "batch_nope" in str(error["message"])


async def test_unknown_batch_is_404_for_ndjson_too(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/batches/batch_nope/results", headers={"Accept": "application/x-ndjson"}
    )
    _error(response, 404)


async def test_unknown_route_uses_the_error_shape(client: httpx.AsyncClient) -> None:
    assert _error(await client.get("/v2/nothing"), 404)["type"] == "not_found"


async def test_wrong_method_uses_the_error_shape(client: httpx.AsyncClient) -> None:
    assert _error(await client.put("/v1/batches"), 405)["type"] == "method_not_allowed"


def _schema(schema: dict[str, object]) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**BODY, "colour": "blue"}, "colour"),
        ({"prompts": ["a", {"prompt": "b", "extra": 1}]}, "prompts[1].extra"),
        ({"prompts": ["a"], "params": {"top_k": 3}}, "params.top_k"),
        ({"prompts": []}, "prompts"),
        ({"model": "m"}, "prompts"),
        ({"prompts": "not a list"}, "prompts"),
        ({"prompts": ["a", 5]}, "prompts[1]"),
        ({"prompts": ["a", None]}, "prompts[1]"),
        ({"prompts": ["a", {"custom_id": "x"}]}, "prompts[1].prompt"),
        ({"prompts": ["a", {"prompt": 7}]}, "prompts[1].prompt"),
        ({"prompts": ["a"], "metadata": {"str": 5}}, "metadata.str"),
        ({"prompts": ["a"], "str": "x"}, "str"),
        ({"prompts": ["a"], "params": {"temperature": 9}}, "params.temperature"),
        ({"prompts": ["a"], "params": {"max_tokens": 10**7}}, "params.max_tokens"),
        ({"prompts": ["a"], "max_concurrency": 0}, "max_concurrency"),
        ({"prompts": ["a"], "max_concurrency": 65}, "max_concurrency"),
        ({"prompts": ["a", "a", "x" * 100_001]}, "prompts[2]"),
        ({"prompts": [{"prompt": "a", "custom_id": "k"}, {"prompt": "b", "custom_id": "k"}]},
         "prompts[1].custom_id"),
        ({"prompts": [{"messages": [{"role": "user", "content": [{"type": "video"}]}]}]},
         "prompts[0].messages[0].content[0].type"),
        ({"prompts": [{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}]},
         "prompts[0].messages[0].content[0].image_url"),
        ({"prompts": [{"messages": [{"role": "user", "content": 5}]}]},
         "prompts[0].messages[0].content"),
        ({"prompts": [{"messages": [{"role": "bot", "content": "x"}]}]},
         "prompts[0].messages[0].role"),
        ({"prompts": [{"prompt": "a", "params": {"stop": 5}}]}, "prompts[0].params.stop"),
        ({"prompts": ["a"], "params": {"tool_choice": "sometimes"}}, "params.tool_choice"),
        ({"prompts": ["a"], "params": {"n": 2}}, "params.n"),
        ({"template": {"messages": [["human", "{a}"]]}, "inputs": [{"a": [1]}]}, "inputs[0].a"),
        ({"template": {"messages": [["robot", "{a}"]]}, "inputs": [{"a": 1}]},
         "template.messages[0][0]"),
        ({"prompts": ["a", {"prompt": "b", "params": {"response_format": _schema(
            {"properties": {"a": {"$ref": "#/$defs/nope"}}})}}]},
         "prompts[1].params.response_format"),
        ({"prompts": ["a", {"prompt": "b", "params": {"response_format": _schema(
            {"type": "string", "pattern": "^(?!x)"})}}]},
         "prompts[1].params.response_format"),
    ],
)  # fmt: skip
async def test_bad_submissions_are_422_naming_the_field_and_store_nothing(
    client: httpx.AsyncClient, redis_url: str, body: dict[str, object], param: str
) -> None:
    error = _error(await client.post("/v1/batches", json=body), 422)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert _stored_keys(redis_url) == []


async def test_too_many_prompts_is_422(redis_url: str) -> None:
    async with api_client(make_settings(redis_url, max_prompts=3)) as client:
        error = _error(await client.post("/v1/batches", json={"prompts": ["a"] * 4}), 422)
    assert error["param"] == "prompts"
    assert _stored_keys(redis_url) == []


async def test_malformed_json_is_422(client: httpx.AsyncClient, redis_url: str) -> None:
    response = await client.post(
        "/v1/batches", content=b'{"prompts": [', headers={"Content-Type": "application/json"}
    )
    assert "JSON" in str(_error(response, 422)["message"])
    assert _stored_keys(redis_url) == []


@pytest.fixture
def unreachable_redis() -> Settings:
    return make_settings(f"redis://127.0.0.1:{free_port()}/0")


#: A well-formed id (a malformed one is a 404 before any Redis call).
SOME_ID = "batch_" + "0" * 32


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", f"/v1/batches/{SOME_ID}"), ("GET", "/v1/batches"), ("POST", "/v1/batches"),
     ("GET", f"/v1/batches/{SOME_ID}/results")],
)  # fmt: skip
async def test_redis_down_is_503_in_the_error_shape(
    unreachable_redis: Settings, method: str, path: str
) -> None:
    async with api_client(unreachable_redis) as client:
        response = await client.request(method, path, json={"prompts": ["a"]})
    error = _error(response, 503)
    assert error["type"] == "service_unavailable"
    assert "Redis" in str(error["message"])


async def test_docs_and_openapi_are_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert {"/v1/batches", "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/results"} <= set(
        spec["paths"]
    )
