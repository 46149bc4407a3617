"""The API's events hub against a real Redis, with progress written as a worker writes it
(no worker process: the test records items itself, so it decides when the batch ends)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from sse_starlette import ServerSentEvent

from api import hub as events
from api.hub import MAX_PENDING, EventHub, Update, _Mailbox
from shared import keys
from shared.progress import ProgressEvent
from shared.results import ItemOutcome
from shared.settings import Settings
from shared.store import BatchStore
from tests.conftest import api_client
from tests.helpers import parse_sse, wait_for
from tests.store.conftest import item, stored

#: Longest a test waits for a stream to end; a stream that never ends fails the test.
STREAM_END_S = 30


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[BatchStore]:
    redis = Redis.from_url(redis_url)
    yield BatchStore(redis)
    await redis.aclose()


async def _reader_waiting(store: BatchStore) -> bool:
    return int((await store.redis.info("clients"))["blocked_clients"]) >= 1


async def _complete(store: BatchStore, batch_id: str, n: int) -> None:
    spec = await store.spec(batch_id)
    assert spec is not None
    for index in range(n):
        await store.record(spec, item(index), ItemOutcome(status="succeeded", output="done"))


async def test_a_last_event_id_from_the_future_still_ends_with_the_final_state(
    settings: Settings, store: BatchStore
) -> None:
    async with api_client(settings) as client:
        batch_id = (await client.post("/v1/batches", json={"prompts": ["a", "b"]})).json()["id"]
        future = {"Last-Event-ID": "99999999999999-0"}
        watching = asyncio.create_task(client.get(f"/v1/batches/{batch_id}/events", headers=future))
        await wait_for(lambda: _reader_waiting(store), what="the API's reader to wait on Redis")
        await _complete(store, batch_id, 2)
        response = await asyncio.wait_for(watching, STREAM_END_S)
    events = parse_sse(response.text)
    assert events[-1][0] == "batch"
    assert events[-1][2]["status"] == "completed"
    items = [i["index"] for kind, _, d in events if kind == "items" for i in d["data"]]
    assert sorted(items) == [0, 1]  # resumed from now: every item after the stream opened


async def test_a_failed_reader_ends_its_streams_instead_of_leaving_them_silent(
    settings: Settings, store: BatchStore, caplog: pytest.LogCaptureFixture
) -> None:
    async with api_client(settings) as client:
        batch_id = (await client.post("/v1/batches", json={"prompts": ["a"]})).json()["id"]
        watching = asyncio.create_task(client.get(f"/v1/batches/{batch_id}/events"))
        await wait_for(lambda: _reader_waiting(store), what="the API's reader to wait on Redis")
        # A batch the reader cannot read (here: a status no version of the API writes) stands
        # in for any unexpected failure of the reader.
        await store.redis.hset(keys.batch(batch_id), "status", "mangled")  # type: ignore[misc]
        with caplog.at_level(logging.ERROR, logger="promptbatch.api"):
            response = await asyncio.wait_for(watching, STREAM_END_S)
    events = parse_sse(response.text)
    assert [kind for kind, _, _ in events] == ["batch"]  # the stream ended; the client reconnects
    assert f"events reader of batch {batch_id} failed" in caplog.text


def test_a_watcher_that_falls_behind_holds_a_bounded_number_of_events() -> None:
    mailbox = _Mailbox()
    for update in range(3):  # the reader passes on 3 updates of 600 events; nobody takes them
        mailbox.put(Update([_item(update * 600 + i) for i in range(600)], batch=None))
        assert len(mailbox.events) <= MAX_PENDING
    assert (mailbox.events, mailbox.dropped_upto) == ([], "1799-0")  # to be read from Redis


async def test_a_watcher_that_fell_behind_still_gets_every_item_once(
    store: BatchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_PENDING", 5)
    spec = await stored(store, 40)
    hub = EventHub(store, block_ms=100)
    stream = await hub.stream(spec.id, None)
    assert (await anext(stream)).event == "batch"  # the current state
    # The watcher joins the reader, then stalls.
    following: asyncio.Future[ServerSentEvent] = asyncio.ensure_future(anext(stream))
    await store.record(spec, item(0), ItemOutcome(status="succeeded", output="done"))
    assert (await following).event == "items"
    for index in range(1, 40):  # the rest arrive while the watcher takes nothing
        await store.record(spec, item(index), ItemOutcome(status="succeeded", output="done"))
    await wait_for(lambda: _true(spec.id not in hub._readers), what="the reader to finish")
    rest = [event async for event in stream]
    indices = [i["index"] for e in rest if e.event == "items" for i in _data(e)["data"]]
    assert indices == list(range(1, 40))
    assert _data(rest[-1])["status"] == "completed"


def _data(event: ServerSentEvent) -> Any:
    return json.loads(str(event.data))


def _item(n: int) -> ProgressEvent:
    return ProgressEvent(f"{n}-0", "item", "succeeded", n, str(n))


async def _true(value: bool) -> bool:
    return value


async def test_a_replay_from_the_start_says_when_each_item_finished(
    settings: Settings, store: BatchStore
) -> None:
    async with api_client(settings) as client:
        began_ms = time.time() * 1000
        batch_id = (await client.post("/v1/batches", json={"prompts": ["a", "b", "c"]})).json()[
            "id"
        ]
        await _complete(store, batch_id, 3)
        ended_ms = time.time() * 1000
        start = {"Last-Event-ID": "0-0"}  # the whole history, as the dashboard's chart reads it
        response = await client.get(f"/v1/batches/{batch_id}/events", headers=start)
    items = [i for kind, _, d in parse_sse(response.text) if kind == "items" for i in d["data"]]
    assert sorted(i["index"] for i in items) == [0, 1, 2]
    for entry in items:
        assert began_ms - 1000 <= entry["finished_at_ms"] <= ended_ms + 1000
