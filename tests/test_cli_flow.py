"""`assetbox generate --reference PATH:WEIGHT` (FLUX.2 klein), `assetbox edit --instruction
TEXT --image PATH ...` (Qwen-Image-Edit-Plus) and `--ip-adapter` on edit and the tiled upscale
(SD 1.5), in this process with tiny models, and the refusals of the new options (exit 2 naming
the field)."""

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

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
SMALL = ["--width", "80", "--height", "64", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from assetbox.testing.tiny_models import write

    out = tmp_path_factory.mktemp("cli-flow-models")
    write("flux2_klein", out)
    write("qwen_image_edit_plus", out)
    return out


@pytest.fixture
def inputs(flow_models: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny models imported into this test's data directory, and two input images."""
    store = model_store(get_settings())
    for entry in ("tiny-flux2_klein", "tiny-qwen_image_edit_plus"):
        import_model(store, flow_models / entry)
    paths = (tmp_path / "a.png", tmp_path / "b.png")
    for n, (path, (w, h)) in enumerate(zip(paths, [(80, 64), (64, 96)], strict=True)):
        pixels = (np.random.default_rng(n).random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
    return paths


def run(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_generate_with_two_weighted_references(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = inputs
    klein = ["generate", "a red wall", "--model", "tiny-flux2_klein", *SMALL]
    weighted = tmp_path / "weighted.png"
    body = run(*klein, "-o", str(weighted), "--reference", f"{a}:0.5", "--reference", f"{b}:0.5")
    assert (body["outputs"][0]["width"], body["outputs"][0]["height"]) == (80, 64)
    assert Image.open(weighted).size == (80, 64)
    full, plain = tmp_path / "full.png", tmp_path / "plain.png"
    run(*klein, "-o", str(full), "--reference", str(a), "--reference", f"{b}:1")
    run(*klein, "-o", str(plain))
    # 0.5 is neither the native references (weight 1) nor none.
    assert len({weighted.read_bytes(), full.read_bytes(), plain.read_bytes()}) == 3


def test_instruction_edit_of_two_images(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = inputs
    out = tmp_path / "edited.png"
    body = run(
        "edit", "--instruction", "make the sky red", "--image", str(a), "--image", str(b),
        "--model", "tiny-qwen_image_edit_plus", "-o", str(out), *SMALL,
        "--condition-pixels", str(64 * 64),  # not 1 MP: seconds, not a minute
    )  # fmt: skip
    assert body["status"] == "succeeded"
    assert Image.open(out).size == (80, 64)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (
            ["generate", "x", "--model", "tiny-flux2_klein"] + ["--reference", "A"] * 17,
            "references",
        ),
        (["generate", "x", "--model", "tiny-flux2_klein", "--reference", "A:heavy"], "reference"),
        (["generate", "x", "--model", "tiny-flux2_klein", "--ip-adapter-scale", "1"], "ip_adapter"),
        (["generate", "x", "--model", "tiny-flux2_klein", "--backend", "nunchaku"], "backend"),
        (["edit", "--image", "A", "--model", "tiny-qwen_image_edit_plus"], "instruction"),
        (["edit", "A", "--instruction", "red", "--image", "A", "--model", "m"], "image"),
        (["edit", "--instruction", "red", "--model", "tiny-qwen_image_edit_plus"], "images"),
        (
            ["edit", "--instruction", "red", "--model", "tiny-qwen_image_edit_plus"]
            + ["--image", "A"] * 4,
            "images",
        ),
        (["edit", "A", "--model", "tiny-qwen_image_edit_plus"], "prompt"),
        (["upscale", "A", "--ip-adapter", "ip-adapter-sdxl"], "ip_adapter"),  # gan mode
    ],
)
def test_refusals_exit_2_naming_the_field(
    inputs: tuple[Path, Path], tmp_path: Path, args: list[str], field: str
) -> None:
    out = tmp_path / "out.png"
    args = [str(inputs[0]) if a == "A" else a.replace("A:", f"{inputs[0]}:") for a in args]
    result = runner.invoke(app, [*args, "-o", str(out), "--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["error"]["field"] == field
    assert not out.exists()


def test_ip_adapter_on_edit_and_the_tiled_upscale(tiny_ip_adapters: Path, tmp_path: Path) -> None:
    store = model_store(get_settings())
    for entry in ("tiny-sd15", "ip-adapter-sd15"):
        import_model(store, tiny_ip_adapters / entry)
    image, style = tmp_path / "in.png", tmp_path / "style.png"
    for n, path in enumerate((image, style)):
        pixels = (np.random.default_rng(n).random((64, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
    adapter = ["--ip-adapter", "ip-adapter-sd15", "--ip-adapter-image", str(style)]

    def edit(name: str, *extra: str) -> bytes:
        out = tmp_path / name
        run("edit", str(image), "a cat", "--model", "tiny-sd15", "--steps", "2", "--seed", "1",
            "--strength", "0.75", "-o", str(out), *extra)  # fmt: skip
        return out.read_bytes()

    plain = edit("plain.png")
    assert edit("zero.png", *adapter, "--ip-adapter-scale", "0") == plain
    assert edit("steered.png", *adapter, "--ip-adapter-scale", "0.6") != plain

    def upscale(name: str, *extra: str) -> bytes:
        out = tmp_path / name
        run("upscale", str(image), "-o", str(out), "--mode", "diffusion", "--model", "tiny-sd15",
            "--scale", "2", "--tile", "128", "--overlap", "32", "--pre-upscale", "lanczos",
            "--steps", "2", "--strength", "0.6", "--seed", "3", "--prompt", "a cat",
            *extra)  # fmt: skip
        return out.read_bytes()

    assert upscale("up.png") != upscale("up-steered.png", *adapter)
