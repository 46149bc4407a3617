"""Prometheus metrics of the whole service (every API process and worker), open like health."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import RedisDep, SettingsDep
from shared.metrics import render

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(redis: RedisDep, settings: SettingsDep) -> Response:
    """Batches by status, items and tokens, provider latency and responses, queue depth and
    workers alive, in Prometheus text format; names start with `promptbatch_`."""
    body = await render(redis, settings.worker_alive_s)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
