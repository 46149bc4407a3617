"""The events-stream consumer against a tiny Starlette app that speaks the contract of
`GET /v1/batches/{id}/events`: `batch` events (the first the current state, the last a final
one), `items` events, ids for `Last-Event-ID`, and `: ping` keep-alives. The sync consumer reads
it through httpx.ASGITransport too, one request at a time on a loop of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from promptbatch.errors import APIConnectionError, APIError
from promptbatch.events import abatch_events, awatch, batch_events, watch
from shared.schemas import Batch
from tests.client.snapshots import SNAPSHOT_ID, snapshot

BATCH_ID = SNAPSHOT_ID
Mode = Literal["sync", "async"]


def batch_event(event_id: int, batch: Batch) -> str:
    return f"id: {event_id}\nevent: batch\ndata: {batch.model_dump_json()}\n\n"


def items_event(event_id: int, *indices: int) -> str:
    data = ",".join(f'{{"index": {i}, "custom_id": "{i}", "status": "succeeded"}}' for i in indices)
    return f'id: {event_id}\nevent: items\ndata: {{"data": [{data}]}}\n\n'


PING = ": ping\n\n"

#: A whole stream as the contract describes it, final state last.
FULL = [
    PING,
    batch_event(1, snapshot("queued", 0)),
    items_event(2, 0, 1),
    batch_event(3, snapshot("in_progress", 2)),
    PING,
    items_event(4, 2),
    batch_event(5, snapshot("completed", 3, failed=1)),
]


@dataclass
class EventsServer:
    """Serves one scripted stream per connection; records each connection's Last-Event-ID."""

    streams: list[list[str]]
    last_event_ids: list[str | None] = field(default_factory=list)

    async def events(self, request: Request) -> Response:
        self.last_event_ids.append(request.headers.get("last-event-id"))
        chunks = self.streams[len(self.last_event_ids) - 1]

        async def body() -> AsyncIterator[str]:
            for chunk in chunks:
                yield chunk

        return StreamingResponse(body(), media_type="text/event-stream")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/batches/{batch_id}/events", self.events)])


class SyncASGITransport(httpx.BaseTransport):
    """httpx.ASGITransport for a blocking `httpx.Client`: each request runs on a new loop."""

    def __init__(self, app: Starlette) -> None:
        self.asgi = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            response = await self.asgi.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return asyncio.run(send())


def sync_client(app: Starlette) -> httpx.Client:
    return httpx.Client(transport=SyncASGITransport(app), base_url="http://test")


def consume(mode: Mode, app: Starlette, poll_s: float = 0.0) -> list[Batch]:
    """Every snapshot `watch` (sync) or `awatch` (async) yields for the app's batch."""
    if mode == "sync":
        with sync_client(app) as http:
            return list(watch(http, BATCH_ID, poll_s))

    async def run() -> list[Batch]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return [batch async for batch in awatch(http, BATCH_ID, poll_s)]

    return asyncio.run(run())


def statuses(batches: list[Batch]) -> list[tuple[str, int]]:
    return [(b.status, b.request_counts.total - b.request_counts.pending) for b in batches]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_one_connection_yields_each_event_with_its_id_and_batch(mode: Mode) -> None:
    app = EventsServer([FULL]).app()
    if mode == "sync":
        with sync_client(app) as http:
            got = list(batch_events(http, BATCH_ID))
    else:

        async def run() -> list[tuple[str, Batch | None]]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return [pair async for pair in abatch_events(http, BATCH_ID)]

        got = asyncio.run(run())
    assert [event_id for event_id, _ in got] == ["1", "2", "3", "4", "5"]
    batches = [batch for _, batch in got if batch is not None]
    assert [event_id for event_id, batch in got if batch is None] == ["2", "4"]
    assert statuses(batches) == [("queued", 0), ("in_progress", 2), ("completed", 3)]
    assert batches[-1].request_counts.failed == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_watch_follows_the_stream_to_the_final_state(mode: Mode) -> None:
    server = EventsServer([FULL])
    got = consume(mode, server.app())
    assert statuses(got) == [("queued", 0), ("in_progress", 2), ("completed", 3)]
    assert server.last_event_ids == [None]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_watch_stops_at_the_final_event_even_if_the_stream_goes_on(mode: Mode) -> None:
    server = EventsServer([[*FULL, batch_event(6, snapshot("completed", 3))]])
    got = consume(mode, server.app())
    assert statuses(got) == [("queued", 0), ("in_progress", 2), ("completed", 3)]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_that_ends_early_is_resumed_with_last_event_id(mode: Mode) -> None:
    first = [batch_event(1, snapshot("in_progress", 1)), items_event(2, 0)]
    second = [items_event(3, 1, 2), batch_event(4, snapshot("completed", 3))]
    server = EventsServer([first, second])
    got = consume(mode, server.app())
    assert statuses(got) == [("in_progress", 1), ("completed", 3)]
    assert server.last_event_ids == [None, "2"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_that_keeps_ending_without_news_is_given_up(mode: Mode) -> None:
    server = EventsServer([[PING]] * 10)
    with pytest.raises(APIConnectionError, match="closed 5 times in a row"):
        consume(mode, server.app())
    assert len(server.last_event_ids) == 5


def polled_app(states: list[Batch]) -> tuple[Starlette, list[str]]:
    """No events route (404, as before the stream existed); each GET of the batch moves on."""
    seen: list[str] = []

    async def get_batch(request: Request) -> Response:
        seen.append(request.url.path)
        return JSONResponse(states[min(len(seen), len(states)) - 1].model_dump(mode="json"))

    return Starlette(routes=[Route("/v1/batches/{batch_id}", get_batch)]), seen


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_an_events_stream_watch_polls_the_batch(mode: Mode) -> None:
    states = [snapshot("queued", 0), snapshot("in_progress", 1), snapshot("completed", 3)]
    app, seen = polled_app(states)
    got = consume(mode, app)
    assert statuses(got) == [("queued", 0), ("in_progress", 1), ("completed", 3)]
    assert seen == [f"/v1/batches/{BATCH_ID}"] * 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_error_from_the_events_stream_is_raised_not_polled(mode: Mode) -> None:
    async def refuse(_: Request) -> Response:
        body = {"error": {"type": "unauthorized", "message": "Missing API key.", "param": None}}
        return JSONResponse(body, status_code=401)

    app = Starlette(routes=[Route("/v1/batches/{batch_id}/events", refuse)])
    with pytest.raises(APIError) as caught:
        consume(mode, app)
    assert (caught.value.status_code, caught.value.type) == (401, "unauthorized")
