"""What a hostile or careless client meets: each case here was a 500, a 400 out of the contract,
a 422 in the middle of a listing, or a value accepted that should not be."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import httpx
import pytest
import redis as sync_redis

from api.auth import owner_id
from shared import keys
from tests.conftest import api_client, make_settings
from tests.helpers import ThreadedProxy, free_port, parse_sse


async def _submit(client: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await client.post("/v1/batches", json={"prompts": ["a"], **body})
    assert response.status_code == 202, response.text
    return dict(response.json())


async def test_a_metadata_value_over_512_characters_is_refused(redis_url: str) -> None:
    async with api_client(make_settings(redis_url)) as client:
        refused = await client.post(
            "/v1/batches", json={"prompts": ["a"], "metadata": {"note": "x" * 513}}
        )
        kept = await client.post(
            "/v1/batches", json={"prompts": ["a"], "metadata": {"note": "x" * 512}}
        )
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "metadata.note"
    assert kept.status_code == 202


async def test_a_last_event_id_of_5000_digits_starts_from_now_not_a_500(redis_url: str) -> None:
    async with api_client(make_settings(redis_url)) as client:
        batch = await _submit(client)
        cancelled = await client.post(f"/v1/batches/{batch['id']}/cancel")  # final at once
        assert cancelled.json()["status"] == "cancelled"
        response = await client.get(
            f"/v1/batches/{batch['id']}/events", headers={"Last-Event-ID": "9" * 5000 + "-1"}
        )
    assert response.status_code == 200
    events = parse_sse(response.text)
    assert events[0][0] == "batch"
    assert events[-1][2]["status"] == "cancelled"


async def test_a_malformed_batch_id_is_a_404_before_any_redis_call() -> None:
    unreachable = make_settings(f"redis://127.0.0.1:{free_port()}/0")
    async with api_client(unreachable) as client:
        for path in ("/v1/batches/nope", "/v1/batches/batch_ZZ/results", "/v1/batches/x/events"):
            response = await client.get(path)
            assert response.status_code == 404, path  # Redis is down: a lookup would be a 503
            assert response.json()["error"]["type"] == "not_found"


async def test_a_body_that_is_not_utf8_json_is_a_422_not_an_undocumented_400(
    redis_url: str,
) -> None:
    async with api_client(make_settings(redis_url)) as client:
        response = await client.post(
            "/v1/batches", content=b"\xffQ", headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "The body is not valid JSON."


async def test_listing_after_a_batch_deleted_meanwhile_goes_on_where_it_was(
    redis_url: str,
) -> None:
    async with api_client(make_settings(redis_url, api_keys="lister-key")) as client:
        client.headers["Authorization"] = "Bearer lister-key"
        oldest, middle, newest = [str((await _submit(client))["id"]) for _ in range(3)]
        first = (await client.get("/v1/batches", params={"limit": 2})).json()
        assert [b["id"] for b in first["data"]] == [newest, middle]
        assert first["next_after"] == middle
        deleted = await client.delete(f"/v1/batches/{middle}")
        assert deleted.status_code == 204
        rest = await client.get("/v1/batches", params={"limit": 2, "after": middle})
    assert rest.status_code == 200, rest.text
    assert [b["id"] for b in rest.json()["data"]] == [oldest]


async def test_a_405_names_every_method_the_path_takes(redis_url: str) -> None:
    async with api_client(make_settings(redis_url)) as client:
        response = await client.request("PUT", "/v1/batches/batch_" + "0" * 32)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "DELETE"}


async def test_bearer_auth_is_documented_as_a_security_scheme_only_when_keys_are_set(
    redis_url: str,
) -> None:
    async with api_client(make_settings(redis_url)) as client:
        open_doc = (await client.get("/openapi.json")).json()
    async with api_client(make_settings(redis_url, api_keys="doc-key")) as client:
        keyed_doc = (await client.get("/openapi.json")).json()
    submit_open = open_doc["paths"]["/v1/batches"]["post"]
    submit_keyed = keyed_doc["paths"]["/v1/batches"]["post"]
    assert "securitySchemes" not in open_doc["components"]
    assert "security" not in submit_open
    assert "401" not in submit_open["responses"]
    assert keyed_doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert submit_keyed["security"] == [{"HTTPBearer": []}]
    assert "401" in submit_keyed["responses"]
    for doc in (open_doc, keyed_doc):
        params = doc["paths"]["/v1/batches"]["post"].get("parameters", [])
        assert "authorization" not in {p["name"].lower() for p in params}


async def test_the_documented_bodies_are_what_the_api_reads_and_streams(redis_url: str) -> None:
    async with api_client(make_settings(redis_url)) as client:
        doc = (await client.get("/openapi.json")).json()
    submit = doc["paths"]["/v1/batches"]["post"]
    content = submit["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/BatchCreate"}
    ndjson = content["application/x-ndjson"]["schema"]
    assert ndjson["items"] == {"$ref": "#/components/schemas/RequestLine"}
    assert {"BatchCreate", "RequestLine"} <= set(doc["components"]["schemas"])
    assert set(submit["responses"]) >= {"200", "202", "409", "413", "422", "429", "503"}
    events = doc["paths"]["/v1/batches/{batch_id}/events"]["get"]["responses"]["200"]
    event = events["content"]["text/event-stream"]["schema"]
    assert event["properties"]["event"]["enum"] == ["batch", "items"]


class _DropFirst(ThreadedProxy):
    """A proxy in front of Redis that drops the connection carrying the first command that
    adds a batch to an owner's active set, as a network blip would."""

    def __init__(self, redis_url: str) -> None:
        target = httpx.URL(redis_url)
        super().__init__(target.host, target.port or 6379)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dropped = 0

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if not self.dropped and b"SADD\r\n" in chunk and b"}:active" in chunk:
                    self.dropped += 1
                    return  # the connection ends here, the command unsent
                writer.write(chunk)
                await writer.drain()


@pytest.fixture
def flaky_redis_url(redis_url: str) -> Iterator[tuple[str, _DropFirst]]:
    with _DropFirst(redis_url) as proxy:
        yield proxy.url, proxy


async def test_a_lost_write_never_lets_a_batch_escape_the_queued_prompts_ceiling(
    flaky_redis_url: tuple[str, _DropFirst], redis_url: str
) -> None:
    url, proxy = flaky_redis_url
    settings = make_settings(url, max_queued_prompts=3, api_keys="ceiling-key")
    async with api_client(settings) as client:
        client.headers["Authorization"] = "Bearer ceiling-key"
        body = {"prompts": ["a", "b"]}
        first = await client.post("/v1/batches", json=body, headers={"Idempotency-Key": "k1"})
        if first.status_code == 503:  # the blip reached the client: it retries, same key
            first = await client.post("/v1/batches", json=body, headers={"Idempotency-Key": "k1"})
        second = await client.post("/v1/batches", json=body, headers={"Idempotency-Key": "k2"})
    assert proxy.dropped == 1
    assert first.status_code == 202, first.text
    assert second.status_code == 429, second.text  # 2 + 2 prompts > the ceiling of 3
    # It counts for good, not only while its reservation (a minute) lasts.
    with sync_redis.Redis.from_url(redis_url) as r:
        active = r.smembers(keys.active_batches(owner_id("ceiling-key")))
    assert first.json()["id"].encode() in active


async def test_an_api_process_never_opens_more_redis_connections_than_its_pool_allows(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, redis_max_connections=4)
    async with api_client(settings) as client:
        batch = await _submit(client)
        reads = [client.get(f"/v1/batches/{batch['id']}") for _ in range(40)]
        answers = await asyncio.gather(*reads)
        with sync_redis.Redis.from_url(redis_url) as r:
            opened = [c for c in r.client_list() if c.get("name") == "promptbatch-api"]
    assert {a.status_code for a in answers} == {200}  # they waited their turn, none refused
    assert 1 <= len(opened) <= 4
