"""/docs and /redoc work offline: every asset comes from the service, none from a CDN, and
with API keys on the docs stay open while the API does not."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.kinds import PLANNERS
from assetbox.server import create_app

# src="...", href="...", ReDoc's spec-url="...", and the URLs Swagger UI's script is given
# (url: '...' and the OAuth2 redirect, window.location.origin + '...').
_URL = re.compile(
    r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|(?:url:|origin \+)\s*'([^']+)'"""
)
CONTENT_TYPES = {
    ".js": "javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
    "": "text/html",  # the OAuth2 redirect page
}


@pytest.fixture(params=[False, True], ids=["open", "keys"])
def keys_on(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
def client(tmp_path: Path, keys_on: bool):
    settings = Settings(data_dir=tmp_path / "data", api_keys="secret-key" if keys_on else "")
    engine = Engine(planners=PLANNERS, settings=settings, start=False)  # the docs need no worker
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client
    engine.close()


def referenced_urls(html: str) -> list[str]:
    return [a or b for a, b in _URL.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_of_the_docs_is_served_by_the_service(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"https?://", html), "the page names another host (a CDN?)"
    assert "//" not in "".join(referenced_urls(html))  # nor protocol-relative URLs
    urls = referenced_urls(html)
    kinds = {Path(urlsplit(u).path).suffix for u in urls}
    assert ".js" in kinds and "/openapi.json" in urls
    if page == "/docs":
        assert ".css" in kinds
    for url in urls:
        asset = client.get(url)  # no key, even when keys are on
        assert asset.status_code == 200, url
        expected = CONTENT_TYPES[Path(urlsplit(url).path).suffix]
        assert expected in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert asset.content


def test_the_assets_are_the_real_swagger_ui_and_redoc(client: TestClient) -> None:
    urls = referenced_urls(client.get("/docs").text) + referenced_urls(client.get("/redoc").text)
    scripts = {Path(u).name: client.get(u).text for u in urls if u.endswith(".js")}
    assert "SwaggerUIBundle" in scripts["swagger-ui-bundle.js"]
    assert "Redoc" in scripts["redoc.standalone.js"]
    assert len(scripts["redoc.standalone.js"]) > 100_000  # the bundle, not a stub


def test_oauth2_redirect_page_is_served(client: TestClient) -> None:
    response = client.get("/docs/oauth2-redirect")
    assert response.status_code == 200 and "swaggerUIRedirectOauth2" in response.text


def test_with_keys_the_docs_are_open_and_the_api_is_not(client: TestClient, keys_on: bool) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/health"):
        assert client.get(path).status_code == 200, path
    jobs = client.get("/v1/jobs")
    assert jobs.status_code == (401 if keys_on else 200)
    if keys_on:
        # Neither a missing asset nor a path that climbs out of the assets opens the API.
        assert client.get("/docs-assets/missing.js").status_code == 404
        assert client.get("/docs-assets/%2E%2E/v1/jobs").status_code in (401, 404)
        authorized = {"Authorization": "Bearer secret-key"}
        assert client.get("/v1/jobs", headers=authorized).status_code == 200


def test_openapi_has_a_bearer_scheme_for_the_authorize_button(
    client: TestClient, keys_on: bool
) -> None:
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    ((name, scheme),) = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    security = schema["security"]
    assert {name: []} in security
    assert ({} in security) is (not keys_on)  # without keys, the key is optional
    assert schema["paths"]["/health"]["get"]["security"] == []  # always open
    assert "security" not in schema["paths"]["/v1/jobs"]["get"]  # the global requirement


def test_every_schema_reference_in_the_openapi_resolves(tmp_path: Path) -> None:
    """ReDoc refuses the whole page over one reference it cannot follow (a `#/$defs/...` in a
    request body placed by hand), and Swagger shows such a field as a plain string."""
    settings = Settings(data_dir=tmp_path / "data")
    spec = create_app(
        settings, engine=Engine(planners=PLANNERS, settings=settings, start=False)
    ).openapi()
    schemas = spec["components"]["schemas"]
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    body = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]
    lora = body["schema"]["properties"]["loras"]["items"]
    assert lora["properties"]["weight"]["type"] == "number"  # an object, not "string"
