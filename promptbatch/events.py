"""Following a batch until it is final: its events stream, resumed with `Last-Event-ID` when the
connection drops, or polling `GET /v1/batches/{id}` where the server has no events stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from promptbatch._requests import batch_path, is_final
from promptbatch.errors import APIConnectionError, check
from shared.schemas import Batch

#: Connections in a row that bring no new event before watching gives up.
RECONNECTS = 5
#: The server sends a keep-alive comment every few seconds; silence longer than this is a
#: dead connection.
READ_TIMEOUT_S = 60.0


class NoEventsStream(Exception):
    """The server answered 404 to the events stream: follow the batch by polling instead."""


def _headers(last_event_id: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return headers


def _timeout(http: httpx.Client | httpx.AsyncClient) -> httpx.Timeout:
    return httpx.Timeout(http.timeout.connect, read=READ_TIMEOUT_S)


def _checked(response: httpx.Response) -> None:
    if response.status_code == 404:
        raise NoEventsStream
    check(response)


# An event with no data is no event (the SSE spec), though httpx-sse hands out a comment-only
# block (`: ping`) as one once an id has been seen.


def _snapshot(sse: ServerSentEvent) -> Batch | None:
    """The batch a `batch` event carries; None for `items` events and any other kind."""
    return Batch.model_validate_json(sse.data) if sse.event == "batch" else None


def batch_events(
    http: httpx.Client, batch_id: str, last_event_id: str | None = None
) -> Iterator[tuple[str, Batch | None]]:
    """One connection to the events stream: `(event id, batch)` for each event, in order, until
    the server ends the stream; `batch` is None for events that carry no batch (`items`).
    Raises NoEventsStream when the server has none (404)."""
    path = batch_path(batch_id, "/events")
    headers, timeout = _headers(last_event_id), _timeout(http)
    with connect_sse(http, "GET", path, headers=headers, timeout=timeout) as source:
        if source.response.is_error:
            source.response.read()
            _checked(source.response)
        for sse in source.iter_sse():
            if sse.data:
                yield sse.id, _snapshot(sse)


async def abatch_events(
    http: httpx.AsyncClient, batch_id: str, last_event_id: str | None = None
) -> AsyncIterator[tuple[str, Batch | None]]:
    """`batch_events` for an `httpx.AsyncClient`."""
    path = batch_path(batch_id, "/events")
    headers, timeout = _headers(last_event_id), _timeout(http)
    async with aconnect_sse(http, "GET", path, headers=headers, timeout=timeout) as source:
        if source.response.is_error:
            await source.response.aread()
            _checked(source.response)
        async for sse in source.aiter_sse():
            if sse.data:
                yield sse.id, _snapshot(sse)


#: A stream that broke off mid-way; the watcher reconnects and resumes.
_DROPPED = (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError)


def _gave_up(batch_id: str) -> APIConnectionError:
    return APIConnectionError(
        f"the events stream of {batch_id} closed {RECONNECTS} times in a row before the batch "
        "finished"
    )


def watch(http: httpx.Client, batch_id: str, poll_s: float) -> Iterator[Batch]:
    """The batch as it progresses, ending with its final state."""
    last_id: str | None = None
    idle = 0
    while idle < RECONNECTS:
        before = last_id
        try:
            for event_id, batch in batch_events(http, batch_id, last_id):
                last_id = event_id
                if batch is None:
                    continue
                yield batch
                if is_final(batch):
                    return
        except NoEventsStream:
            yield from poll(http, batch_id, poll_s)
            return
        except _DROPPED:
            pass  # resume from the last event seen
        idle = 0 if last_id != before else idle + 1
        time.sleep(poll_s)
    raise _gave_up(batch_id)


async def awatch(http: httpx.AsyncClient, batch_id: str, poll_s: float) -> AsyncIterator[Batch]:
    """`watch` for an `httpx.AsyncClient`."""
    last_id: str | None = None
    idle = 0
    while idle < RECONNECTS:
        before = last_id
        try:
            async for event_id, batch in abatch_events(http, batch_id, last_id):
                last_id = event_id
                if batch is None:
                    continue
                yield batch
                if is_final(batch):
                    return
        except NoEventsStream:
            async for batch in apoll(http, batch_id, poll_s):
                yield batch
            return
        except _DROPPED:
            pass
        idle = 0 if last_id != before else idle + 1
        await asyncio.sleep(poll_s)
    raise _gave_up(batch_id)


def poll(http: httpx.Client, batch_id: str, poll_s: float) -> Iterator[Batch]:
    """The batch read every `poll_s` seconds until it is final."""
    while True:
        batch = Batch.model_validate_json(check(http.get(batch_path(batch_id))).content)
        yield batch
        if is_final(batch):
            return
        time.sleep(poll_s)


async def apoll(http: httpx.AsyncClient, batch_id: str, poll_s: float) -> AsyncIterator[Batch]:
    """`poll` for an `httpx.AsyncClient`."""
    while True:
        batch = Batch.model_validate_json(check(await http.get(batch_path(batch_id))).content)
        yield batch
        if is_final(batch):
            return
        await asyncio.sleep(poll_s)
