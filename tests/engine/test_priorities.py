"""Scheduling between jobs: priority first, then a fair share between API keys, then between
jobs; a key at its running-job limit waits while other keys' jobs run."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus, UnitStatus
from assetbox.errors import InvalidInput
from assetbox.kinds import PLANNERS
from assetbox.server.auth import key_id


def make_engine(tmp_path: Path, **overrides) -> Engine:
    settings = Settings(data_dir=tmp_path / "data", executor="thread", **overrides)
    return Engine(planners=PLANNERS, settings=settings)


def wait_until_a_unit_runs(engine: Engine, job_id: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if any(u.status == UnitStatus.RUNNING for u in engine.store.units(job_id)):
            return
        time.sleep(0.01)
    raise AssertionError("the job's unit never started")


def test_a_high_job_submitted_after_ten_normal_ones_starts_first(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=1)
    try:
        busy = engine.submit("simulate", {"units": 1, "unit_seconds": 0.5})
        wait_until_a_unit_runs(engine, busy.id)  # the only worker is busy from here
        normal = [engine.submit("simulate", {"units": 1, "unit_seconds": 0.01}) for _ in range(10)]
        high = engine.submit("simulate", {"units": 1, "unit_seconds": 0.01}, priority="high")
        for job in [*normal, high]:
            assert engine.wait(job.id, timeout=30).status == JobStatus.SUCCEEDED
        started = {job.id: engine.get(job.id).started_at for job in [*normal, high]}
        assert all(started[high.id] < started[job.id] for job in normal)  # type: ignore[operator]
    finally:
        engine.close()


def test_a_low_job_waits_for_the_normal_ones(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=1)
    try:
        busy = engine.submit("simulate", {"units": 1, "unit_seconds": 0.3})
        wait_until_a_unit_runs(engine, busy.id)
        low = engine.submit("simulate", {"units": 1}, priority="low")
        normal = [engine.submit("simulate", {"units": 1}) for _ in range(3)]
        for job in [low, *normal]:
            assert engine.wait(job.id, timeout=30).status == JobStatus.SUCCEEDED
        low_started = engine.get(low.id).started_at
        assert all(engine.get(j.id).started_at < low_started for j in normal)  # type: ignore[operator]
        with pytest.raises(InvalidInput) as refused:
            engine.submit("simulate", {"units": 1}, priority="urgent")  # type: ignore[arg-type]
        assert refused.value.field == "priority"
    finally:
        engine.close()


def test_workers_are_shared_between_keys_before_jobs(tmp_path: Path) -> None:
    # Key a has five 4-unit jobs, key b one. Shared between jobs, b's job would get a sixth of
    # the workers and finish in the last round with the others; shared between keys it gets
    # half, and finishes before any of a's.
    engine = make_engine(tmp_path, workers=2)
    try:
        many = [
            engine.submit("simulate", {"units": 4, "unit_seconds": 0.1}, api_key="a")
            for _ in range(5)
        ]
        one = engine.submit("simulate", {"units": 4, "unit_seconds": 0.1}, api_key="b")
        for job in [*many, one]:
            assert engine.wait(job.id, timeout=30).status == JobStatus.SUCCEEDED
        one_finished = engine.get(one.id).finished_at
        assert all(engine.get(j.id).finished_at > one_finished for j in many)  # type: ignore[operator]
    finally:
        engine.close()


def test_a_key_at_its_running_limit_waits_while_other_keys_run(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=2, max_running_jobs_per_key=1)
    try:
        first, second, third = (
            engine.submit("simulate", {"units": 2, "unit_seconds": 0.1}, api_key="a")
            for _ in range(3)
        )
        other = engine.submit("simulate", {"units": 2, "unit_seconds": 0.1}, api_key="b")
        jobs = [first, second, third, other]
        most = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = [engine.get(job.id) for job in jobs]
            running = [j for j in now if j.status == JobStatus.RUNNING and j.api_key == "a"]
            most = max(most, len(running))
            if all(j.status.is_terminal() for j in now):
                break
            time.sleep(0.01)
        assert [engine.get(j.id).status for j in jobs] == [JobStatus.SUCCEEDED] * 4
        assert most == 1
        assert engine.get(other.id).started_at < engine.get(second.id).started_at  # type: ignore[operator]
    finally:
        engine.close()


def test_a_key_id_is_a_digest_of_the_bearer_token() -> None:
    ident = key_id("Bearer sk-secret")
    assert ident is not None and len(ident) == 16 and "secret" not in ident
    assert key_id("bearer sk-secret") == ident and key_id("Bearer other") != ident
    assert key_id(None) is None and key_id("Basic abc") is None


def test_a_request_s_priority_and_key_reach_the_job(builtin_store, tmp_path: Path) -> None:
    import shutil

    from fastapi.testclient import TestClient

    from assetbox.server import create_app
    from tests.utils.images import encode_pil, photo

    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    settings = Settings(data_dir=data_dir, executor="thread")
    png = encode_pil(photo("chelsea")[:40, :56].copy())
    body = {"image": base64.b64encode(png).decode(), "model": "realesr-animevideov3-x2"}
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": "Bearer k1", "Prefer": "wait=60"}
        response = client.post("/v1/upscale", json=body | {"priority": "high"}, headers=headers)
        assert response.status_code == 200, response.text
        job = client.app.state.engine.get(response.json()["id"])  # type: ignore[attr-defined]
        assert job.priority == 2 and job.api_key == key_id("Bearer k1")
        assert "priority" not in job.request  # not part of the kind's request (or its hash)
        refused = client.post("/v1/upscale", json=body | {"priority": "urgent"})
        assert refused.status_code == 422 and "priority" in refused.text
