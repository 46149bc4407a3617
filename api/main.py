"""The HTTP API: `uvicorn api.main:app`. Builds the app; the lifespan owns the Redis client."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from redis.asyncio import BlockingConnectionPool, Redis

from api.admission import Limits
from api.deps import AppState
from api.errors import install_error_handlers
from api.hub import EventHub
from api.middleware import BodyLimit, QuietErrors
from api.openapi import install_openapi
from api.routes import batches, health, metrics, openai_surface, ui, webhooks
from api.streams import StreamSlots
from shared.files import Files
from shared.settings import Settings, get_settings
from shared.store import BatchStore
from shared.webhooks import WebhookEndpoints

log = logging.getLogger("promptbatch.api")


def connect(settings: Settings) -> Redis:
    """The API's client: connects lazily, never blocks at start, and fails fast (a 503) rather
    than retrying while Redis is away."""
    pool = BlockingConnectionPool.from_url(
        settings.require_redis_url(),
        # Bounded: streams and requests wait (then 503) rather than take every connection.
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        client_name="promptbatch-api",  # so an operator sees in CLIENT LIST whose they are
    )
    return Redis(connection_pool=pool)


#: How long a thread holds the GIL before the event loop's thread may take it (seconds).
GIL_SWITCH_S = 0.0002


def _lifespan(
    settings: Settings | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[AppState]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[AppState]:
        resolved = settings or get_settings()
        redis = connect(resolved)
        # While a thread validates a large body, the event loop waits for the GIL at each of
        # its steps, by default up to 5 ms each time: a request of a few dozen steps then
        # waits 100 ms and more. At 0.2 ms the worst /healthz wait during 60 MB uploads is
        # under 60 ms (86 ms at 0.5 ms, 100 at 1 ms), and the uploads take no longer.
        sys.setswitchinterval(GIL_SWITCH_S)
        if resolved.resolved_provider == "offline":
            log.warning("No OPENAI_API_KEY: batches run on the offline model.")
        if not resolved.api_key_list:
            log.warning(
                "PROMPTBATCH_API_KEYS is not set: the API asks for no key and every caller "
                "sees every batch. Set it anywhere but a trusted machine."
            )
        store = BatchStore(redis, result_ttl_s=resolved.result_ttl_s)
        events = EventHub(store, block_ms=int(resolved.redis_timeout_s * 500))
        state = AppState(
            settings=resolved,
            redis=redis,
            store=store,
            limits=Limits(redis, resolved),
            streams=StreamSlots(redis, resolved.max_streams_per_key),
            events=events,
            webhooks=WebhookEndpoints(redis),
            files=Files(redis, resolved.file_ttl_s),
        )
        try:
            yield state
            await events.close()
        finally:
            await redis.aclose(close_connection_pool=True)

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API app; settings are read from the environment at start unless given."""
    # Swagger UI and ReDoc served from the API itself (fastapi-offline ships their files):
    # the docs render on a machine without internet.
    app = FastAPIOffline(
        title="promptbatch",
        version="0.1.0",
        summary="Run large LLM prompt batches on your own infrastructure.",
        lifespan=_lifespan(settings),
    )
    install_openapi(app, settings)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(QuietErrors)  # added last: the outermost, it sees every error
    app.include_router(batches.router)
    app.include_router(webhooks.router)
    app.include_router(openai_surface.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(ui.router)
    app.mount("/ui/static", ui.static, name="ui-static")
    return app


app = create_app()
