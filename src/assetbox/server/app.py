"""The app factory: `create_app()` wires settings, the engine, routers and error handlers."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from assetbox import __version__
from assetbox.config import Settings, get_settings
from assetbox.engine.engine import Engine
from assetbox.kinds import PLANNERS
from assetbox.logs import get_logger
from assetbox.server import auth, docs, errors
from assetbox.server.metrics import CONTENT_TYPE, Metrics
from assetbox.server.routers import caption, diffusion, health, jobs, models, upscale

log = get_logger("http")


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The service. Without an `engine`, one is started with the app and closed with it."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = engine is None
        app.state.engine = engine or Engine(planners=PLANNERS, settings=settings)
        app.state.engine.unit_observers.append(app.state.metrics.observe_unit)
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
        openapi_url=auth.OPENAPI_URL,
        # Served by docs.install from files on disk: FastAPI's own pages load them from a CDN.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=auth.OAUTH2_REDIRECT_URL,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    errors.install(app)
    gate = auth.make_gate(settings)
    app.state.auth_gate = gate  # WebSocket routes ask it themselves (no HTTP middleware there)
    docs.install(app, keys_required=gate.required)

    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid
        started = time.perf_counter()
        open_path = auth.is_open(request.url.path) or (
            request.url.path == "/metrics" and settings.metrics_public
        )
        length = request.headers.get("content-length", "")
        response: Response
        refusal = None
        auth.CALLER.set(auth.key_id(request.headers.get("authorization")))
        if not open_path:
            authorization = request.headers.get("authorization")
            refusal = (
                await run_in_threadpool(gate.check, authorization)
                if gate.blocking
                else gate.check(authorization)
            )
        if refusal is not None:
            response = JSONResponse(
                errors.error_body(request, refusal.code, refusal.message),
                status_code=refusal.status,
                headers={"WWW-Authenticate": 'Bearer realm="assetbox"'}
                if refusal.status == 401
                else None,
            )
        elif length.isdigit() and int(length) > settings.max_request_bytes:
            # Refused from the header, before the body is read.
            response = JSONResponse(
                errors.error_body(
                    request,
                    "too_large",
                    f"the request body is {length} bytes; the limit is "
                    f"{settings.max_request_bytes} (ASSETBOX_MAX_REQUEST_BYTES)",
                ),
                status_code=413,
            )
        else:
            response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        route = request.scope.get("route")
        seconds = time.perf_counter() - started
        app.state.metrics.request_seconds.labels(
            request.method, getattr(route, "path", "unmatched"), str(response.status_code)
        ).observe(seconds)
        log.info(
            "request",
            extra={
                "request_id": rid,
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "latency_ms": round(seconds * 1000, 1),
            },
        )
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        body = request.app.state.metrics.render(request.app.state.engine)
        return Response(body, media_type=CONTENT_TYPE)

    routers = (health, upscale, diffusion, caption, jobs, models)
    for router in (module.router for module in routers):
        app.include_router(router)
    return app
