"""Webhook endpoints over HTTP: add (the secret shown once), list and read (never the secret),
delete, per key; events checked; a URL that is not public is a 422 unless allowed."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import redis as sync_redis

from api.auth import owner_id
from shared import keys
from shared.settings import Settings
from shared.webhooks import EVENT_TYPES, MAX_ENDPOINTS
from tests.conftest import api_client, make_settings
from tests.helpers import bearer

KEY_A, KEY_B = "key-a-4f1c9e0d2b7a4e58", "key-b-83d2a6c1f05e4b97"
LOOPBACK = "http://127.0.0.1:9/hooks"


@pytest.fixture
def allowed(redis_url: str) -> Settings:
    """Two keys, and webhook URLs on loopback allowed (as the tests' receivers are)."""
    return make_settings(redis_url, api_keys=f"{KEY_A},{KEY_B}", webhook_allow_private=True)


def _refused(response: httpx.Response, param: str = "url") -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    return str(error["message"])


async def test_by_default_a_loopback_url_is_a_422_naming_url(settings: Settings) -> None:
    urls = [
        LOOPBACK,
        "http://localhost:8080/x",
        "https://[::1]/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",  # 127.0.0.1 spelt as a number
    ]
    async with api_client(settings) as client:
        answers = [await client.post("/v1/webhooks", json={"url": url}) for url in urls]
        listed = (await client.get("/v1/webhooks")).json()
    for response in answers:
        assert "public addresses only" in _refused(response)
    assert listed["data"] == []
    with sync_redis.Redis.from_url(settings.require_redis_url()) as r:
        assert r.exists(keys.webhooks(keys.PUBLIC_OWNER)) == 0  # nothing was stored


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "file:///etc/passwd", "http://", "http:///path", "example.com",
     "gopher://127.0.0.1:70/", "http://exa mple.com/", "http://a:99999/", "http://nope.invalid/"],
)  # fmt: skip
async def test_a_url_that_is_not_http_with_a_resolvable_host_is_a_422(
    allowed: Settings, url: str
) -> None:
    async with api_client(allowed) as client:
        response = await client.post("/v1/webhooks", json={"url": url}, headers=bearer(KEY_A))
    _refused(response)


async def test_an_endpoint_is_added_with_its_secret_shown_once(allowed: Settings) -> None:
    async with api_client(allowed) as client:
        created = await client.post("/v1/webhooks", json={"url": LOOPBACK}, headers=bearer(KEY_A))
        assert created.status_code == 201, created.text
        endpoint = created.json()
        listed = await client.get("/v1/webhooks", headers=bearer(KEY_A))
        read = await client.get(f"/v1/webhooks/{endpoint['id']}", headers=bearer(KEY_A))
    assert created.headers["location"] == f"/v1/webhooks/{endpoint['id']}"
    assert endpoint["object"] == "webhook_endpoint"
    assert endpoint["id"].startswith("we_")
    assert endpoint["url"] == LOOPBACK
    assert endpoint["events"] == list(EVENT_TYPES)  # all four by default
    assert endpoint["secret"].startswith("whsec_")
    assert len(base64.b64decode(endpoint["secret"].removeprefix("whsec_"))) == 32
    shown = {k: v for k, v in endpoint.items() if k != "secret"}
    assert listed.status_code == 200
    assert listed.json() == {"object": "list", "data": [shown], "has_more": False,
                             "next_after": None}  # fmt: skip
    assert read.json() == shown
    assert endpoint["secret"] not in listed.text + read.text
    with sync_redis.Redis.from_url(allowed.require_redis_url()) as r:
        stored = r.hgetall(keys.webhooks(owner_id(KEY_A)))
    assert json.loads(stored[endpoint["id"].encode()])["secret"] == endpoint["secret"]


async def test_events_are_the_four_batch_events_each_kept_once(allowed: Settings) -> None:
    async with api_client(allowed) as client:

        async def add(events: object) -> httpx.Response:
            body = {"url": LOOPBACK, "events": events}
            return await client.post("/v1/webhooks", json=body, headers=bearer(KEY_A))

        some = await add(["batch.expired", "batch.completed", "batch.expired"])
        unknown = await add(["batch.completed", "batch.started"])
        empty = await add([])
        wrong_type = await add("batch.completed")
        extra = await client.post(
            "/v1/webhooks", json={"url": LOOPBACK, "secret": "mine"}, headers=bearer(KEY_A)
        )
    assert some.status_code == 201
    assert some.json()["events"] == ["batch.completed", "batch.expired"]
    assert _refused(unknown, "events[1]")
    assert _refused(empty, "events")
    assert _refused(wrong_type, "events")
    assert _refused(extra, "secret")


async def test_an_endpoint_is_its_keys_alone(allowed: Settings) -> None:
    async with api_client(allowed) as client:
        created = await client.post("/v1/webhooks", json={"url": LOOPBACK}, headers=bearer(KEY_A))
        endpoint_id = created.json()["id"]
        listed_b = await client.get("/v1/webhooks", headers=bearer(KEY_B))
        read_b = await client.get(f"/v1/webhooks/{endpoint_id}", headers=bearer(KEY_B))
        deleted_b = await client.delete(f"/v1/webhooks/{endpoint_id}", headers=bearer(KEY_B))
        listed_a = await client.get("/v1/webhooks", headers=bearer(KEY_A))
    assert listed_b.json()["data"] == []
    assert read_b.status_code == 404
    assert deleted_b.status_code == 404
    assert deleted_b.json()["error"]["type"] == "not_found"
    assert [e["id"] for e in listed_a.json()["data"]] == [endpoint_id]


async def test_delete_removes_an_endpoint_and_then_is_a_404(allowed: Settings) -> None:
    async with api_client(allowed) as client:
        first = await client.post("/v1/webhooks", json={"url": LOOPBACK}, headers=bearer(KEY_A))
        second = await client.post("/v1/webhooks", json={"url": LOOPBACK}, headers=bearer(KEY_A))
        deleted = await client.delete(f"/v1/webhooks/{first.json()['id']}", headers=bearer(KEY_A))
        again = await client.delete(f"/v1/webhooks/{first.json()['id']}", headers=bearer(KEY_A))
        read = await client.get(f"/v1/webhooks/{first.json()['id']}", headers=bearer(KEY_A))
        unknown = await client.delete("/v1/webhooks/we_nope", headers=bearer(KEY_A))
        listed = await client.get("/v1/webhooks", headers=bearer(KEY_A))
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert again.status_code == 404
    assert read.status_code == 404
    assert unknown.status_code == 404
    assert [e["id"] for e in listed.json()["data"]] == [second.json()["id"]]


async def test_a_key_has_at_most_16_endpoints(allowed: Settings) -> None:
    async with api_client(allowed) as client:
        for _ in range(MAX_ENDPOINTS):
            added = await client.post("/v1/webhooks", json={"url": LOOPBACK}, headers=bearer(KEY_A))
            assert added.status_code == 201
        over = await client.post("/v1/webhooks", json={"url": LOOPBACK}, headers=bearer(KEY_A))
        other_key = await client.post("/v1/webhooks", json={"url": LOOPBACK}, headers=bearer(KEY_B))
        listed = await client.get("/v1/webhooks", headers=bearer(KEY_A))
        first = listed.json()["data"][0]["id"]
        await client.delete(f"/v1/webhooks/{first}", headers=bearer(KEY_A))
        after_delete = await client.post(
            "/v1/webhooks", json={"url": LOOPBACK}, headers=bearer(KEY_A)
        )
    assert over.status_code == 409
    assert over.json()["error"]["type"] == "conflict"
    assert "16" in over.json()["error"]["message"]
    assert len(listed.json()["data"]) == MAX_ENDPOINTS
    assert other_key.status_code == 201  # the ceiling is per key
    assert after_delete.status_code == 201


async def test_a_body_that_is_not_json_is_a_422_and_a_large_one_a_413(allowed: Settings) -> None:
    async with api_client(allowed) as client:

        async def post(content: bytes) -> httpx.Response:
            headers = {**bearer(KEY_A), "content-type": "application/json"}
            return await client.post("/v1/webhooks", content=content, headers=headers)

        not_utf8 = await post(b'\xff\xfe{"url": 1}')
        truncated = await post(b'{"url": "http://127.0.0.1/"')
        empty = await post(b"")
        large = await post(b'{"url": "' + b"a" * 70_000 + b'"}')
    for response in (not_utf8, truncated):
        assert response.status_code == 422
        assert response.json()["error"]["message"] == "The body is not valid JSON."
    assert empty.status_code == 422
    assert large.status_code == 413
    assert large.json()["error"]["type"] == "request_too_large"
