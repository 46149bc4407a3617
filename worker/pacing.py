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

from shared import keys

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

_PRELUDE = f"""
local key = KEYS[1]
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local h = redis.call('HMGET', key, 'rt', 'tt', 'rl', 'tl', 'nb', 'f', 'fs', 'ls')
if now - (tonumber(h[8]) or 0) > {LEARNED_MS} then  -- learned limits lapse unless confirmed
  h[3], h[4] = nil, nil
end
local f = tonumber(h[6]) or 1
if f < 1 then  -- additive increase: half the limit back per minute without a 429
  f = math.min(1, f + (now - (tonumber(h[7]) or now)) / 120000)
end
-- A configured limit, else the one learned (kept here, or as this worker last heard it).
local function limit(configured, learned, heard)
  local l = tonumber(configured)
  if l == 0 then l = tonumber(learned) or tonumber(heard) or 0 end
  return l * f * {HEADROOM}
end
local rpm, tpm = limit(ARGV[1], h[3], ARGV[#ARGV - 1]), limit(ARGV[2], h[4], ARGV[#ARGV])
"""

# Reserve a call's place: one request and ARGV[3] tokens. Returns the ms to wait before it.
# ARGV of every script: configured rpm, configured tpm, its own, then the rpm and tpm this
# worker last heard from the provider (should the key have been lost). Here its own are:
# tokens, burst ms, ttl ms.
_ACQUIRE = (
    _PRELUDE
    + """
local burst = tonumber(ARGV[4])
local start = math.max(now, tonumber(h[5]) or 0)
local function take(tat, inc)
  tat = math.max(tonumber(tat) or 0, now)
  start = math.max(start, tat + inc - math.max(burst, inc))
  return tat
end
local rt, tt, ri, ti
if rpm > 0 then ri = 60000 / rpm; rt = take(h[1], ri) end
if tpm > 0 then ti = tonumber(ARGV[3]) * 60000 / tpm; tt = take(h[2], ti) end
if rt then redis.call('HSET', key, 'rt', math.max(rt, start) + ri) end
if tt then redis.call('HSET', key, 'tt', math.max(tt, start) + ti) end
redis.call('PEXPIRE', key, ARGV[5])
return math.floor(start - now)
"""
)

# A call used ARGV[3] tokens more (or fewer, negative) than it reserved: move the token bucket.
# (ARGV as _ACQUIRE's.)
_SETTLE = (
    _PRELUDE
    + """
if tpm > 0 and h[2] then
  redis.call('HSET', key, 'tt', tonumber(h[2]) + tonumber(ARGV[3]) * 60000 / tpm)
end
return 0
"""
)

# What the provider said: its limits (ARGV[3], ARGV[4]; 0 = not said), and, with ARGV[5] > 0, a
# 429 asking for ARGV[5] ms: nobody starts before then, and, if the call had been paced
# (ARGV[8] = 1: the limits were wrong, not yet known), the rate halves, once per wait.
_OBSERVE = (
    _PRELUDE
    + """
if tonumber(ARGV[3]) > 0 then redis.call('HSET', key, 'rl', ARGV[3], 'ls', now) end
if tonumber(ARGV[4]) > 0 then redis.call('HSET', key, 'tl', ARGV[4], 'ls', now) end
local wait = tonumber(ARGV[5])
if wait > 0 then
  local nb = tonumber(h[5]) or 0
  if now >= nb and ARGV[8] == '1' then
    redis.call('HSET', key, 'f', math.max(tonumber(ARGV[6]), f / 2), 'fs', now)
  end
  redis.call('HSET', key, 'nb', math.max(nb, now + wait))
end
redis.call('PEXPIRE', key, ARGV[7])
return 0
"""
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
    """What one response's headers say about the provider's limits."""

    rpm: int = 0
    tpm: int = 0
    #: With a 429: how long the provider asks callers to wait.
    retry_ms: float = 0.0

    @classmethod
    def of(cls, status: int, headers: Mapping[str, str]) -> ProviderSaid | None:
        """None when the response says nothing about limits (the common case: costs nothing)."""
        rpm = _int(headers.get("x-ratelimit-limit-requests"))
        tpm = _int(headers.get("x-ratelimit-limit-tokens"))
        if status != 429 and not (rpm or tpm):
            return None
        retry_ms = 0.0
        if status == 429:
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
