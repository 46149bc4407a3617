"""Retries that never make a second batch: `Client` and `AsyncClient` against a real API process
and Redis, through a proxy that lets the first submit reach the API (and be stored) but drops
its answer, as a connection that breaks at the worst moment does."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from promptbatch import AsyncClient, Client
from tests.helpers import DroppingProxy, ProxiedRequest

pytestmark = pytest.mark.integration

SUBMIT = ("POST", "/v1/batches")
#: Short waits between attempts, so the test does not sit out the default backoff.
BACKOFF_S = 0.01


def listed_ids(api_url: str) -> list[str]:
    """Every batch the API holds (the tests make a few at most)."""
    response = httpx.get(f"{api_url}/v1/batches", params={"limit": 100})
    response.raise_for_status()
    return [batch["id"] for batch in response.json()["data"]]


def assert_one_key_twice(submits: list[ProxiedRequest]) -> str:
    """Two attempts of one submit, carrying one non-empty Idempotency-Key; returns it."""
    assert len(submits) == 2, submits
    keys = {request.headers.get("idempotency-key") for request in submits}
    assert len(keys) == 1, keys
    (key,) = keys
    assert key
    return key


def test_a_submit_whose_answer_is_lost_is_retried_and_makes_one_batch(
    live_api: Callable[..., str],
) -> None:
    api = live_api()
    with DroppingProxy(api) as proxy, Client(proxy.url, retry_backoff_s=BACKOFF_S) as pb:
        batch = pb.submit(["lost answer, one batch"], metadata={"via": "proxy"})
        submits = proxy.seen(*SUBMIT)

    assert batch.info.metadata == {"via": "proxy"}
    assert listed_ids(api) == [batch.id]
    assert proxy.dropped.is_set()
    assert_one_key_twice(submits)


async def test_the_async_client_retries_a_lost_answer_into_one_batch(
    live_api: Callable[..., str],
) -> None:
    api = live_api()
    with DroppingProxy(api) as proxy:
        async with AsyncClient(proxy.url, retry_backoff_s=BACKOFF_S) as pb:
            batch = await pb.submit(["lost answer, async"], max_concurrency=2)
        submits = proxy.seen(*SUBMIT)

    assert batch.info.request_counts.total == 1
    assert listed_ids(api) == [batch.id]
    assert proxy.dropped.is_set()
    assert_one_key_twice(submits)


def test_a_key_of_the_callers_is_sent_on_every_attempt_and_gives_the_same_batch_again(
    live_api: Callable[..., str],
) -> None:
    api = live_api()
    with DroppingProxy(api) as proxy, Client(proxy.url, retry_backoff_s=BACKOFF_S) as pb:
        first = pb.submit(["nightly"], idempotency_key="nightly-2026-11-25")
        again = pb.submit(["nightly"], idempotency_key="nightly-2026-11-25")
        other = pb.submit(["nightly"])

        submits = proxy.seen(*SUBMIT)

    assert again.id == first.id
    assert other.id != first.id
    assert sorted(listed_ids(api)) == sorted([first.id, other.id])
    assert assert_one_key_twice(submits[:2]) == "nightly-2026-11-25"
    assert submits[2].headers["idempotency-key"] == "nightly-2026-11-25"
    assert submits[3].headers["idempotency-key"] != "nightly-2026-11-25"
