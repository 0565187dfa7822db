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
