"""`Batch.results()` reads NDJSON off the socket as it iterates: 10,000 results through a real
API process and worker, never held in memory together."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator

import httpx
import pytest

from promptbatch import Client
from tests.helpers import Proc
from worker.llm import OFFLINE_PREFIX

pytestmark = pytest.mark.integration

COUNT = 10_000
PAD = " ".join(["pad"] * 120)  # ~500 characters a prompt, so the whole stream is several megabytes


class CountingTransport(httpx.HTTPTransport):
    """Counts the response body bytes read off the connection so far."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_read = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code, headers=response.headers, extensions=response.extensions,
            stream=_Counted(response.stream, self),
        )  # fmt: skip


class _Counted(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, owner: CountingTransport) -> None:
        self.inner, self.owner = inner, owner

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.owner.bytes_read += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


def prompt(i: int) -> str:
    return f"question {i} {PAD}"


def test_results_iterates_10000_items_without_holding_them(
    live_api: Callable[..., str], workers: Callable[..., Proc]
) -> None:
    workers()
    transport = CountingTransport()
    http = httpx.Client(base_url=live_api(), transport=transport, timeout=60)
    with Client(http=http) as pb:
        batch = pb.submit((prompt(i) for i in range(COUNT)), max_concurrency=64).wait()
        assert batch.info.request_counts.succeeded == COUNT

        transport.bytes_read = 0
        results = batch.results()
        tracemalloc.start()
        try:
            first = next(results)
            read_at_first = transport.bytes_read
            seen = 1
            for item in results:
                assert item.index == seen
                assert item.output == f"{OFFLINE_PREFIX}{prompt(seen)}"
                seen += 1
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        total = transport.bytes_read

    assert (first.index, first.output) == (0, f"{OFFLINE_PREFIX}{prompt(0)}")
    assert seen == COUNT
    assert total > 5_000_000
    # The first item was handed out when a small part of the stream had been read...
    assert read_at_first < total / 10
    # ...and iterating all of them never held more than a fraction of the stream.
    assert peak < total / 3
