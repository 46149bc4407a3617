"""Pacing to a provider's limits, end to end: two real workers against the mock enforcing
requests or tokens per minute over HTTP (429s with Retry-After and x-ratelimit-* headers, as
OpenAI answers). Every item succeeds; 429s stay rare, configured or learned."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import api_client, make_settings
from tests.helpers import MockProvider, Proc, SlowRedisWrites
from tests.integration.flows import all_results, openai_settings, openai_worker, submit, wait_final

pytestmark = pytest.mark.integration


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Callable[..., MockProvider]]:
    """A mock of the test's own that enforces the limits given (stopped after the test)."""
    started: list[MockProvider] = []

    def start(**limits: Any) -> MockProvider:
        started.append(MockProvider(tmp_path, latency_ms=20, **limits))
        return started[-1]

    yield start
    for mock in started:
        mock.stop()


async def run_paced(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc], count: int,
    env: dict[str, str], **body: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    for _ in range(2):
        openai_worker(workers, mock, **env)
    prompts = [f"prompt {i}: name a colour" for i in range(count)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=32, **body)
        done = await wait_final(client, batch["id"], timeout_s=100)
        items = await all_results(client, batch["id"])
        metrics = (await client.get("/metrics")).text
    stats = mock.stats()
    return done, items, stats | {"metrics": metrics}


def share_429(stats: dict[str, Any]) -> float:
    return int(stats["rate_limited"]) / int(stats["calls"])


@pytest.mark.parametrize(
    ("limits", "env", "most_429s"),
    [
        ({"rpm": 1200}, {"PROMPTBATCH_RPM_LIMIT": "1200"}, 0.03),
        ({"rpm": 1200}, {}, 0.10),
    ],
    ids=["configured", "learned-from-headers"],
)
async def test_two_workers_keep_to_a_requests_per_minute_limit(
    redis_url: str, workers: Callable[..., Proc], limited: Callable[..., MockProvider],
    limits: dict[str, int], env: dict[str, str], most_429s: float,
) -> None:  # fmt: skip
    mock = limited(**limits)
    done, items, stats = await run_paced(redis_url, mock, workers, 200, env)
    assert done["status"] == "completed"
    assert [i["status"] for i in items] == ["succeeded"] * 200
    assert share_429(stats) < most_429s, stats
    # 200 calls at 20 a second, 32 at a time: most waited their turn, seconds each.
    assert done["pacing"]["wait_s"] > 50
    assert done["pacing"]["provider_429s"] == stats["rate_limited"]


@pytest.mark.parametrize(
    ("limits", "env", "most_429s"),
    [
        ({"tpm": 12_000}, {"PROMPTBATCH_TPM_LIMIT": "12000"}, 0.03),
        ({"tpm": 12_000}, {}, 0.10),
    ],
    ids=["configured", "learned-from-headers"],
)
async def test_two_workers_keep_to_a_tokens_per_minute_limit(
    redis_url: str, workers: Callable[..., Proc], limited: Callable[..., MockProvider],
    limits: dict[str, int], env: dict[str, str], most_429s: float,
) -> None:  # fmt: skip
    mock = limited(**limits)
    # About 25 tokens a call (its words and max_tokens): 80 calls are 2,000 tokens, 10 s.
    done, items, stats = await run_paced(
        redis_url, mock, workers, 80, env, params={"max_tokens": 20}
    )
    assert done["status"] == "completed"
    assert [i["status"] for i in items] == ["succeeded"] * 80
    assert done["pacing"]["wait_s"] > 20  # 80 calls in 10 s, 32 at a time: they waited
    assert share_429(stats) < most_429s, stats


async def test_429s_without_any_header_are_waited_out_never_failed(
    redis_url: str, workers: Callable[..., Proc], limited: Callable[..., MockProvider]
) -> None:
    mock = limited(rpm=1200)
    mock.set_limits(headers=False)  # only Retry-After: nothing to learn a rate from
    done, items, stats = await run_paced(redis_url, mock, workers, 150, {})
    assert done["status"] == "completed"
    assert [i["status"] for i in items] == ["succeeded"] * 150
    assert stats["rate_limited"] > 0  # the provider did say "later", and nobody failed for it
    assert done["pacing"]["provider_429s"] == stats["rate_limited"]
    assert f"promptbatch_provider_rate_limited_total {stats['rate_limited']}.0" in stats["metrics"]


async def test_a_token_budget_stops_the_batch_within_it_plus_the_calls_in_flight(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    for _ in range(2):
        openai_worker(workers, mock)
    concurrency = 8
    # Each call is 9 tokens: 3 words of prompt, 6 of reply ("mock reply to: p 1 [[...]]").
    prompts = [f"p {i} [[latency=30]]" for i in range(300)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(
            client, prompts=prompts, max_concurrency=concurrency, max_total_tokens=450
        )
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])

    assert (done["status"], done["error"]["type"]) == ("cancelled", "budget_exceeded")
    assert done["max_total_tokens"] == 450
    used = done["usage"]["total_tokens"]
    assert 450 <= used <= 450 + concurrency * 9  # the budget, plus what was in flight
    counts = done["request_counts"]
    assert counts["succeeded"] == used // 9
    assert counts["succeeded"] + counts["cancelled"] == 300
    cancelled = [i for i in items if i["status"] == "cancelled"]
    assert {i["error"]["type"] for i in cancelled} == {"budget_exceeded"}
    assert mock.stats()["calls"] == counts["succeeded"]  # nothing started that was not kept


@pytest.mark.parametrize("writes", ["plain", "slow"])
async def test_at_concurrency_one_a_budget_is_overshot_by_at_most_the_call_that_crossed_it(
    redis_url: str, workers: Callable[..., Proc], writes: str
) -> None:
    # The offline model: replies come at once, so a call's result is still on its way to
    # Redis when the next call would start (a provider's latency would hide the race). And
    # once more with each result's write held for half a second on its way, as a busy Redis
    # or a slow network would: no call may start before the previous one's usage is counted.
    with contextlib.ExitStack() as stack:
        url = redis_url
        if writes == "slow":
            slow = stack.enter_context(SlowRedisWrites(redis_url, b"You asked", 0.5))
            url = slow.url
        for _ in range(2):
            workers(REDIS_URL=url)
        # 43 tokens a call: 20 words of prompt, 23 of reply ("[offline] You asked: " and the
        # prompt).
        words = " ".join(f"w{n}" for n in range(19))
        async with api_client(make_settings(redis_url)) as client:
            batches = [
                await submit(
                    client,
                    prompts=[f"{words} b{b}i{i}" for i in range(4)],
                    max_concurrency=1,
                    max_total_tokens=100,
                )
                for b in range(4)
            ]
            done = [await wait_final(client, batch["id"]) for batch in batches]
    for batch in done:  # 86 tokens after two calls; the third crosses 100; no fourth starts
        assert (batch["status"], batch["error"]["type"]) == ("cancelled", "budget_exceeded")
        assert batch["usage"]["total_tokens"] == 3 * 43
        assert batch["request_counts"]["succeeded"] == 3
        assert batch["request_counts"]["cancelled"] == 1
    if writes == "slow":
        assert slow.delayed >= 4  # results' writes were held (several may share one piece)
