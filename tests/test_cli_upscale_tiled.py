"""`assetbox upscale --mode diffusion`: tiled img2img from the CLI, with per-tile overrides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from assetbox.cli import app
from assetbox.config import get_settings
from assetbox.models.importer import import_model
from assetbox.models.store import model_store
from tests.utils.images import photo

runner = CliRunner()


@pytest.fixture
def small_png(tiny_models: Path, tmp_path: Path) -> Path:
    import_model(model_store(get_settings()), tiny_models / "tiny-sdxl")
    path = tmp_path / "in.png"
    Image.fromarray(np.ascontiguousarray(photo("coffee")[:96, :128])).save(path)
    return path


def args(small_png: Path, out: Path, *extra: str) -> list[str]:
    return [
        "upscale", str(small_png), "-o", str(out), "--mode", "diffusion", "--model", "tiny-sdxl",
        "--scale", "2", "--tile", "128", "--overlap", "32", "--pre-upscale", "lanczos",
        "--steps", "2", "--strength", "0.6", "--seed", "3", "--prompt", "coffee", *extra,
    ]  # fmt: skip


def test_diffusion_mode_writes_the_upscale_and_takes_tile_overrides(
    small_png: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    result = runner.invoke(app, [*args(small_png, out), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["outputs"][0]["width"] == 256 and body["outputs"][0]["seed"] == 3
    first = np.asarray(Image.open(out))
    assert first.shape == (192, 256, 3)

    tiles = tmp_path / "tiles.json"
    tiles.write_text(json.dumps({"0_0": {"skip": True}}))
    skipped = tmp_path / "skipped.png"
    result = runner.invoke(app, [*args(small_png, skipped), "--tiles-json", str(tiles)])
    assert result.exit_code == 0, result.output
    changed = np.asarray(Image.open(skipped)) != first
    assert changed[:40, :40].any() and not changed[150:, 200:].any()  # only tile 0_0's corner


def test_bad_overrides_and_a_missing_model_are_refused(small_png: Path, tmp_path: Path) -> None:
    tiles = tmp_path / "tiles.json"
    tiles.write_text(json.dumps({"7_7": {"skip": True}}))
    out = tmp_path / "out.png"
    result = runner.invoke(app, [*args(small_png, out), "--tiles-json", str(tiles), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["field"] == "tiles.7_7"
    tiles.write_text("[1, 2]")
    result = runner.invoke(app, [*args(small_png, out), "--tiles-json", str(tiles), "--json"])
    assert json.loads(result.stdout)["error"]["field"] == "tiles_json"
    no_model = ["upscale", str(small_png), "-o", str(out), "--mode", "diffusion", "--json"]
    result = runner.invoke(app, no_model)
    assert result.exit_code == 2 and json.loads(result.stdout)["error"]["field"] == "model"
    assert not out.exists()
