"""Provider pacing on a real Redis: the shared buckets space calls evenly, a 429 slows every
worker, learned limits pace everyone, and with no limit nothing touches Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared import keys
from worker.pacing import BURST_MS, Pacer, ProviderSaid, duration_ms

MODEL = "gpt-test"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def turns(pacer: Pacer, count: int, tokens: int = 1) -> list[float]:
    return [await pacer.turn(MODEL, tokens) for _ in range(count)]


def near(got: list[float], want: list[float], slack_s: float = 0.03) -> bool:
    """The schedule, allowing for the milliseconds the calls themselves take."""
    pairs = zip(got, want, strict=False)
    return len(got) == len(want) and all(w - slack_s <= g <= w + 0.001 for g, w in pairs)


async def test_a_configured_rpm_lets_a_burst_through_then_spaces_calls_evenly(
    redis: Redis,
) -> None:
    pacer = Pacer(redis, rpm=600, tpm=0)  # 10 a second: a burst of 10, then one each 0.1 s
    burst = BURST_MS * 600 // 60_000
    got = await turns(pacer, burst + 5)
    assert near(got, [0.0] * burst + [0.1 * n for n in range(1, 6)]), got


async def test_two_workers_share_one_budget(redis: Redis) -> None:
    first, second = Pacer(redis, rpm=600, tpm=0), Pacer(redis, rpm=600, tpm=0)
    await turns(first, 10)  # the burst, all taken by the first worker
    got = [await p.turn(MODEL, 1) for p in (second, first, second)]
    assert near(got, [0.1, 0.2, 0.3]), got


async def test_tokens_per_minute_space_calls_by_their_size_and_settle_corrects_them(
    redis: Redis,
) -> None:
    pacer = Pacer(redis, rpm=0, tpm=60_000)  # 1,000 tokens a second, a burst of 1,000
    got = await turns(pacer, 3, tokens=500)
    assert near(got, [0.0, 0.0, 0.5]), got
    await pacer.settle(MODEL, reserved=500, used=100)  # the last one used 400 fewer
    assert near([await pacer.turn(MODEL, 500)], [0.6]), "400 tokens refunded: 1.0 s -> 0.6 s"


async def test_a_429_makes_every_worker_wait_and_halves_the_rate(redis: Redis) -> None:
    hit, other = Pacer(redis, rpm=600, tpm=0), Pacer(redis, rpm=600, tpm=0)
    await hit.observe(MODEL, ProviderSaid(retry_ms=2000))
    got = await turns(other, 12)
    # Nobody before 2 s; then the burst at the halved rate (5 a second, 5 at once), 0.2 s apart.
    assert near(got, [2.0] * 5 + [2.0 + 0.2 * n for n in range(1, 8)], slack_s=0.05), got


async def test_limits_learned_from_one_workers_headers_pace_the_others(redis: Redis) -> None:
    learner, other = Pacer(redis, rpm=0, tpm=0), Pacer(redis, rpm=0, tpm=0)
    said = ProviderSaid.of(200, {"x-ratelimit-limit-requests": "600"})
    assert said == ProviderSaid(rpm=600)
    await learner.observe(MODEL, said)
    assert await other.paces(MODEL)  # it looks at most once a second, and this is its first
    got = await turns(other, 12)
    assert near(got, [0.0] * 10 + [0.1, 0.2]), got


async def test_with_no_limit_and_nothing_learned_nothing_is_paced_or_stored(
    redis: Redis,
) -> None:
    pacer = Pacer(redis, rpm=0, tpm=0)
    assert ProviderSaid.of(200, {"content-type": "application/json"}) is None
    assert [await pacer.reserve(MODEL, 100) for _ in range(50)] == [0.0] * 50
    assert await redis.exists(keys.pacing(MODEL)) == 0


def test_what_a_429_asks_for_is_read_from_any_of_its_headers() -> None:
    assert ProviderSaid.of(429, {"retry-after-ms": "250"}) == ProviderSaid(retry_ms=250)
    assert ProviderSaid.of(429, {"retry-after": "2"}) == ProviderSaid(retry_ms=2000)
    assert ProviderSaid.of(429, {"x-ratelimit-reset-requests": "1m1.5s"}) == ProviderSaid(
        retry_ms=61_500
    )
    assert [duration_ms(t) for t in ("6m0s", "120ms", "1.5s", "soon")] == [
        360_000, 120, 1500, None,
    ]  # fmt: skip
