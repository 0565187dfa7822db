"""What the CLI prints on stdout for scripts: one line per output written, or with --json one
JSON object (the job and its outputs, or the error), whether or not stdout is a terminal."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from assetbox.cli import app
from tests.utils.images import photo

runner = CliRunner()
MODEL = "realesr-animevideov3-x2"


@pytest.fixture
def small_png(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.ascontiguousarray(photo("chelsea")[:40, :56])).save(path)
    return path


@pytest.mark.usefixtures("builtin_data_dir")
def test_each_output_is_named_on_stdout_when_piped(small_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["upscale", str(small_png), "-o", str(out), "--model", MODEL])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    size = out.stat().st_size
    assert line.startswith(f"wrote {out} (112x80, {size} bytes, job ")
    assert "seed" not in line  # an upscale has none
    assert result.stderr == ""  # no progress bar away from a terminal


@pytest.mark.usefixtures("builtin_data_dir")
def test_json_is_the_job_and_its_outputs_and_nothing_else(small_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.webp"
    args = ["upscale", str(small_png), "-o", str(out), "--model", MODEL, "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)  # the whole of stdout is one object
    assert body["status"] == "succeeded" and body["job_id"]
    assert body["outputs"] == [
        {"path": str(out), "width": 112, "height": 80, "seed": None, "bytes": out.stat().st_size}
    ]
    assert Image.open(out).size == (112, 80)


@pytest.mark.usefixtures("builtin_data_dir")
@pytest.mark.parametrize(
    ("args", "code", "field", "exit_code"),
    [
        (["--model", "missing-model"], "not_found", "model", 1),
        (["--scale", "5"], "invalid_input", "scale", 2),
        (["--tile", "eight"], "invalid_input", "tile", 2),  # refused by click, before us
    ],
)
def test_json_errors_keep_the_exit_code(
    small_png: Path, tmp_path: Path, args: list[str], code: str, field: str, exit_code: int
) -> None:
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["upscale", str(small_png), "-o", str(out), "--json", *args])
    assert result.exit_code == exit_code
    error = json.loads(result.stdout)["error"]
    assert error["code"] == code and error["field"] == field and error["message"]
    assert not out.exists()


def test_json_error_for_an_unreadable_input(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png"), "--json"]
    )
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["field"] == "input" and "cannot read" in error["message"]


def test_generate_and_edit_have_json(tmp_path: Path) -> None:
    for command, exit_code, code in (
        (["generate", "a cat"], 1, "not_found"),  # no such model in the store
        (["edit", str(tmp_path / "missing.png"), "a cat"], 2, "invalid_input"),
    ):
        out = tmp_path / "o.png"
        result = runner.invoke(app, [*command, "-o", str(out), "--model", "nope", "--json"])
        assert result.exit_code == exit_code, result.output
        error = json.loads(result.stdout)["error"]
        assert error["code"] == code and set(error) == {"code", "message", "field"}
    missing = runner.invoke(app, ["generate", "a cat", "--model", "m", "--json"])
    assert missing.exit_code == 2  # no -o
    assert json.loads(missing.stdout)["error"]["field"] == "output"


def test_generate_names_seeds_and_jobs(tiny_sd15_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cat.png"
    args = ["generate", "a cat", "-o", str(out), "--model", "tiny-sd15", "--steps", "1"]
    args += ["--width", "64", "--height", "64", "--seed", "7", "--count", "2"]
    lines = runner.invoke(app, args)
    assert lines.exit_code == 0, lines.output
    first, second = lines.stdout.splitlines()
    assert first.startswith(f"wrote {tmp_path / 'cat-0.png'} (64x64, ")
    assert ", seed 7, job " in first and ", seed 8, job " in second
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)
    assert [(o["path"], o["seed"]) for o in body["outputs"]] == [
        (str(tmp_path / "cat-0.png"), 7),
        (str(tmp_path / "cat-1.png"), 8),
    ]


@pytest.fixture
def tiny_sd15_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> Path:
    from assetbox.config import get_settings
    from assetbox.models.importer import import_model
    from assetbox.models.store import ModelStore
    from assetbox.testing.tiny_models import write

    folder = tmp_path_factory.mktemp("tiny")
    write("sd15", folder)
    data_dir = tmp_path_factory.mktemp("data")
    import_model(ModelStore(data_dir / "models"), folder / "tiny-sd15")
    monkeypatch.setenv("ASSETBOX_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    return data_dir


@pytest.fixture
def api(builtin_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The CLI's server commands talking to an in-process app."""
    from fastapi.testclient import TestClient

    import assetbox.cli
    from assetbox.client import Client
    from assetbox.server import create_app

    class Kept(Client):
        def close(self) -> None:  # the test client outlives each command
            pass

    with TestClient(create_app()) as http:
        monkeypatch.setattr(assetbox.cli, "_client", lambda server=None: Kept(http=http))
        yield http


def test_jobs_list_and_cancel_as_json(api, small_png: Path) -> None:
    import base64

    body = {"image": base64.b64encode(small_png.read_bytes()).decode(), "model": MODEL}
    job = api.post("/v1/upscale", json=body, headers={"Prefer": "wait=60"}).json()
    listed = runner.invoke(app, ["jobs", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (shown,) = [j for j in json.loads(listed.stdout)["jobs"] if j["id"] == job["id"]]
    assert shown["status"] == "succeeded"
    cancelled = runner.invoke(app, ["jobs", "cancel", job["id"], "--json"])
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.stdout)["id"] == job["id"]  # a finished job stays as it is
    missing = runner.invoke(app, ["jobs", "cancel", "no-such-job", "--json"])
    assert missing.exit_code == 2
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"


@pytest.mark.usefixtures("builtin_data_dir")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(small_png: Path, tmp_path: Path, umask: int) -> None:
    out = tmp_path / "out.png"
    command = [sys.executable, "-m", "assetbox.cli", "upscale", str(small_png), "-o", str(out)]
    command += ["--model", MODEL]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),  # the child's own umask, not this process's
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out} (112x80, ")  # also when not a terminal
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
