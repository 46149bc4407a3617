"""API keys: every /v1 route needs one when keys are set, and each key sees only its batches."""

from __future__ import annotations

import hmac
import logging
import re
from typing import Any

import httpx
import pytest
import redis as sync_redis

from api import auth
from api.main import create_app
from shared import keys
from shared.settings import Settings
from tests.conftest import api_client, make_settings
from tests.helpers import bearer

KEY_A, KEY_B, KEY_C = "key-a-0c8f6d0e51f44d2b", "key-b-9a3b27c2e8d04f61", "key-c-51d2f07a9be34c8e"


@pytest.fixture
def keyed(redis_url: str) -> Settings:
    return make_settings(redis_url, api_keys=f"{KEY_A},{KEY_B},{KEY_C}")


def _v1_routes() -> list[tuple[str, str]]:
    """Every (method, path) under /v1 the app serves, read from its OpenAPI description."""
    paths = create_app(make_settings("redis://unused")).openapi()["paths"]
    routes = [
        (method.upper(), re.sub(r"\{[^}]+\}", "batch_x", path))
        for path, operations in paths.items()
        if path.startswith("/v1")
        for method in operations
    ]
    assert ("POST", "/v1/batches") in routes
    assert ("GET", "/v1/batches/batch_x/results") in routes
    return routes


def _unauthorized(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    return str(error["message"])


@pytest.mark.parametrize(("method", "path"), _v1_routes())
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), bearer(KEY_A + "x"), bearer(KEY_A[:-1]), {"Authorization": KEY_A},
     {"Authorization": f"Basic {KEY_A}"}, {"Authorization": "Bearer"}],
    ids=["none", "wrong", "longer", "shorter", "no-scheme", "basic", "empty"],
)  # fmt: skip
async def test_every_v1_route_needs_a_valid_key(
    keyed: Settings, redis_url: str, method: str, path: str, headers: dict[str, str]
) -> None:
    async with api_client(keyed) as client:
        response = await client.request(method, path, headers=headers, json={"prompts": ["a"]})
    _unauthorized(response)
    with sync_redis.Redis.from_url(redis_url) as redis:
        assert list(redis.scan_iter("*")) == []


async def test_health_and_docs_need_no_key(keyed: Settings) -> None:
    async with api_client(keyed) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 503  # no worker, but not a 401
        spec = (await client.get("/openapi.json")).json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


async def test_each_configured_key_is_accepted(keyed: Settings) -> None:
    async with api_client(keyed) as client:
        for key in (KEY_A, KEY_B, KEY_C):
            response = await client.post(
                "/v1/batches", json={"prompts": ["a"]}, headers=bearer(key)
            )
            assert response.status_code == 202, response.text


async def test_every_key_is_compared_in_constant_time(
    keyed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    async with api_client(keyed) as client:
        response = await client.get("/v1/batches", headers=bearer(KEY_A))
    assert response.status_code == 200
    assert len(compared) == 3  # the first key matched, and the other two were compared anyway
    assert all(len(a) == len(b) == 32 for a, b in compared)  # digests: no key's length shows


async def test_another_keys_batch_is_404_everywhere_and_never_listed(keyed: Settings) -> None:
    async with api_client(keyed) as client:
        mine = await client.post("/v1/batches", json={"prompts": ["a", "b"]}, headers=bearer(KEY_A))
        batch_id = mine.json()["id"]
        theirs = await client.post("/v1/batches", json={"prompts": ["c"]}, headers=bearer(KEY_B))

        for path in (f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/results"):
            assert (await client.get(path, headers=bearer(KEY_A))).status_code == 200
            other = await client.get(path, headers=bearer(KEY_B))
            unknown = await client.get(path.replace(batch_id, "batch_nope"), headers=bearer(KEY_B))
            assert other.status_code == unknown.status_code == 404
            # another key's batch looks exactly like one that does not exist
            assert (
                other.json()["error"]["message"].replace(batch_id, "batch_nope")
                == (unknown.json()["error"]["message"])
            )
        streamed = await client.get(
            f"/v1/batches/{batch_id}/results",
            headers=bearer(KEY_B) | {"Accept": "application/x-ndjson"},
        )
        assert streamed.status_code == 404
        for method, path in (
            ("GET", f"/v1/batches/{batch_id}/events"),
            ("POST", f"/v1/batches/{batch_id}/cancel"),
            ("DELETE", f"/v1/batches/{batch_id}"),
        ):
            refused = await client.request(method, path, headers=bearer(KEY_B))
            assert refused.status_code == 404, (method, path)
        still = await client.get(f"/v1/batches/{batch_id}", headers=bearer(KEY_A))
        assert still.json()["status"] == "queued"  # B's cancel and delete changed nothing

        listed_b = (await client.get("/v1/batches", headers=bearer(KEY_B))).json()
        listed_a = (await client.get("/v1/batches", headers=bearer(KEY_A))).json()
        listed_c = (await client.get("/v1/batches", headers=bearer(KEY_C))).json()
        after = await client.get("/v1/batches", params={"after": batch_id}, headers=bearer(KEY_B))
    assert [b["id"] for b in listed_a["data"]] == [batch_id]
    assert [b["id"] for b in listed_b["data"]] == [theirs.json()["id"]]
    assert listed_c["data"] == []
    assert after.status_code == 422  # B cannot even use A's batch as a cursor


def _everything(redis_url: str) -> bytes:
    """Every key name and value in the Redis, as one blob to search."""
    with sync_redis.Redis.from_url(redis_url) as redis:
        blob: list[bytes] = []
        for key in redis.scan_iter("*"):
            blob += [key, *_values(redis, key, redis.type(key).decode())]
        return b"\n".join(blob)


def _values(redis: Any, key: bytes, kind: str) -> list[bytes]:  # redis-py types are loose
    if kind == "hash":
        return [part for item in redis.hgetall(key).items() for part in item]
    if kind == "list":
        return list(redis.lrange(key, 0, -1))
    if kind == "set":
        return list(redis.smembers(key))
    if kind == "zset":
        return list(redis.zrange(key, 0, -1))
    assert kind == "string", kind
    return [redis.get(key) or b""]


async def test_a_batch_is_stored_under_a_hash_of_its_key_never_the_key(
    redis_url: str, keyed: Settings
) -> None:
    async with api_client(keyed) as client:
        batch = await client.post("/v1/batches", json={"prompts": ["a"]}, headers=bearer(KEY_A))
    stored = _everything(redis_url)
    assert KEY_A.encode() not in stored
    assert KEY_A.split("-")[-1].encode() not in stored
    with sync_redis.Redis.from_url(redis_url) as redis:
        owner = redis.hget(keys.batch(batch.json()["id"]), "owner")
    assert owner == auth.owner_id(KEY_A).encode()
    assert owner != auth.owner_id(KEY_B).encode()


async def test_without_keys_there_is_no_auth_and_a_warning_at_start(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="promptbatch.api"):
        async with api_client(settings) as client:
            response = await client.post("/v1/batches", json={"prompts": ["a"]})
            listed = (await client.get("/v1/batches")).json()
    assert response.status_code == 202
    assert [b["id"] for b in listed["data"]] == [response.json()["id"]]
    assert "PROMPTBATCH_API_KEYS is not set" in caplog.text


async def test_with_keys_there_is_no_such_warning(
    keyed: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="promptbatch.api"):
        async with api_client(keyed):
            pass
    assert "PROMPTBATCH_API_KEYS" not in caplog.text
