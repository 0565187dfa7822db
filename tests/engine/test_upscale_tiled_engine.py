"""The diffusion upscale on the engine: the same bytes for any number of workers (local or Ray)
and across a SIGKILL and resume; captions inside the job; retries, failures and partial results."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus
from assetbox.errors import OutOfMemory
from assetbox.imaging import encode_image
from assetbox.kinds import PLANNERS
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from tests.utils.images import photo


@pytest.fixture
def data_dir(tiny_models: Path, tiny_captioners: dict[str, Path], tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    store = ModelStore(data_dir / "models")
    for entry in ("tiny-sdxl", "tiny-sdxl-controlnet"):
        import_model(store, tiny_models / entry)
    import_model(store, tiny_captioners["qwen2_5_vl"])
    return data_dir


def request(engine: Engine, **extra) -> dict:
    small = np.asarray(Image.fromarray(photo("chelsea")).resize((192, 96), Image.LANCZOS))
    return {
        "image": engine.put_blob(encode_image(small)),
        "mode": "diffusion",
        "model": "tiny-sdxl",
        "controlnet": {"model": "tiny-sdxl-controlnet"},
        "scale": 2,
        "tile": 128,
        "overlap": 32,
        "pre_upscale": "lanczos",
        "prompt": "a cat",
        "steps": 2,
        "strength": 1.0,
        "seed": 5,
    } | extra


def run(data_dir: Path, **settings) -> tuple[bytes, Engine, str]:
    engine = Engine(planners=PLANNERS, settings=Settings(data_dir=data_dir, **settings))
    try:
        job = engine.submit("upscale", request(engine))
        done = engine.wait(job.id, timeout=600)
        assert done.status == JobStatus.SUCCEEDED, done.error
        return engine.output_path(done, 0).read_bytes(), engine, job.id
    finally:
        engine.close()


def test_the_same_bytes_for_one_or_two_workers_local_or_ray(data_dir: Path, tmp_path: Path):
    import ray

    outputs = {}
    for name, settings in {
        "1 local": {"workers": 1},
        "2 local": {"workers": 2},
        "2 ray": {"workers": 2, "executor": "ray"},
    }.items():
        copy = tmp_path / name.replace(" ", "-")
        shutil.copytree(data_dir, copy)
        owned = settings.get("executor") == "ray" and not ray.is_initialized()
        if owned:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            outputs[name], _, _ = run(copy, **settings)
        finally:
            if owned:
                ray.shutdown()
    assert Image.open(io.BytesIO(outputs["1 local"])).size == (384, 192)
    assert outputs["2 local"] == outputs["1 local"]
    assert outputs["2 ray"] == outputs["1 local"]


RUNNER = """
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.imaging import encode_image
from assetbox.kinds import PLANNERS
from tests.engine.test_upscale_tiled_engine import request

if __name__ == "__main__":  # worker processes import the main module again
    data_dir, mode = Path(sys.argv[1]), sys.argv[2]
    engine = Engine(planners=PLANNERS, settings=Settings(data_dir=data_dir, workers=1))
    if mode == "submit":
        job = engine.submit("upscale", request(engine, batch=1), idempotency_key="tiled")
    else:
        job = engine.list()[0]
    print(job.id, flush=True)
    job = engine.wait(job.id, timeout=600)
    print(job.status.value, flush=True)
    engine.close()
"""


def test_a_killed_process_resumes_with_its_finished_tiles_and_the_same_bytes(
    data_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    crashed = tmp_path / "crashed"
    shutil.copytree(data_dir, crashed)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(crashed), "submit"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    job_id = proc.stdout.readline().strip()
    from assetbox.engine.jobs import UnitStatus
    from assetbox.engine.store import JobStore

    store = JobStore(crashed / "jobs.sqlite3")
    deadline = time.monotonic() + 300
    while sum(u.status == UnitStatus.DONE for u in store.units(job_id)) < 3:
        assert time.monotonic() < deadline, "no tile finished"
        assert proc.poll() is None, "the runner ended early"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker processes
    proc.wait()
    finished = {u.index for u in store.units(job_id) if u.status == UnitStatus.DONE}
    assert 3 <= len(finished) < 8  # 4x2 tiles, one per unit

    resumed = subprocess.run(
        [sys.executable, str(script), str(crashed), "resume"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.stdout.split() == [job_id, "succeeded"], resumed.stderr[-2000:]
    units = store.units(job_id)
    assert all(u.attempts == 1 for u in units if u.index in finished)  # not run again
    job = store.get(job_id)
    assert job.progress.resumed == len(finished)
    store.close()

    once = tmp_path / "once"
    shutil.copytree(data_dir, once)
    expected, _, _ = run(once, workers=1)
    engine = Engine(planners=PLANNERS, settings=Settings(data_dir=crashed), start=False)
    assert engine.output_path(job, 0).read_bytes() == expected


@pytest.fixture
def seen_prompts(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The prompt each tile reached the pipeline with (in-process: thread executor)."""
    import assetbox.pipelines.upscale_tiled as pipeline

    real = pipeline.diffuse_tiles
    seen: dict[str, str] = {}

    def recording(model, tiles, params, **kwargs):
        for tile in tiles:
            seen[f"{tile.x},{tile.y}"] = tile.prompt
        return real(model, tiles, params, **kwargs)

    monkeypatch.setattr(pipeline, "diffuse_tiles", recording)
    return seen


def test_auto_captions_go_into_each_tiles_prompt_and_overrides_win(
    data_dir: Path, seen_prompts: dict[str, str]
) -> None:
    engine = Engine(
        planners=PLANNERS, settings=Settings(data_dir=data_dir, executor="thread", workers=1)
    )
    try:
        overrides = {"0_0": {"prompt": "a red brick wall"}, "1_1": {"strength": 0.5}}
        job = engine.submit("upscale", request(engine, captions="auto", tiles=overrides))
        done = engine.wait(job.id, timeout=600)
        assert done.status == JobStatus.SUCCEEDED, done.error
        plan = PLANNERS["upscale"]
        req = plan.request_model.model_validate(done.request)
        assert req.captioner == "tiny-qwen2_5_vl"  # the only captioner, recorded
        captions = {c["id"]: c["caption"] for c in done.result["captions"]}
        from assetbox.kinds.upscale_tiled import plan_for

        grid = plan_for(req, 192, 96)
        assert set(captions) == {t.id for t in grid} - {"0_0"}  # the override needs none
        for tile in grid:
            prompt = seen_prompts[f"{tile.x},{tile.y}"]
            if tile.id == "0_0":
                assert prompt == "a red brick wall"
            else:
                assert captions[tile.id] and prompt == f"a cat, {captions[tile.id]}"
    finally:
        engine.close()


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch):
    """Make the tile at (x, y) fail with a transient error `times` times (None: always)."""
    import assetbox.pipelines.upscale_tiled as pipeline

    real = pipeline.diffuse_tiles
    plan: dict = {"at": None, "times": None, "failures": 0}

    def flaky(model, tiles, params, **kwargs):
        if any((t.x, t.y) == plan["at"] for t in tiles) and (
            plan["times"] is None or plan["failures"] < plan["times"]
        ):
            plan["failures"] += 1
            raise OutOfMemory("forced out of memory")
        return real(model, tiles, params, **kwargs)

    monkeypatch.setattr(pipeline, "diffuse_tiles", flaky)
    return plan


def test_a_tile_that_fails_twice_is_retried(data_dir: Path, failing: dict) -> None:
    failing.update(at=(0, 0), times=2)
    engine = Engine(
        planners=PLANNERS, settings=Settings(data_dir=data_dir, executor="thread", workers=1)
    )
    try:
        done = engine.wait(engine.submit("upscale", request(engine)).id, timeout=600)
        assert done.status == JobStatus.SUCCEEDED, done.error
        assert failing["failures"] == 2
    finally:
        engine.close()


def test_a_tile_that_always_fails_fails_the_job_or_keeps_its_pixels(
    data_dir: Path, failing: dict
) -> None:
    failing.update(at=(0, 0), times=None)
    engine = Engine(
        planners=PLANNERS, settings=Settings(data_dir=data_dir, executor="thread", workers=1)
    )
    try:
        done = engine.wait(engine.submit("upscale", request(engine)).id, timeout=600)
        assert done.status == JobStatus.FAILED
        assert "tile 0_0" in done.error.message and done.error.code == "out_of_memory"

        job = engine.submit("upscale", request(engine, allow_partial=True))
        done = engine.wait(job.id, timeout=600)
        assert done.status == JobStatus.SUCCEEDED, done.error
        (warning,) = done.result["warnings"]
        assert warning.startswith("tile 0_0 failed")
        out = np.asarray(Image.open(engine.output_path(done, 0)))
        small = np.asarray(Image.fromarray(photo("chelsea")).resize((192, 96), Image.LANCZOS))
        pre = np.asarray(Image.fromarray(small).resize((384, 192), Image.LANCZOS))
        # Tile 0_0's corner (x 0..88, y 0..64), where no neighbour reaches: pre-upscaled.
        assert np.array_equal(out[:64, :88], pre[:64, :88])
        assert not np.array_equal(out[:64, 300:], pre[:64, 300:])  # the others were redrawn
    finally:
        engine.close()
