"""Bounds that keep one client from stalling the API or taking its connections, against a real
uvicorn process, a real worker and the test Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.helpers import Proc, wait_for, wait_until
from tests.live import live_api

pytestmark = pytest.mark.integration

__all__ = ["live_api"]


class HealthPoller:
    """Asks `/healthz` over and over from a thread of its own while the test does something
    else, and keeps how long each answer took (reported, never asserted: no timing in tests)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[tuple[float, float]] = []  # (started, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        wait_until(lambda: len(self.latencies) >= 3, what="the first /healthz answers")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                self.latencies.append((started, time.monotonic() - started))

    def answered_between(self, start: float, end: float) -> int:
        return sum(
            1 for started, took in self.latencies if start <= started and started + took <= end
        )

    def worst_ms(self, start: float, end: float) -> float:
        return 1000 * max(
            (
                took
                for started, took in self.latencies
                if started <= end and started + took >= start
            ),
            default=0.0,
        )


def _ndjson_lines(count: int) -> bytes:
    line = {
        "custom_id": "",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "x" * 5}]},
    }
    return b"".join(
        json.dumps({**line, "custom_id": f"r{n}"}).encode() + b"\n" for n in range(count)
    )


@pytest.mark.parametrize(
    ("what", "content_type", "body"),
    [
        # The first item is wrong in both: refused for its size, the body was counted before
        # any of it was validated.
        ("400,000-line NDJSON", "application/x-ndjson",
         lambda: b"not json\n" + _ndjson_lines(400_000 - 1)),
        ("1,000,000-prompt JSON", "application/json",
         lambda: json.dumps({"prompts": [{"bad": 1}] + ["p"] * 999_999}).encode()),
    ],
)  # fmt: skip
def test_a_huge_body_is_counted_before_it_is_validated_and_the_api_keeps_answering(
    live_api: Callable[..., str],
    what: str,
    content_type: str,
    body: Callable[[], bytes],
    record_property: Callable[[str, object], None],
) -> None:
    url = live_api()
    payload = body()
    with HealthPoller(url) as poller, httpx.Client(base_url=url, timeout=120) as client:
        start = time.monotonic()
        response = client.post(
            "/v1/batches", content=payload, headers={"Content-Type": content_type}
        )
        end = time.monotonic()
    assert response.status_code == 422, response.text
    assert "at most 50000 prompts" in response.json()["error"]["message"]
    # The API went on answering while it read and refused the body (not only before and after).
    assert poller.answered_between(start, end) >= 1
    worst = poller.worst_ms(start, end)
    record_property("worst_healthz_ms", round(worst, 1))
    print(f"{what}: {len(payload) / 1e6:.1f} MB refused in {1000 * (end - start):.0f} ms; "
          f"worst /healthz {worst:.0f} ms")  # fmt: skip


def test_150_streams_from_one_key_at_most_100_open_and_a_batch_completes_meanwhile(
    live_api: Callable[..., str], workers: Callable[..., Proc]
) -> None:
    workers(PROMPTBATCH_OFFLINE_LATENCY_MS="50")
    url = live_api(PROMPTBATCH_API_KEYS="stream-key")
    auth = {"Authorization": "Bearer stream-key"}
    statuses: list[int] = []
    retry_after: set[str] = set()

    async def scenario() -> dict[str, object]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=url, headers=auth, timeout=60, limits=limits
        ) as client:
            slow = (
                await client.post(
                    "/v1/batches", json={"prompts": ["s"] * 400, "max_concurrency": 1}
                )
            ).json()
            opened = asyncio.Event()
            release = asyncio.Event()

            async def watch() -> None:
                async with client.stream("GET", f"/v1/batches/{slow['id']}/events") as response:
                    statuses.append(response.status_code)
                    if response.status_code == 429:
                        retry_after.add(response.headers.get("Retry-After", ""))
                    if len(statuses) == 150:
                        opened.set()
                    if response.status_code == 200:
                        await release.wait()

            watchers = [asyncio.create_task(watch()) for _ in range(150)]
            await opened.wait()
            quick = (await client.post("/v1/batches", json={"prompts": ["q1", "q2", "q3"]})).json()

            async def completed() -> dict[str, object] | None:
                batch = (await client.get(f"/v1/batches/{quick['id']}")).json()
                return dict(batch) if batch["status"] == "completed" else None

            done = await wait_for(completed, what="the batch submitted meanwhile to complete")
            assert done is not None
            release.set()
            await asyncio.gather(*watchers)
            await client.post(f"/v1/batches/{slow['id']}/cancel")
            return done

    done = asyncio.run(scenario())
    assert statuses.count(200) == 100
    assert statuses.count(429) == 50
    assert retry_after == {"5"}
    assert done["request_counts"] == {
        "total": 3,
        "succeeded": 3,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
        "pending": 0,
    }
