"""Container health check: `python -m worker.healthcheck` exits 0 while a worker on this host
has sent a heartbeat recently, else 1. Each compose replica has its own hostname."""

from __future__ import annotations

import asyncio
import socket
import sys

from redis.asyncio import Redis

from shared import workers
from shared.settings import get_settings


async def _main() -> int:
    settings = get_settings()
    redis = Redis.from_url(settings.require_redis_url(), socket_timeout=settings.redis_timeout_s)
    try:
        alive = await workers.alive_on_host(redis, socket.gethostname(), settings.worker_alive_s)
    except Exception as exc:
        print(f"unhealthy: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
