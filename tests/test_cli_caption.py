"""`assetbox caption`: a table of captions, or one JSON object, in this process or through a
server; tile mode gives the ids and boxes `assetbox tiles` and `POST /v1/upscale/plan` show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from assetbox.cli import app
from assetbox.config import get_settings
from assetbox.imaging import TilePlan
from assetbox.models.importer import import_model
from assetbox.models.store import model_store
from tests.utils.images import photo

runner = CliRunner()
MODEL = "tiny-qwen2_5_vl"


@pytest.fixture
def captioner_dir(tiny_captioners: dict[str, Path]) -> Path:
    return tiny_captioners["qwen2_5_vl"]


@pytest.fixture
def images(captioner_dir: Path, tmp_path: Path) -> list[Path]:
    import_model(model_store(get_settings()), captioner_dir)
    paths = []
    for name, crop in (("astronaut", np.s_[:120, :100]), ("chelsea", np.s_[:90, :150])):
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.ascontiguousarray(photo(name)[crop])).save(path)
        paths.append(path)
    return paths


def test_a_table_and_json_of_the_same_captions(images: list[Path]) -> None:
    args = ["caption", *map(str, images), "--model", MODEL, "--max-tokens", "10"]
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)  # stdout is one JSON object
    assert body["status"] == "succeeded"
    assert [c["index"] for c in body["captions"]] == [0, 1]
    assert all(c["caption"] and 1 <= c["tokens"] <= 10 for c in body["captions"])

    table = runner.invoke(app, args, env={"COLUMNS": "400"})  # no wrapping
    assert table.exit_code == 0, table.output
    assert "astronaut.png" in table.stdout and "chelsea.png" in table.stdout
    for entry, path in zip(body["captions"], images, strict=True):
        row = next(line for line in table.stdout.splitlines() if str(path) in line)
        assert entry["caption"] in row


def test_tiles_are_the_upscale_plan(images: list[Path]) -> None:
    args = ["caption", str(images[1]), "--model", MODEL, "--tiles", "--scale", "2"]
    args += ["--tile", "128", "--overlap", "32", "--pre-upscale", "lanczos", "--max-tokens", "4"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    plan = TilePlan.for_image(304, 176, 128, 32, align=8)  # 150x90 x2, sides on the grid of 8
    assert (body["width"], body["height"]) == (304, 176)
    assert [(c["id"], c["box"]) for c in body["captions"]] == [
        (t.id, [t.x, t.y, t.width, t.height]) for t in plan
    ]


def test_tiles_of_two_images_are_refused(images: list[Path]) -> None:
    result = runner.invoke(
        app, ["caption", *map(str, images), "--model", MODEL, "--tiles", "--json"]
    )
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["field"] == "images"


def test_a_missing_captioner_is_named(images: list[Path]) -> None:
    result = runner.invoke(app, ["caption", str(images[0]), "--model", "nope", "--json"])
    assert result.exit_code == 1, result.output  # not found: 1, as for a missing upscaler
    error = json.loads(result.stdout)["error"]
    assert error["field"] == "model" and "no captioner" in error["message"]


def test_through_a_server_the_same_captions(
    images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    import assetbox.cli
    from assetbox.client import Client
    from assetbox.server import create_app

    class Kept(Client):
        def close(self) -> None:  # the test client outlives the command
            pass

    args = ["caption", *map(str, images), "--model", MODEL, "--max-tokens", "6", "--json"]
    here = json.loads(runner.invoke(app, args).stdout)
    with TestClient(create_app()) as http:
        monkeypatch.setattr(assetbox.cli, "_client", lambda server=None: Kept(http=http))
        remote = runner.invoke(app, [*args, "--server", "http://testserver"])
        assert remote.exit_code == 0, remote.output
        there = json.loads(remote.stdout)
        assert there["captions"] == here["captions"]
        plan = Kept(http=http).upscale_plan(300, 180, scale=2, tile=128, overlap=32)
        expected = TilePlan.for_image(600, 360, 128, 32, align=8)
        assert (plan["rows"], plan["cols"]) == (expected.rows, expected.cols)
