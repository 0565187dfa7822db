from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus, UnitStatus
from assetbox.engine.store import SCHEMA_VERSION, JobStore
from assetbox.errors import Conflict, InvalidInput, NotFound, QueueFull
from assetbox.kinds import PLANNERS


def make_engine(tmp_path: Path, **overrides) -> Engine:
    return Engine(planners=PLANNERS, settings=Settings(data_dir=tmp_path / "data", **overrides))


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(tmp_path, workers=2)
    yield engine
    engine.close()


def test_a_job_runs_its_units_and_lists_its_output(engine: Engine) -> None:
    job = engine.submit("simulate", {"units": 6, "steps": 2})
    assert job.status == JobStatus.QUEUED
    done = engine.wait(job.id, timeout=30)
    assert done.status == JobStatus.SUCCEEDED
    assert done.progress.done == done.progress.total == 6
    assert len(done.outputs) == 1
    data = engine.output_path(done, 0).read_bytes()
    assert len(data) == 6 * 32
    assert [u.status for u in engine.store.units(job.id)] == [UnitStatus.DONE] * 6
    assert all(u.attempts == 1 for u in engine.store.units(job.id))


def test_list_filters_and_pages_newest_first(engine: Engine) -> None:
    ids = [engine.submit("simulate", {"units": 1}).id for _ in range(3)]
    for job_id in ids:
        engine.wait(job_id, timeout=30)
    assert [j.id for j in engine.list()] == ids[::-1]
    assert [j.id for j in engine.list(limit=1, offset=1)] == [ids[1]]
    assert len(engine.list(status=JobStatus.SUCCEEDED, kind="simulate")) == 3
    assert engine.list(status=JobStatus.FAILED) == []


def test_events_replay_from_a_sequence_number(engine: Engine) -> None:
    job = engine.submit("simulate", {"units": 3})
    engine.wait(job.id, timeout=30)

    async def collect(since: int) -> list:
        return [event async for event in engine.events(job.id, since=since)]

    events = asyncio.run(collect(0))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].data["status"] == "queued"
    assert events[-1].data["status"] == "succeeded"
    later = asyncio.run(collect(events[2].seq))
    assert later == events[3:]


def test_cancel_a_running_job(engine: Engine) -> None:
    job = engine.submit("simulate", {"units": 20, "unit_seconds": 0.2, "steps": 4})
    while engine.get(job.id).progress.done < 2:
        time.sleep(0.02)
    accepted = engine.cancel(job.id)
    assert accepted.status == JobStatus.CANCELLING  # recorded at once, never `running`
    assert engine.store.get(job.id).status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
    cancelled = engine.wait(job.id, timeout=15)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.outputs == []
    started = sum(1 for u in engine.store.units(job.id) if u.attempts)
    time.sleep(0.5)
    assert sum(1 for u in engine.store.units(job.id) if u.attempts) == started  # none started
    assert started < 20
    assert engine.get(job.id).status == JobStatus.CANCELLED


def test_cancel_a_queued_job(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    try:
        first = engine.submit("simulate", {"units": 2, "unit_seconds": 0.3})
        second = engine.submit("simulate", {"units": 2})
        assert engine.cancel(second.id).status == JobStatus.CANCELLED
        assert engine.wait(first.id, timeout=30).status == JobStatus.SUCCEEDED
        assert engine.store.units(second.id) == []
    finally:
        engine.close()


def test_transient_failures_are_retried_and_recorded(engine: Engine) -> None:
    job = engine.submit("simulate", {"units": 4, "flaky_units": [1, 3]})
    done = engine.wait(job.id, timeout=30)
    assert done.status == JobStatus.SUCCEEDED
    assert [u.attempts for u in engine.store.units(job.id)] == [1, 2, 1, 2]


def test_transient_failures_give_up_after_the_attempt_limit(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, unit_max_attempts=1)
    try:
        job = engine.submit("simulate", {"units": 2, "flaky_units": [0]})
        done = engine.wait(job.id, timeout=30)
        assert done.status == JobStatus.FAILED
        assert done.error is not None and done.error.code == "out_of_memory"
    finally:
        engine.close()


def test_a_permanent_error_fails_the_job_at_once(engine: Engine) -> None:
    job = engine.submit("simulate", {"units": 30, "unit_seconds": 0.05, "fail_units": [2]})
    done = engine.wait(job.id, timeout=30)
    assert done.status == JobStatus.FAILED
    assert done.error is not None and done.error.code == "invalid_input"
    assert done.outputs == []
    units = engine.store.units(job.id)
    assert units[2].attempts == 1 and units[2].status == UnitStatus.FAILED
    assert sum(1 for u in units if u.attempts) < 30  # the rest never started


def test_idempotency_key_returns_the_same_job_or_conflicts(engine: Engine) -> None:
    first = engine.submit("simulate", {"units": 2}, idempotency_key="k1")
    again = engine.submit("simulate", {"units": 2}, idempotency_key="k1")
    assert again.id == first.id
    with pytest.raises(Conflict, match="k1"):
        engine.submit("simulate", {"units": 3}, idempotency_key="k1")


def test_identical_requests_reuse_results_when_enabled(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, reuse_results=True)
    try:
        first = engine.wait(engine.submit("simulate", {"units": 3}).id, timeout=30)
        second = engine.submit("simulate", {"units": 3, "steps": 1})  # same after defaults
        assert second.status == JobStatus.SUCCEEDED and second.reused_from == first.id
        assert second.outputs == first.outputs
        assert engine.store.units(second.id) == []  # nothing computed
        other = engine.submit("simulate", {"units": 4})
        assert other.reused_from is None
    finally:
        engine.close()


def test_queue_full_refuses_with_retry_after(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_queued_jobs=2)
    engine._closing.set()  # keep jobs queued: the scheduler takes nothing
    try:
        engine.submit("simulate", {"units": 1})
        engine.submit("simulate", {"units": 1})
        with pytest.raises(QueueFull) as info:
            engine.submit("simulate", {"units": 1})
        assert info.value.retry_after_s >= 1
    finally:
        engine.close()


def test_bad_requests_name_the_field(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="`units`") as info:
        engine.submit("simulate", {"units": 0})
    assert info.value.field == "units"
    with pytest.raises(InvalidInput, match="`kind`"):
        engine.submit("paint", {})
    with pytest.raises(NotFound):
        engine.get("nope")


def test_schema_is_versioned(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.schema_version == SCHEMA_VERSION
    store.close()
    assert JobStore(tmp_path / "jobs.sqlite3").schema_version == SCHEMA_VERSION


RUNNER = """
import sys
from pathlib import Path
from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.kinds import PLANNERS

if __name__ == "__main__":  # worker processes import the main module again
    data_dir, mode = Path(sys.argv[1]), sys.argv[2]
    engine = Engine(planners=PLANNERS, settings=Settings(data_dir=data_dir, workers=2))
    if mode == "submit":
        job = engine.submit(
            "simulate", {"units": 20, "unit_seconds": 0.25}, idempotency_key="crash"
        )
    else:
        job = engine.list()[0]
    print(job.id, flush=True)
    job = engine.wait(job.id, timeout=120)
    print(job.status.value, flush=True)
    engine.close()
"""


def test_a_killed_process_resumes_without_redoing_finished_units(tmp_path: Path) -> None:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    data = tmp_path / "crash"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data), "submit"], stdout=subprocess.PIPE, text=True
    )
    job_id = proc.stdout.readline().strip()
    store = JobStore(data / "jobs.sqlite3")
    deadline = time.monotonic() + 60
    while sum(u.status == UnitStatus.DONE for u in store.units(job_id)) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {u.index for u in store.units(job_id) if u.status == UnitStatus.DONE}
    assert 5 <= len(before) < 20
    assert store.get(job_id).status == JobStatus.RUNNING  # as the kill left it

    resumed = subprocess.run(
        [sys.executable, str(script), str(data), "resume"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert resumed.stdout.split() == [job_id, "succeeded"]
    units = store.units(job_id)
    assert all(units[i].attempts == 1 for i in before)  # not run again
    assert all(u.status == UnitStatus.DONE for u in units)
    job = store.get(job_id)
    assert job.progress.resumed == len(before)

    clean = make_engine(tmp_path / "clean")
    try:
        reference = clean.wait(
            clean.submit("simulate", {"units": 20, "unit_seconds": 0.25}).id, timeout=60
        )
        expected = clean.output_path(reference, 0).read_bytes()
    finally:
        clean.close()
    assert (data / job.outputs[0].path).read_bytes() == expected


def test_an_old_schema_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from assetbox.engine.store import MIGRATIONS

    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO jobs (id, kind, status, request, request_hash, created_at, progress) "
        "VALUES ('old', 'simulate', 'succeeded', '{}', 'h', '2026-01-01T00:00:00+00:00', '{}')"
    )
    db.commit()
    db.close()
    store = JobStore(path)
    assert store.schema_version == SCHEMA_VERSION == 4
    old = store.get("old")
    assert old.status == JobStatus.SUCCEEDED and old.delivery is None and old.webhook is None
    assert old.result is None and old.priority == 1 and old.api_key is None
