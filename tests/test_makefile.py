"""The Makefile's install steps, read with `make -n` (nothing runs): `make serve` installs the
service and its runtime dependencies only, `make test` adds the test tools (the dev extra)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV_TOOLS = ["pytest", "ray", "schemathesis", "hypothesis", "ruff", "scikit-image", "torchao"]
DEV_TOOLS += ["playwright"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The Makefile and pyproject.toml in a folder without a .venv."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    os.utime(tmp_path / "pyproject.toml", (1_000_000_000, 1_000_000_000))
    return tmp_path


def make_env() -> dict[str, str]:
    # Under `make test` the outer make's flags reach this one ("Entering directory" lines).
    drop = {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def dry_run(folder: Path, target: str) -> list[str]:
    done = subprocess.run(
        ["make", "-n", target, "PYTHON=/nonexistent/python3"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env=make_env(),
        check=True,
    )
    return done.stdout.splitlines()


def installs(lines: list[str]) -> list[str]:
    return [line for line in lines if "pip" in line and " install " in line]


def mentions_dev(line: str) -> bool:
    return "[dev]" in line or any(re.search(rf"\b{re.escape(t)}\b", line) for t in DEV_TOOLS)


def test_serve_installs_no_test_tools(checkout: Path) -> None:
    lines = dry_run(checkout, "serve")
    assert installs(lines), lines  # it does install, on first use
    assert any('-e ".[ui]"' in line for line in installs(lines))  # the web UI at /ui
    assert not [line for line in installs(lines) if mentions_dev(line)]
    assert not [line for line in lines if "apt-get" in line]
    assert lines[-1].endswith("assetbox serve --host 127.0.0.1 --port 7000")


def test_test_installs_the_dev_extra(checkout: Path) -> None:
    lines = dry_run(checkout, "test")
    assert any('-e ".[dev,ui]"' in line for line in installs(lines))
    assert any("pytest" in line for line in lines)
    # The browser tests' Chromium, from Debian, only where none is on the PATH.
    commands = "\n".join(lines).replace("\\\n", " ").splitlines()  # continuations joined
    chromium = [line for line in commands if "apt-get install" in line]
    assert len(chromium) == 1 and "chromium-headless-shell" in chromium[0]
    assert "command -v chromium-headless-shell" in chromium[0]
    assert not [line for line in lines if "playwright install" in line]


def stamp(folder: Path, *names: str) -> None:
    (folder / ".venv").mkdir(exist_ok=True)
    for n, name in enumerate(names):  # later stamps are newer, as make would leave them
        (folder / ".venv" / name).touch()
        os.utime(folder / ".venv" / name, (2_000_000_000 + n, 2_000_000_000 + n))


def test_serve_then_test_adds_only_the_dev_extra(checkout: Path) -> None:
    stamp(checkout, ".installed-serve")
    lines = installs(dry_run(checkout, "test"))
    assert '-e ".[dev,ui]"' in lines[0]
    # After it only what the dev stamp and the runpod stamp add beside the extras (the nsfw
    # check's onnxruntime and NudeNet, runpod without its tomlkit pin): never the service again.
    assert not [line for line in lines[1:] if "torch" in line or '-e ".[' in line], lines


def test_test_then_serve_installs_nothing(checkout: Path) -> None:
    stamp(checkout, ".installed-serve", ".installed-dev")
    assert installs(dry_run(checkout, "serve")) == []
    assert dry_run(checkout, "serve") == [".venv/bin/assetbox serve --host 127.0.0.1 --port 7000"]


def test_port_is_a_variable(checkout: Path) -> None:
    stamp(checkout, ".installed-serve")
    done = subprocess.run(
        ["make", "-n", "serve", "PORT=7123"],
        cwd=checkout,
        capture_output=True,
        text=True,
        env=make_env(),
    )
    assert done.stdout.strip().endswith("--port 7123")


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text().split("\n\n")[1]
