"""``/docs`` (Swagger UI) and ``/redoc`` served offline, and the API-key scheme in the OpenAPI.

The pages' JavaScript and CSS come from the fastapi-offline package, which ships Swagger UI's
and ReDoc's distribution files, so the docs work on machines that reach no CDN.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from assetbox.server import auth

ASSETS_PACKAGE = "fastapi_offline"
# Operations in the schema that answer without a key whatever the settings (/metrics, which
# may be public too, is not in the schema).
OPEN_OPERATIONS = {"/health"}


def assets_dir() -> str:
    """The folder of Swagger UI's and ReDoc's files inside the installed package."""
    return str(importlib.resources.files(ASSETS_PACKAGE) / "static")


def install(app: FastAPI, *, keys_required: bool) -> None:
    """Mount the assets, add the two pages and the OAuth2 redirect Swagger UI expects, and
    describe the API key (``Authorization: Bearer <key>``) in the OpenAPI."""
    app.mount(auth.DOCS_ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    def asset(request: Request, name: str) -> str:
        # root_path: behind a proxy that mounts the service under a prefix the URLs keep it.
        return f"{request.scope.get('root_path', '')}{auth.DOCS_ASSETS}/{name}"

    @app.get(auth.DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{auth.OPENAPI_URL}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{auth.OAUTH2_REDIRECT_URL}",
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            # Keep the key across reloads of the page, as one expects of a key typed in once.
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(auth.OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(auth.REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{auth.OPENAPI_URL}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,  # fonts.googleapis.com: another host
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            add_security(schema, keys_required=keys_required)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_security(schema: dict[str, Any], *, keys_required: bool) -> None:
    """The bearer scheme, required on every operation when keys are configured; without keys
    it is optional (an empty requirement), so that the document tells the truth either way."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[auth.SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (ASSETBOX_API_KEYS or ASSETBOX_API_KEYS_FILE) sent as "
        "`Authorization: Bearer <key>`; needed only when the service has keys configured.",
    }
    schema["security"] = [{auth.SCHEME: []}] if keys_required else [{auth.SCHEME: []}, {}]
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_OPERATIONS:
            for operation in operations.values():
                operation["security"] = []
