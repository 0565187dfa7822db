"""The Ray executor on a local Ray instance (started once for this file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus, UnitStatus
from assetbox.kinds import PLANNERS

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_instance():  # this file's own: other files in this process start other clusters
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def ray_engine(ray_instance, tmp_path: Path):
    engine = Engine(
        planners=PLANNERS, settings=Settings(data_dir=tmp_path / "data", executor="ray", workers=2)
    )
    yield engine
    engine.close()


def test_ray_runs_a_job(ray_engine: Engine) -> None:
    job = ray_engine.wait(ray_engine.submit("simulate", {"units": 6}).id, timeout=60)
    assert job.status == JobStatus.SUCCEEDED
    assert len(ray_engine.output_path(job, 0).read_bytes()) == 6 * 32


def test_a_worker_that_dies_is_replaced_and_its_unit_runs_once(
    ray_engine: Engine, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    job = ray_engine.submit(
        "simulate", {"units": 6, "crash_units": [2], "marker_dir": str(markers)}
    )
    done = ray_engine.wait(job.id, timeout=120)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert (markers / "crashed-2").exists()  # the worker really died on its first attempt
    units = ray_engine.store.units(job.id)
    assert all(u.status == UnitStatus.DONE for u in units)
    assert [u.attempts for u in units] == [1, 1, 2, 1, 1, 1]
    assert units[2].error is None
    # Every unit's result is in the output exactly once, in order.
    import hashlib

    expected = b"".join(hashlib.sha256(f"unit {i}".encode()).digest() for i in range(6))
    assert ray_engine.output_path(done, 0).read_bytes() == expected


def test_errors_inside_ray_units_keep_their_kind(ray_engine: Engine) -> None:
    flaky = ray_engine.wait(
        ray_engine.submit("simulate", {"units": 3, "flaky_units": [1]}).id, timeout=60
    )
    assert flaky.status == JobStatus.SUCCEEDED  # OutOfMemory crossed Ray and was retried
    failed = ray_engine.wait(
        ray_engine.submit("simulate", {"units": 3, "fail_units": [0]}).id, timeout=60
    )
    assert failed.status == JobStatus.FAILED and failed.error.code == "invalid_input"


def test_ray_runs_an_upscale_job(ray_instance, builtin_store, tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from assetbox.imaging import decode_image, encode_image
    from tests.utils.images import photo

    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    engine = Engine(
        planners=PLANNERS, settings=Settings(data_dir=data_dir, executor="ray", workers=2)
    )
    try:
        pixels = np.ascontiguousarray(photo("chelsea")[:60, :80])
        blob = engine.put_blob(encode_image(pixels))
        job = engine.submit(
            "upscale",
            {"image": blob, "model": "realesr-animevideov3-x2", "tile": 32, "engine": "torch"},
        )
        done = engine.wait(job.id, timeout=300)
        assert done.status == JobStatus.SUCCEEDED, done.error
        assert len(engine.store.units(job.id)) > 1
        out = decode_image(engine.output_path(done, 0).read_bytes())
        assert (out.width, out.height) == (160, 120)
    finally:
        engine.close()


def test_units_go_to_a_free_worker_that_holds_their_model() -> None:
    from assetbox.engine.ray_executor import RayExecutor, _Slot

    executor = RayExecutor.__new__(RayExecutor)  # only the routing, no actors
    executor._node_models = {"node-2": {"model-c"}}
    a, b = _Slot(None, False, "node-1", "model-a"), _Slot(None, False, "node-1", "model-b")
    c = _Slot(None, False, "node-2", None)
    assert executor._pick([a, b, c], "model-b") is b  # warm
    assert executor._pick([a, b, c], "model-c") is c  # its node has the files
    assert executor._pick([a, b, c], "model-d") is a  # nobody holds it: the first free one


def test_ray_units_report_steps_and_stop_when_cancelled(ray_engine: Engine) -> None:
    import time

    job = ray_engine.submit("simulate", {"units": 1, "steps": 100, "unit_seconds": 20})
    deadline = time.monotonic() + 60
    while (ray_engine.get(job.id).progress.step or 0) < 3:  # steps arrive from the actor
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ray_engine.cancel(job.id).status == JobStatus.CANCELLING
    cancelled = ray_engine.wait(job.id, timeout=15)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.progress.step < 100  # the unit stopped, it did not run to its end
    (unit,) = ray_engine.store.units(job.id)
    assert unit.status != UnitStatus.DONE


def test_the_service_on_ray_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    # ray.init puts in a SIGTERM handler that exits at once with status 15 (SystemExit in the
    # middle of the app, a traceback); the service keeps uvicorn's graceful one, which closes
    # the engine (requeueing running jobs) and then ends by the signal, as with every executor.
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.server.test_server_process import free_port

    port = free_port()
    env = {
        **os.environ,
        "ASSETBOX_DATA_DIR": str(tmp_path / "data"),
        "ASSETBOX_EXECUTOR": "ray",
        "ASSETBOX_UI": "false",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "assetbox.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("the service did not come up")
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == -signal.SIGTERM, output[-2000:]  # uvicorn re-raises it
    assert "Traceback" not in output and "SystemExit" not in output
    assert "Application shutdown complete" in output, output[-2000:]
