"""Where library errors become HTTP responses: one shape, `{error, message, field, request_id}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from assetbox.errors import (
    AssetboxError,
    Cancelled,
    Conflict,
    ImageTooLarge,
    InvalidInput,
    ModelError,
    NotFound,
    OutOfMemory,
    QueueFull,
    UnsupportedFormat,
)

# Most specific first: the first class an error is an instance of decides its status.
STATUS: tuple[tuple[type[AssetboxError], int], ...] = (
    (ImageTooLarge, 413),
    (UnsupportedFormat, 415),
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Cancelled, 409),
    (QueueFull, 429),
    (OutOfMemory, 503),
    (ModelError, 500),
)


def status_for(exc: AssetboxError) -> int:
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def error_body(
    request: Request, code: str, message: str, field: str | None = None
) -> dict[str, str | None]:
    return {
        "error": code,
        "message": message,
        "field": field,
        "request_id": getattr(request.state, "request_id", None),
    }


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON shape."""

    @app.exception_handler(AssetboxError)
    async def assetbox_error(request: Request, exc: AssetboxError) -> JSONResponse:
        field = getattr(exc, "field", None)
        headers = {}
        if isinstance(exc, QueueFull):
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return JSONResponse(
            error_body(request, exc.code, exc.message, field),
            status_code=status_for(exc),
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        location = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(location) or None
        message = f"`{field}`: {first.get('msg')}" if field else str(first.get("msg"))
        return JSONResponse(error_body(request, "invalid_input", message, field), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(request, code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
