"""Provider pacing on a real Redis: the shared buckets space calls evenly, a 429 slows every
worker, learned limits pace everyone, and with no limit nothing touches Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from shared import keys
from worker.pacing import BURST_MS, HEADROOM, LEARNED_MS, Pacer, ProviderSaid, duration_ms

MODEL = "gpt-test"


async def turns(pacer: Pacer, count: int, tokens: int = 1) -> list[float]:
    return [await pacer.turn(MODEL, tokens) for _ in range(count)]


def schedule(count: int, per_minute: float, cost: float = 1, after_s: float = 0.0) -> list[float]:
    """When each of `count` calls of `cost` may start, by the buckets' rule: evenly at the
    limit (less the headroom), after a burst of BURST_MS at that rate."""
    each = cost * 60 / (per_minute * HEADROOM)
    burst = max(BURST_MS / 1000, each)
    return [after_s + max(0.0, (n + 1) * each - burst) for n in range(count)]


def near(got: list[float], want: list[float], slack_s: float = 0.03) -> bool:
    """The schedule, allowing for the milliseconds the calls themselves take."""
    pairs = zip(got, want, strict=False)
    return len(got) == len(want) and all(w - slack_s <= g <= w + 0.001 for g, w in pairs)


async def test_a_configured_rpm_lets_a_burst_through_then_spaces_calls_evenly(
    redis: Redis,
) -> None:
    got = await turns(Pacer(redis, rpm=600, tpm=0), 12)
    assert got[0] == 0.0
    assert got[-1] > 0.5  # 12 calls at 10 a second cannot all start at once
    assert near(got, schedule(12, 600)), got


async def test_two_workers_share_one_budget(redis: Redis) -> None:
    first, second = Pacer(redis, rpm=600, tpm=0), Pacer(redis, rpm=600, tpm=0)
    got = [await p.turn(MODEL, 1) for p in (first, second) * 5]
    assert near(got, schedule(10, 600)), got


async def test_tokens_per_minute_space_calls_by_their_size_and_settle_corrects_them(
    redis: Redis,
) -> None:
    pacer = Pacer(redis, rpm=0, tpm=60_000)  # 1,000 tokens a second
    got = await turns(pacer, 3, tokens=500)
    assert near(got, schedule(3, 60_000, cost=500)), got
    pacer.settle(MODEL, reserved=500, used=100)  # the last one used 400 fewer
    await pacer.drain()
    refunded = schedule(4, 60_000, cost=500)[-1] - 400 * 60 / (60_000 * HEADROOM)
    assert near([await pacer.turn(MODEL, 500)], [refunded])


async def test_a_429_makes_every_worker_wait_and_halves_a_rate_that_was_paced(
    redis: Redis,
) -> None:
    hit, other = Pacer(redis, rpm=600, tpm=0), Pacer(redis, rpm=600, tpm=0)
    hit.observe(MODEL, ProviderSaid(retry_ms=2000))
    await hit.drain()
    got = await turns(other, 8)
    # Nobody before 2 s, then the halved rate.
    assert near(got, schedule(8, 300, after_s=2.0), slack_s=0.05), got


async def test_a_429_before_any_limit_was_known_waits_without_halving(redis: Redis) -> None:
    hit = Pacer(redis, rpm=0, tpm=0)
    hit.observe(MODEL, ProviderSaid(rpm=600, retry_ms=1000))  # the first burst's 429
    await hit.drain()
    got = await turns(hit, 8)
    assert near(got, schedule(8, 600, after_s=1.0), slack_s=0.05), got


async def test_limits_learned_from_one_workers_headers_pace_the_others(redis: Redis) -> None:
    learner, other = Pacer(redis, rpm=0, tpm=0), Pacer(redis, rpm=0, tpm=0)
    said = ProviderSaid.of(200, {"x-ratelimit-limit-requests": "600"})
    assert said == ProviderSaid(rpm=600)
    learner.observe(MODEL, said)
    await learner.drain()
    assert not other.paces(MODEL)  # not yet: it looks in the background (once a second)
    await other.drain()
    assert other.paces(MODEL)
    got = await turns(other, 12)
    assert near(got, schedule(12, 600)), got


async def test_until_the_provider_first_answers_one_call_goes_at_a_time(redis: Redis) -> None:
    pacer = Pacer(redis, rpm=0, tpm=0)
    await pacer.first_answer(MODEL)  # the probe goes at once
    waiting = asyncio.ensure_future(pacer.first_answer(MODEL))
    await asyncio.sleep(0)
    assert not waiting.done()
    pacer.answered(MODEL)
    await waiting
    await pacer.first_answer(MODEL)  # from now on nobody waits for that


async def test_with_no_limit_and_nothing_learned_nothing_is_paced_or_stored(
    redis: Redis,
) -> None:
    pacer = Pacer(redis, rpm=0, tpm=0)
    assert ProviderSaid.of(200, {"content-type": "application/json"}) is None
    pacer.answered(MODEL)  # the provider answered (and said nothing of limits)
    waited = [await pacer.reserve(MODEL, 100) for _ in range(50)]
    await pacer.drain()
    assert max(waited) < 0.01
    assert not pacer.paces(MODEL)
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


async def test_limits_this_worker_heard_pace_it_even_if_redis_lost_them(redis: Redis) -> None:
    pacer = Pacer(redis, rpm=0, tpm=0)
    pacer.observe(MODEL, ProviderSaid(rpm=600))
    await pacer.drain()
    await redis.delete(keys.pacing(MODEL))  # expired after an idle hour, or Redis restarted
    got = await turns(pacer, 12)
    assert near(got, schedule(12, 600)), got


async def test_a_429_ends_the_probe_so_no_call_waits_on_it_for_ever(redis: Redis) -> None:
    pacer = Pacer(redis, rpm=0, tpm=0)
    await pacer.first_answer(MODEL)  # the probe, answered 429:
    pacer.observe(MODEL, ProviderSaid(retry_ms=10))
    pacer.answered(MODEL)
    await asyncio.wait_for(pacer.reserve(MODEL, 1), 5)  # the probe's retry, and the others
    await asyncio.wait_for(pacer.reserve(MODEL, 1), 5)


async def test_when_redis_does_not_answer_calls_go_unpaced(redis_url: str) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    pacer = Pacer(dead, rpm=600, tpm=0)
    assert await asyncio.wait_for(pacer.turn(MODEL, 1), 5) == 0.0
    await dead.aclose()


async def test_learned_limits_lapse_when_no_provider_states_them_any_more(redis: Redis) -> None:
    learner, other = Pacer(redis, rpm=0, tpm=0), Pacer(redis, rpm=0, tpm=0)
    learner.observe(MODEL, ProviderSaid(rpm=600))
    await learner.drain()
    seconds, micros = await redis.time()
    stated_long_ago = seconds * 1000 + micros // 1000 - LEARNED_MS - 1000
    await redis.hset(keys.pacing(MODEL), "ls", stated_long_ago)  # type: ignore[misc]
    assert await turns(other, 12) == [0.0] * 12  # nobody heard them lately: no longer paced


def test_anthropics_limit_headers_and_its_overloaded_answer_are_heard() -> None:
    said = ProviderSaid.of(200, {
        "anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-requests-reset": "2026-12-04T10:00:00Z",
    })  # fmt: skip
    assert said == ProviderSaid(rpm=50, tpm=40000)
    assert ProviderSaid.of(529, {"retry-after": "3"}) == ProviderSaid(retry_ms=3000.0)
    assert ProviderSaid.of(200, {"anthropic-version": "2023-06-01"}) is None
