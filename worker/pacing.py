"""Provider pacing: requests and tokens per minute for the whole service, held in Redis so that
every worker on every host shares one budget per model.

Each model has two buckets, kept as GCRA "theoretical arrival times" (a continuous token
bucket in one number each): a call reserves its place in both and sleeps until then, so calls
are spaced evenly instead of bursting into the provider's 429s. Limits come from configuration
(`PROMPTBATCH_RPM_LIMIT` / `_TPM_LIMIT`) or are learned from the provider's `x-ratelimit-limit-*`
headers. A 429 slows every worker: nobody starts a call before its `Retry-After`, and the rate
halves (at most once per wait), then climbs back by half the limit per minute without 429s.

With nothing configured and nothing learned this costs nothing: no Redis round trip per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys, lua

#: A burst the buckets allow, in time at the full rate: half a second, under the second or more
#: a provider's own bucket holds, so that calls arriving a little bunched are still within it.
BURST_MS = 500
#: The share of a limit the buckets use: calls take a few ms to reach the provider, and not
#: all equally, so pacing at the very limit would meet it a little early now and then.
HEADROOM = 0.95
#: The rate falls to this share of the limit at the lowest, however many 429s come.
MIN_FACTOR = 0.05
#: Longest a call waits for Redis to give it its turn before it goes unpaced (seconds).
REDIS_WAIT_S = 1.0
#: How often a worker that paces nothing looks whether another worker has begun to (seconds).
LOOK_S = 1.0
#: Output tokens a call is assumed to use when it names no `max_tokens` (corrected after it).
DEFAULT_OUTPUT_TOKENS = 256

#: Learned limits lapse this long after the provider last stated them (ms); workers that keep
#: hearing them confirm them every CONFIRM_S.
LEARNED_MS = 300_000
CONFIRM_S = 60.0

# The scripts (`worker/lua/`): each one is `pacing.lua`'s prelude, then its own part.
_ACQUIRE, _SETTLE, _OBSERVE = (
    lua.load("worker", "pacing", name, LEARNED_MS=LEARNED_MS, HEADROOM=HEADROOM)
    for name in ("acquire", "settle", "observe")
)

#: How long a model's pacing state outlives its last use.
STATE_TTL_MS = 3600 * 1000

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def duration_ms(text: str) -> float | None:
    """OpenAI's reset durations (`"6m0s"`, `"1.5s"`, `"120ms"`) in milliseconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT_MS[u] for n, u in parts)


@dataclass(frozen=True, slots=True)
class ProviderSaid:
    """What one response's headers say about the provider's limits: OpenAI's
    `x-ratelimit-limit-*`, or Anthropic's `anthropic-ratelimit-*-limit`."""

    rpm: int = 0
    tpm: int = 0
    #: With a 429: how long the provider asks callers to wait.
    retry_ms: float = 0.0

    @classmethod
    def of(cls, status: int, headers: Mapping[str, str]) -> ProviderSaid | None:
        """None when the response says nothing about limits (the common case: costs nothing)."""
        rpm = _int(headers.get("x-ratelimit-limit-requests")) or _int(
            headers.get("anthropic-ratelimit-requests-limit")
        )
        tpm = _int(headers.get("x-ratelimit-limit-tokens")) or _int(
            headers.get("anthropic-ratelimit-tokens-limit")
        )
        later = status in (429, 529)  # 529: Anthropic's "overloaded"
        if not later and not (rpm or tpm):
            return None
        retry_ms = 0.0
        if later:
            retry_ms = _retry_after_ms(headers) or 1000.0
        return cls(rpm, tpm, retry_ms)


def _int(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


def _retry_after_ms(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 1.0), ("retry-after", 1000.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    reset = headers.get("x-ratelimit-reset-requests") or headers.get("x-ratelimit-reset-tokens")
    return duration_ms(reset) if reset else None


class Pacer:
    """This worker's side of the shared buckets: reserve before a call, settle after it, and
    tell every worker what the provider said.

    Redis never holds a call up for long: a reservation that Redis does not answer within
    `REDIS_WAIT_S` lets the call go unpaced (as it would with no limit), and what the provider
    said is shared in the background.
    """

    def __init__(self, redis: Redis, rpm: int, tpm: int) -> None:
        self._redis = redis
        self._rpm, self._tpm = rpm, tpm
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._observe = redis.register_script(_OBSERVE)
        #: Models whose provider has spoken of limits (then every call is paced), and the
        #: limits it last said (0: not said).
        self._learned: dict[str, tuple[int, int]] = {}
        self._stated: dict[str, float] = {}
        self._looked: dict[str, float] = {}
        self._answered: set[str] = set()
        self._probes: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task[None]] = set()

    def paces(self, model: str) -> bool:
        """Whether calls to `model` go through the buckets: a limit is configured, or the
        provider spoke of limits to this worker, or to another one (looked up in the
        background, at most once a second)."""
        if self._rpm or self._tpm or model in self._learned:
            return True
        now = time.monotonic()
        if now - self._looked.get(model, -LOOK_S) >= LOOK_S:
            self._looked[model] = now
            self._spawn(self._look(model))
        return False

    async def _look(self, model: str) -> None:
        if await self._redis.exists(keys.pacing(model)):
            self._learned.setdefault(model, (0, 0))

    async def reserve(self, model: str, tokens: int) -> float:
        """Wait for this call's turn; returns the seconds it waited."""
        began = time.monotonic()
        await self.first_answer(model)
        if self.paces(model):
            wait_s = await self.turn(model, tokens)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        return time.monotonic() - began

    async def turn(self, model: str, tokens: int) -> float:
        """Take the next place in `model`'s buckets for a call of `tokens`: the seconds until
        it may start (0 when Redis does not answer in time: the call goes unpaced)."""
        args = [self._rpm, self._tpm, tokens, BURST_MS, STATE_TTL_MS, *self._heard(model)]
        try:
            wait_ms = await asyncio.wait_for(
                self._acquire(keys=[keys.pacing(model)], args=args), REDIS_WAIT_S
            )
        except (RedisError, TimeoutError):
            return 0.0
        return max(0, int(wait_ms)) / 1000

    def settle(self, model: str, reserved: int, used: int) -> None:
        """Correct the token bucket by what the call really used (in the background: a reply
        already paid for never waits on this, nor is lost to it)."""
        if used == reserved or not (self._tpm or self._heard(model)[1]):
            return
        args = [self._rpm, self._tpm, used - reserved, *self._heard(model)]
        self._spawn(self._settle(keys=[keys.pacing(model)], args=args))

    def observe(self, model: str, said: ProviderSaid) -> None:
        """Share what a response said, in the background: its limits (when they change, and
        every CONFIRM_S while they stay the same) and any 429's wait."""
        known = (said.rpm, said.tpm)
        paced = bool(self._rpm or self._tpm) or any(self._heard(model))
        now = time.monotonic()
        fresh = now - self._stated.get(model, -CONFIRM_S) < CONFIRM_S
        if said.retry_ms <= 0 and self._learned.get(model) == known and fresh:
            return
        if said.rpm or said.tpm:
            self._learned[model], self._stated[model] = known, now
        else:
            self._learned.setdefault(model, (0, 0))
        args = [self._rpm, self._tpm, said.rpm, said.tpm, math.ceil(said.retry_ms),
                MIN_FACTOR, STATE_TTL_MS, int(paced), *self._heard(model)]  # fmt: skip
        self._spawn(self._observe(keys=[keys.pacing(model)], args=args))

    async def first_answer(self, model: str) -> None:
        """Until the provider has answered a call to `model` once in this process (and so
        said what its limits are, if it says), with no limit configured, one call at a time:
        a batch's first burst would otherwise meet limits nobody has heard of yet."""
        if self._rpm or self._tpm or model in self._answered:
            return
        probe = self._probes.get(model)
        if probe is None:
            self._probes[model] = asyncio.Event()  # this call is the probe
        else:
            await probe.wait()

    def answered(self, model: str) -> None:
        """The provider answered a call to `model` (whatever it said), or the probe ended
        without one: the others may go."""
        if model not in self._answered:
            self._answered.add(model)
            if (probe := self._probes.pop(model, None)) is not None:
                probe.set()

    async def drain(self) -> None:
        """Let what is being shared reach Redis (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _heard(self, model: str) -> tuple[int, int]:
        """The limits the provider last stated to this worker, while they are fresh."""
        stated = self._stated.get(model)
        if stated is None or time.monotonic() - stated > LEARNED_MS / 1000:
            return (0, 0)
        return self._learned.get(model, (0, 0))

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            with contextlib.suppress(RedisError, OSError):
                await work

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def estimate_tokens(text_chars: int, max_output: int | None) -> int:
    """A call's tokens before it is made: about four characters a token of input, and its
    output limit (or a default, corrected after the reply)."""
    return max(1, text_chars // 4) + (max_output or DEFAULT_OUTPUT_TOKENS)


def model_of(request: Any) -> str:
    """The model a chat-completions request asked for (its JSON body's `model`)."""
    try:
        model = orjson.loads(request.content).get("model")
    except (orjson.JSONDecodeError, AttributeError):
        model = None
    return model if isinstance(model, str) else ""
