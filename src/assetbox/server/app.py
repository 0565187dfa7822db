"""The app factory: `create_app()` wires settings, the engine, routers and error handlers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from assetbox import __version__
from assetbox.config import Settings, get_settings
from assetbox.engine.engine import Engine
from assetbox.server import errors
from assetbox.server.routers import health, jobs, models, upscale


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The service. Without an `engine`, one is started with the app and closed with it."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = engine is None
        app.state.engine = engine or Engine(settings)
        try:
            yield
        finally:
            if own:
                app.state.engine.close()

    app = FastAPI(
        title="AI Assets Toolbox",
        version=__version__,
        description="Generate, edit, caption and upscale images.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    for router in (health.router, upscale.router, jobs.router, models.router):
        app.include_router(router)
    return app
