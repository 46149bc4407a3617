"""Worker liveness: each worker stamps a heartbeat (with its job slots in use); readiness and
`/metrics` count the recent ones."""

from __future__ import annotations

import time
from collections.abc import Iterable

from redis.asyncio import Redis

from shared import keys


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _since_ms(alive_s: float) -> int:
    """The oldest heartbeat that still counts."""
    return _now_ms() - int(alive_s * 1000)


async def beat(
    redis: Redis,
    worker_id: str,
    alive_s: float,
    busy: int = 0,
    slots: int = 0,
    providers: Iterable[str] = (),
) -> None:
    """Say this worker is alive now, with `busy` of its `slots` job slots running a chunk and
    the `providers` it runs, and forget workers silent for longer than `alive_s`."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.WORKERS, {worker_id: _now_ms()})
        pipe.zremrangebyscore(keys.WORKERS, "-inf", f"({_since_ms(alive_s)}")
        pipe.hset(keys.WORKER_SLOTS, worker_id, f"{busy} {slots}")
        pipe.hset(keys.WORKER_PROVIDERS, worker_id, ",".join(providers))
        await pipe.execute()


async def forget(redis: Redis, worker_id: str) -> None:
    """A worker shutting down cleanly stops counting at once."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.WORKERS, worker_id)
        pipe.hdel(keys.WORKER_SLOTS, worker_id)
        pipe.hdel(keys.WORKER_PROVIDERS, worker_id)
        await pipe.execute()


async def offering(redis: Redis, provider: str, alive_s: float) -> bool:
    """Whether a worker alive in the last `alive_s` seconds runs `provider`."""
    beats = await redis.zrangebyscore(keys.WORKERS, _since_ms(alive_s), "+inf")
    if not beats:
        return False
    stated = await redis.hmget(keys.WORKER_PROVIDERS, beats)  # type: ignore[misc]
    return any(raw is not None and provider in raw.decode().split(",") for raw in stated)


async def job_slots(redis: Redis, alive_s: float) -> tuple[int, int]:
    """(busy, alive): job slots running a chunk, and job slots, over the workers alive (as
    their last heartbeats said). Slots of workers no longer alive are forgotten."""
    beats = await redis.zrangebyscore(keys.WORKERS, _since_ms(alive_s), "+inf")
    alive = {member.decode() for member in beats}
    raw = await redis.hgetall(keys.WORKER_SLOTS)  # type: ignore[misc]
    stated = {worker.decode(): value.decode() for worker, value in raw.items()}
    gone = [worker for worker in stated if worker not in alive]
    if gone:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hdel(keys.WORKER_SLOTS, *gone)
            pipe.hdel(keys.WORKER_PROVIDERS, *gone)
            await pipe.execute()
    busy = total = 0
    for worker in alive:
        used, slots = stated.get(worker, "0 0").split()
        busy, total = busy + int(used), total + int(slots)
    return busy, total


async def alive(redis: Redis, alive_s: float) -> int:
    """How many workers sent a heartbeat in the last `alive_s` seconds."""
    return int(await redis.zcount(keys.WORKERS, _since_ms(alive_s), "+inf"))


def worker_id(host: str, pid: int, token: str) -> str:
    """`host:pid:token`: unique per process, and tells which host a heartbeat came from."""
    return f"{host}:{pid}:{token}"


async def alive_on_host(redis: Redis, host: str, alive_s: float) -> bool:
    """Whether a worker on `host` sent a heartbeat in the last `alive_s` seconds."""
    members = await redis.zrangebyscore(keys.WORKERS, _since_ms(alive_s), "+inf")
    return any(m.decode().startswith(f"{host}:") for m in members)
