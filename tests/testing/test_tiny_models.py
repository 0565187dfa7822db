"""`python -m assetbox.testing.tiny_models` writes entries that `assetbox models import` takes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assetbox.cli import app


@pytest.mark.parametrize("family", ["sd15", "flux1"])
def test_every_written_entry_imports(tmp_path: Path, family: str) -> None:
    out = tmp_path / "tiny"
    written = subprocess.run(
        [
            *(sys.executable, "-m", "assetbox.testing.tiny_models", "--family", family),
            *("--out", str(out), "--controlnet", "--lora", "style"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert written.returncode == 0, written.stderr
    entries = [Path(line) for line in written.stdout.split()]
    expected = {f"tiny-{family}", f"tiny-{family}-controlnet", "style.safetensors"}
    if family != "flux1":
        expected.add(f"tiny-{family}-single.safetensors")
    assert {entry.name for entry in entries} == expected
    kinds = set()
    for entry in entries:
        result = CliRunner().invoke(app, ["models", "import", str(entry)])
        assert result.exit_code == 0, result.output
        assert f"{family} " in result.output
        kinds.add(result.output.split()[-1])
    assert kinds == {"checkpoint", "controlnet", "lora"}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_tiny_captioner_is_written_as_real_ones_and_imports(tmp_path: Path, family: str) -> None:
    out = tmp_path / "tiny"
    written = subprocess.run(
        [
            sys.executable,
            "-m",
            "assetbox.testing.tiny_models",
            "--family",
            family,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert written.returncode == 0, written.stderr
    assert [Path(line) for line in written.stdout.split()] == [out / f"tiny-{family}"]
    assert {p.name for p in (out / f"tiny-{family}").iterdir()} == {
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    result = CliRunner().invoke(app, ["models", "import", str(out / f"tiny-{family}")])
    assert result.exit_code == 0, result.output
    assert f"{family} captioner" in result.output


def test_tiny_captioners_are_the_same_every_time(tmp_path: Path) -> None:
    from assetbox.testing.tiny_models import write

    for family in ("qwen2_5_vl", "qwen3_vl"):
        first = write(family, tmp_path / "a")[0]
        second = write(family, tmp_path / "b")[0]
        for path in sorted(first.iterdir()):
            assert path.read_bytes() == (second / path.name).read_bytes(), path.name


def test_a_tiny_captioner_has_no_controlnet_or_lora(tmp_path: Path) -> None:
    from assetbox.testing.tiny_models import write

    with pytest.raises(ValueError, match="captioner"):
        write("qwen2_5_vl", tmp_path, loras=("style",))
