"""Liveness and readiness probes."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import RedisDep, SettingsDep
from api.errors import error_response
from shared import workers
from shared.schemas import ErrorBody

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str | int]:
    """200 while the process is up; `pid` says which process answered (`make run` checks it
    is the API it started, not another one on the port)."""
    return {"status": "ok", "pid": os.getpid()}


@router.get(
    "/readyz",
    response_model=None,
    responses={503: {"model": ErrorBody, "description": "Redis or every worker is away."}},
)
async def readyz(redis: RedisDep, settings: SettingsDep) -> dict[str, object] | JSONResponse:
    """200 when Redis answers and a worker sent a heartbeat recently; else 503 saying which."""
    try:
        await redis.ping()
        alive = await workers.alive(redis, settings.worker_alive_s)
    except Exception as exc:
        return error_response(503, "not_ready", f"Redis does not answer ({type(exc).__name__}).")
    if alive == 0:
        return error_response(
            503, "not_ready", f"No worker has sent a heartbeat in {settings.worker_alive_s:g} s."
        )
    return {"status": "ready", "redis": "ok", "workers": alive}
