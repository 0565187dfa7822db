"""The real service: `assetbox serve` (uvicorn) as a process, killed and restarted mid-job."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from assetbox.engine.jobs import UnitStatus
from assetbox.engine.store import JobStore
from tests.utils.images import encode_pil, photo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "ASSETBOX_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "assetbox.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not come up")


def test_serve_submit_follow_download_kill_and_resume(builtin_store, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(data_dir, port)
    try:
        # 1. A small job from submit through its events to the download.
        small = encode_pil(np.ascontiguousarray(photo("chelsea")[:40, :56]))
        body = {"image": base64.b64encode(small).decode(), "model": "realesr-animevideov3-x4"}
        job = httpx.post(f"{base}/v1/upscale", json=body, timeout=30).json()
        with httpx.stream("GET", f"{base}/v1/jobs/{job['id']}/events", timeout=60) as events:
            last = [line for line in events.iter_lines() if line.startswith("data: ")][-1]
        assert json.loads(last[6:])["status"] == "succeeded"
        done = httpx.get(f"{base}/v1/jobs/{job['id']}").json()
        png = httpx.get(base + done["outputs"][0]["url"]).content
        assert Image.open(io.BytesIO(png)).size == (224, 160)

        # 2. A longer job, killed mid-way.
        big = encode_pil(np.ascontiguousarray(photo("coffee")[:160, :200]))
        body = {
            "image": base64.b64encode(big).decode(),
            "model": "realesr-animevideov3-x2",
            "tile": 16,
        }
        job_id = httpx.post(f"{base}/v1/upscale", json=body, timeout=30).json()["id"]
        store = JobStore(data_dir / "jobs.sqlite3")
        deadline = time.monotonic() + 120
        while sum(u.status == UnitStatus.DONE for u in store.units(job_id)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait()
        kept = {u.index for u in store.units(job_id) if u.status == UnitStatus.DONE}
        assert store.get(job_id).status == "running"

        server = start_server(data_dir, port)
        deadline = time.monotonic() + 180
        while (job := httpx.get(f"{base}/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline
            time.sleep(0.2)
        assert job["progress"]["resumed"] == len(kept)
        units = store.units(job_id)
        assert all(units[i].attempts == 1 for i in kept)
        assert job["outputs"][0]["width"] == 400
    finally:
        server.kill()
        server.wait()


def test_cli_runs_jobs_on_a_server_through_the_client(builtin_store, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from assetbox.cli import app

    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    server = start_server(data_dir, port)
    runner = CliRunner()
    try:
        source = tmp_path / "in.png"
        source.write_bytes(encode_pil(np.ascontiguousarray(photo("chelsea")[:40, :56])))
        out = tmp_path / "out.png"
        args = ["upscale", str(source), "-o", str(out), "--model", "realesr-animevideov3-x2"]
        result = runner.invoke(app, [*args, "--server", server_url])
        assert result.exit_code == 0, result.output
        assert Image.open(out).size == (112, 80)
        # Nothing ran in this process: the job is the server's.
        listed = runner.invoke(app, ["jobs", "list", "--server", server_url])
        assert listed.exit_code == 0 and "succeeded" in listed.output
        (job,) = httpx.get(f"{server_url}/v1/jobs").json()["data"]
        shown = runner.invoke(app, ["jobs", "show", job["id"], "--server", server_url])
        assert json.loads(shown.output)["outputs"][0]["width"] == 112
        # The same command again is the same job (idempotency key), not a second one.
        out.unlink()
        again = runner.invoke(app, [*args, "--server", server_url])
        assert again.exit_code == 0 and Image.open(out).size == (112, 80)
        assert len(httpx.get(f"{server_url}/v1/jobs").json()["data"]) == 1
        # Errors from the server come back naming the field, with nothing written.
        bad = runner.invoke(
            app,
            [
                "upscale",
                str(source),
                "-o",
                str(tmp_path / "x.png"),
                "--server",
                server_url,
                "--model",
                "no-such-model",
            ],
        )
        assert bad.exit_code in (1, 2) and "no-such-model" in bad.output
        assert not (tmp_path / "x.png").exists()
        missing = runner.invoke(app, ["jobs", "show", "nope", "--server", server_url])
        assert missing.exit_code == 2 and "nope" in missing.output
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_cli_without_a_reachable_server_says_so(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from assetbox.cli import app

    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["jobs", "list", "--server", url])
    assert result.exit_code == 1 and "cannot reach" in result.output


def test_cli_generate_on_a_server(tiny_models: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from assetbox.cli import app
    from assetbox.models.importer import import_model
    from assetbox.models.store import ModelStore

    data_dir = tmp_path / "data"
    import_model(ModelStore(data_dir / "models"), tiny_models / "tiny-sd15")
    port = free_port()
    server = start_server(data_dir, port)
    try:
        out = tmp_path / "cat.png"
        args = ["generate", "a cat", "-o", str(out), "--model", "tiny-sd15", "--steps", "2"]
        args += ["--width", "64", "--height", "64", "--seed", "3", "--count", "2"]
        result = CliRunner().invoke(app, [*args, "--server", f"http://127.0.0.1:{port}"])
        assert result.exit_code == 0, result.output
        assert Image.open(tmp_path / "cat-0.png").size == (64, 64)
        assert Image.open(tmp_path / "cat-1.png").size == (64, 64)
        (job,) = httpx.get(f"http://127.0.0.1:{port}/v1/jobs").json()["data"]
        assert [o["seed"] for o in job["outputs"]] == [3, 4]  # it ran on the server
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_sigterm_mid_job_exits_quickly_and_the_job_resumes_identically(
    builtin_store, tmp_path: Path
) -> None:
    import threading

    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    image = encode_pil(np.ascontiguousarray(photo("astronaut")[100:356, 100:420]))
    body = {
        "image": base64.b64encode(image).decode(),
        "model": "realesr-animevideov3-x4",
        "tile": 32,
    }
    server = start_server(data_dir, port)
    try:
        job_id = httpx.post(f"{base}/v1/upscale", json=body, timeout=30).json()["id"]

        # A client follows the job's events while the server is told to stop: an open stream
        # must not hold the shutdown.
        def follow() -> None:
            try:
                with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", timeout=60) as r:
                    for _ in r.iter_lines():
                        pass
            except httpx.HTTPError:
                pass  # the server went away under it: expected

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        store = JobStore(data_dir / "jobs.sqlite3")
        deadline = time.monotonic() + 120
        while sum(u.status == UnitStatus.DONE for u in store.units(job_id)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        asked = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert time.monotonic() - asked < 10, "SIGTERM must end the service within 10 s"
        kept = {u.index for u in store.units(job_id) if u.status == UnitStatus.DONE}
        job = store.get(job_id)
        assert job.status == "queued"  # back in the queue, not failed
        assert job.progress.total == 20 and len(kept) < 20

        server = start_server(data_dir, port)
        deadline = time.monotonic() + 300
        while (job := httpx.get(f"{base}/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline
            time.sleep(0.2)
        units = store.units(job_id)
        assert all(units[i].attempts == 1 for i in kept)  # finished units not redone
        resumed = httpx.get(base + job["outputs"][0]["url"]).content
        fresh = httpx.post(
            f"{base}/v1/upscale", json=body, headers={"Prefer": "wait=300"}, timeout=310
        ).json()
        assert fresh["status"] == "succeeded" and fresh["id"] != job_id
        assert httpx.get(base + fresh["outputs"][0]["url"]).content == resumed
    finally:
        server.kill()
        server.wait()
