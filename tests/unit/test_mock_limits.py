"""The mock provider enforces RPM / TPM limits with token buckets, as OpenAI does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.mock_openai import MockState, create_app, format_duration

CHAT = "/v1/chat/completions"
RATE_HEADERS = [
    f"x-ratelimit-{name}-{kind}"
    for kind in ("requests", "tokens")
    for name in ("limit", "remaining", "reset")
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Mock = Callable[..., tuple[MockState, httpx.AsyncClient]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def mock(clock: FakeClock) -> AsyncIterator[Mock]:
    """`mock(rpm=..., tpm=..., burst_s=...)`: a state on the fake clock and a client of its app."""
    clients: list[httpx.AsyncClient] = []

    def make(**fields: Any) -> tuple[MockState, httpx.AsyncClient]:
        state = MockState(clock=clock, **fields)
        transport = httpx.ASGITransport(app=create_app(state))
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://mock"))
        return state, clients[-1]

    yield make
    for client in clients:
        await client.aclose()


def body(prompt: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], **extra}


async def call(client: httpx.AsyncClient, payload: dict[str, Any] | None = None) -> httpx.Response:
    return await client.post(CHAT, json=body() if payload is None else payload)


def rate_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in RATE_HEADERS if name in response.headers}


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get("/_stats")).json()
    return data


async def test_limits_are_off_by_default(mock: Mock) -> None:
    _, client = mock()
    for _ in range(50):
        response = await call(client)
        assert response.status_code == 200
        assert rate_headers(response) == {}
        assert "retry-after" not in response.headers
    data = await stats(client)
    assert data["rate_limited"] == 0
    assert data["statuses"] == {"200": 50}
    assert data["limits"] == {"rpm": 0, "tpm": 0, "burst_s": 1.0, "headers": True}


async def test_a_burst_beyond_capacity_gets_an_openai_429(mock: Mock) -> None:
    _, client = mock(rpm=120)  # capacity 2, refilled at 2 per second
    first, second, third = [await call(client) for _ in range(3)]
    assert [r.status_code for r in (first, second, third)] == [200, 200, 429]
    assert rate_headers(first) == {
        "x-ratelimit-limit-requests": "120",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "500ms",
    }
    assert rate_headers(second)["x-ratelimit-remaining-requests"] == "0"
    assert rate_headers(second)["x-ratelimit-reset-requests"] == "1s"
    assert third.json() == {
        "error": {
            "message": "Rate limit reached for mock on requests per min (RPM): Limit 120, "
            "Used 120, Requested 1. Please try again in 500ms.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert third.headers["retry-after"] == "1"
    assert third.headers["retry-after-ms"] == "500"
    assert rate_headers(third) == {
        "x-ratelimit-limit-requests": "120",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
    }
    data = await stats(client)
    assert data["calls"] == 3
    assert data["rate_limited"] == 1
    assert data["statuses"] == {"200": 2, "429": 1}


async def test_capacity_refills_at_the_rate_up_to_capacity(mock: Mock, clock: FakeClock) -> None:
    _, client = mock(rpm=120)
    assert [(await call(client)).status_code for _ in range(2)] == [200, 200]
    clock.advance(0.25)
    refused = await call(client)
    assert refused.status_code == 429
    assert refused.headers["retry-after-ms"] == "250"
    clock.advance(0.249)
    assert (await call(client)).headers["retry-after-ms"] == "1"
    clock.advance(0.001)  # exactly the wait asked for
    assert (await call(client)).status_code == 200
    clock.advance(3600)  # a long pause fills the bucket, and no more
    statuses = [(await call(client)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_burst_s_sizes_the_bucket(mock: Mock, clock: FakeClock) -> None:
    _, client = mock(rpm=60, burst_s=5)  # capacity 5, refilled at 1 per second
    statuses = [(await call(client)).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    clock.advance(2)
    assert [(await call(client)).status_code for _ in range(3)] == [200, 200, 429]
    _, tiny = mock(rpm=6, burst_s=1)  # 0.1 per second rounds up to a bucket of 1
    refused = [await call(tiny) for _ in range(2)][1]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "10"
    assert refused.headers["retry-after-ms"] == "10000"


async def test_a_429_consumes_nothing(mock: Mock, clock: FakeClock) -> None:
    _, client = mock(rpm=600, tpm=600)  # 10 requests and 10 tokens, refilled at 10 per second
    payload = body("one two three", max_tokens=5)  # costs 3 + 5 tokens
    accepted = await call(client, payload)
    assert accepted.status_code == 200
    assert rate_headers(accepted) == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "100ms",
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "2",
        "x-ratelimit-reset-tokens": "800ms",
    }
    for _ in range(3):  # the token bucket refuses; neither bucket is charged
        refused = await call(client, payload)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "tokens"
        assert refused.json()["error"]["message"] == (
            "Rate limit reached for mock on tokens per min (TPM): Limit 600, Used 598, "
            "Requested 8. Please try again in 600ms."
        )
        assert refused.headers["retry-after-ms"] == "600"
        assert refused.headers["x-ratelimit-remaining-requests"] == "9"
        assert refused.headers["x-ratelimit-remaining-tokens"] == "2"
    clock.advance(0.6)
    again = await call(client, payload)
    assert again.status_code == 200
    assert again.headers["x-ratelimit-remaining-requests"] == "9"  # full again, less this one
    assert again.headers["x-ratelimit-remaining-tokens"] == "0"
    assert (await stats(client))["rate_limited"] == 3


async def test_the_longer_wait_is_reported_when_both_limits_are_short(mock: Mock) -> None:
    _, client = mock(rpm=60, tpm=6000)  # 1 request per second; 100 tokens, 100 per second
    assert (await call(client, body("a", max_tokens=99))).status_code == 200
    refused = await call(client, body("a", max_tokens=99))
    assert refused.json()["error"]["type"] == "requests"
    assert refused.headers["retry-after-ms"] == "1000"


async def test_tpm_counts_prompt_tokens_and_the_most_the_reply_may_take(mock: Mock) -> None:
    _, client = mock(tpm=6000)  # capacity 100
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two three"}]},
    ]
    remaining = []
    for extra in ({"max_tokens": 20}, {"max_completion_tokens": 10, "max_tokens": 50}, {}):
        response = await call(client, {"model": "m", "messages": messages, **extra})
        assert response.status_code == 200
        assert "x-ratelimit-limit-requests" not in response.headers  # RPM is off
        remaining.append(int(response.headers["x-ratelimit-remaining-tokens"]))
    # 5 prompt tokens each, + 20, + 10, + the reply "mock reply to: one two three" (6 words)
    assert remaining == [75, 60, 49]


async def test_a_cost_above_the_capacity_waits_its_full_refill(
    mock: Mock, clock: FakeClock
) -> None:
    _, client = mock(tpm=600)  # capacity 10, refilled at 10 per second
    payload = body("one two three four five", max_tokens=25)  # 30 tokens
    for _ in range(2):
        refused = await call(client, payload)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "3"
        assert refused.headers["retry-after-ms"] == "3000"
        assert refused.json()["error"]["message"].endswith("Requested 30. Please try again in 3s.")
        clock.advance(3600)
    assert (await call(client, body("ok", max_tokens=9))).status_code == 200


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.0004, "1ms"),
        (0.12, "120ms"),
        (0.9999, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (1.2345, "1.235s"),
        (12.05, "12.05s"),
        (59.9999, "1m0s"),
        (90.5, "1m30.5s"),
        (360, "6m0s"),
        (7200, "120m0s"),
    ],
)
def test_durations_are_formatted_as_openai_does(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


async def test_the_reset_headers_use_the_duration_format(mock: Mock) -> None:
    _, client = mock(rpm=1, burst_s=360)  # capacity 6, one per minute
    resets = [(await call(client)).headers["x-ratelimit-reset-requests"] for _ in range(6)]
    assert resets == ["1m0s", "2m0s", "3m0s", "4m0s", "5m0s", "6m0s"]
    _, client = mock(rpm=40)  # capacity 1 (0.67 rounds up), 1.5 s to refill
    assert (await call(client)).headers["x-ratelimit-reset-requests"] == "1.5s"


async def test_headers_can_be_turned_off(mock: Mock) -> None:
    _, client = mock(rpm=60, tpm=60)
    response = await client.post("/_limits", json={"headers": False})
    assert response.json() == {"rpm": 60, "tpm": 60, "burst_s": 1.0, "headers": False}
    accepted = await call(client, body("a", max_tokens=0))
    assert accepted.status_code == 200
    assert rate_headers(accepted) == {}
    refused = await call(client, body("a", max_tokens=0))
    assert refused.status_code == 429
    assert rate_headers(refused) == {}
    assert refused.headers["retry-after"] == "1"  # the retry headers stay
    assert refused.headers["retry-after-ms"] == "1000"


async def test_limits_can_be_changed_at_run_time(mock: Mock, clock: FakeClock) -> None:
    state, client = mock()
    response = await client.post("/_limits", json={"rpm": 60})
    assert response.json() == {"rpm": 60, "tpm": 0, "burst_s": 1.0, "headers": True}
    assert [(await call(client)).status_code for _ in range(2)] == [200, 429]
    response = await client.post("/_limits", json={"burst_s": 3})  # a changed limit starts full
    assert response.json() == {"rpm": 60, "tpm": 0, "burst_s": 3.0, "headers": True}
    assert [(await call(client)).status_code for _ in range(4)] == [200, 200, 200, 429]
    await client.post("/_limits", json={"rpm": 0, "tpm": 0})
    for _ in range(10):
        response = await call(client)
        assert response.status_code == 200
        assert rate_headers(response) == {}
    assert (await stats(client))["limits"] == {"rpm": 0, "tpm": 0, "burst_s": 3.0, "headers": True}
    assert (state.rpm, state.tpm, state.burst_s) == (0, 0, 3.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"rpm": -1},
        {"tpm": 1.5},
        {"rpm": True},
        {"burst_s": 0},
        {"burst_s": "1"},
        {"headers": 1},
        {"rpm": 5, "bogus": 1},
        [1],
    ],
)
async def test_invalid_limits_are_refused_and_change_nothing(mock: Mock, fields: Any) -> None:
    _, client = mock(rpm=60)
    response = await client.post("/_limits", json=fields)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("invalid limits: ")
    assert (await stats(client))["limits"] == {"rpm": 60, "tpm": 0, "burst_s": 1.0, "headers": True}


async def test_reset_refills_the_buckets_and_keeps_the_limits(mock: Mock) -> None:
    _, client = mock(rpm=60, tpm=600, burst_s=2)  # 2 requests, 20 tokens
    statuses = [(await call(client, body("a", max_tokens=4))).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert (await client.post("/_reset")).json() == {"ok": True}
    data = await stats(client)
    assert data["rate_limited"] == 0
    assert data["statuses"] == {}
    assert data["limits"] == {"rpm": 60, "tpm": 600, "burst_s": 2.0, "headers": True}
    response = await call(client, body("a", max_tokens=4))
    assert response.headers["x-ratelimit-remaining-requests"] == "1"
    assert response.headers["x-ratelimit-remaining-tokens"] == "15"


async def test_limits_are_checked_on_arrival(mock: Mock) -> None:
    """A call charges the buckets when it arrives, before it waits; other answers carry headers."""
    _, client = mock(rpm=120)
    gated = asyncio.create_task(call(client, body("[[gate=g]] slow")))
    while (await stats(client))["in_flight"] == 0:
        await asyncio.sleep(0)
    error = await call(client, body("[[status=400]] bad"))
    assert error.status_code == 400
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    refused = await call(client)
    assert refused.status_code == 429
    assert (await stats(client))["in_flight"] == 1  # the refusal did not wait behind the gate
    await client.post("/_gates/g")
    answer = await gated
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-remaining-requests"] == "1"  # as it was on arrival
