"""A bounded property-based run over the OpenAPI schema: no request makes the service fail (5xx)."""

from __future__ import annotations

import shutil

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.kinds import PLANNERS
from assetbox.server import create_app

schemathesis_settings = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def app(builtin_store, tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("schemathesis") / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    settings_ = Settings(data_dir=data_dir)
    # The engine takes no jobs: schemathesis checks the API's answers, not upscaling speed.
    engine = Engine(planners=PLANNERS, settings=settings_, start=False)
    app = create_app(settings_, engine=engine)
    app.state.engine = engine
    yield app
    engine.close()


def test_no_request_gives_a_server_error(app) -> None:
    # Driven by hand (operation strategies + hypothesis) rather than schemathesis' pytest
    # plugin, which does not load under this pytest version.
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @schemathesis_settings
        def check(case) -> None:
            response = case.call()
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.text[:200]}")

        check()
    assert operations >= 10
    assert failures == []
