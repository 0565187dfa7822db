"""Keeping control of long jobs: cancel that always ends the job, bounded shutdown that
requeues, step events, several jobs at once with a fair share of the workers."""

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
from assetbox.engine.store import JobStore
from assetbox.kinds import PLANNERS


def make_engine(tmp_path: Path, **overrides) -> Engine:
    return Engine(planners=PLANNERS, settings=Settings(data_dir=tmp_path / "data", **overrides))


def wait_until(condition, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def running_units(engine: Engine, job_id: str) -> int:
    return sum(u.status == UnitStatus.RUNNING for u in engine.store.units(job_id))


def worker_pids(engine: Engine) -> list[int]:
    return [slot.process.pid for slot in engine.executor._slots if slot.process is not None]


@pytest.mark.parametrize("executor", ["local", "thread"])
def test_a_stuck_unit_is_cancelled_and_the_next_job_runs(tmp_path: Path, executor: str) -> None:
    engine = make_engine(tmp_path, executor=executor, workers=1, cancel_grace_s=1)
    try:
        stuck = engine.submit("simulate", {"units": 1, "stuck_units": [0]})
        wait_until(lambda: running_units(engine, stuck.id) == 1, what="the unit to start")
        if executor == "local":
            wait_until(lambda: worker_pids(engine), what="the worker process")
        pids = worker_pids(engine) if executor == "local" else []
        asked = time.monotonic()
        assert engine.cancel(stuck.id).status == JobStatus.CANCELLING
        done = engine.wait(stuck.id, timeout=15)
        assert done.status == JobStatus.CANCELLED, "a stuck unit must not hold the cancel"
        assert time.monotonic() - asked < 15
        if executor == "local":  # the stuck worker's process was killed, not left behind
            (pid,) = pids
            wait_until(lambda: not _alive(pid), timeout=10, what="the stuck worker to die")
        after = engine.wait(engine.submit("simulate", {"units": 3}).id, timeout=60)
        assert after.status == JobStatus.SUCCEEDED  # the worker came back for the next job
    finally:
        engine.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until reaped: dead all the same.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_a_worker_killed_under_a_unit_is_replaced_and_the_unit_retried(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=1)
    try:
        job = engine.submit(
            "simulate", {"units": 3, "crash_units": [1], "marker_dir": str(tmp_path / "m")}
        )
        done = engine.wait(job.id, timeout=60)
        assert done.status == JobStatus.SUCCEEDED
        assert [u.attempts for u in engine.store.units(job.id)] == [1, 2, 1]
    finally:
        engine.close()


def test_close_interrupts_running_units_and_requeues_their_job(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=2, shutdown_grace_s=1)
    job = engine.submit("simulate", {"units": 6, "unit_seconds": 0.3, "stuck_units": [3]})
    wait_until(lambda: engine.get(job.id).progress.done >= 2, what="two units done")
    started = time.monotonic()
    engine.close()
    assert time.monotonic() - started < 8  # a stuck unit does not hold the shutdown
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    try:
        after = store.get(job.id)
        assert after.status == JobStatus.QUEUED  # not failed, not cancelled: it resumes
        units = store.units(job.id)
        assert not any(u.status == UnitStatus.RUNNING for u in units)
        assert sum(u.status == UnitStatus.DONE for u in units) >= 2
        last = store.events(job.id)[-1]
        assert last.data == {"status": "queued", "reason": "shutdown"}
    finally:
        store.close()


def test_step_events_are_throttled_and_the_last_step_always_sent(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=1, progress_events_per_s=4)
    try:
        job = engine.submit("simulate", {"units": 1, "steps": 200, "unit_seconds": 1.0})
        engine.wait(job.id, timeout=60)
        steps = [e.data for e in engine.store.events(job.id) if e.data.get("steps") == 200]
        # 1 s of steps at 4 events a second, plus the last step (generous for a slow machine)
        assert 2 <= len(steps) <= 10, len(steps)
        assert steps[-1]["step"] == 200 and steps[-1]["unit"] == 0
    finally:
        engine.close()


def test_every_step_is_an_event_when_the_rate_allows(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=1, progress_events_per_s=1000)
    try:
        job = engine.submit("simulate", {"units": 2, "steps": 8, "unit_seconds": 0.2})
        engine.wait(job.id, timeout=60)

        async def collect() -> list:
            return [event async for event in engine.events(job.id)]

        events = asyncio.run(collect())
        steps = [(e.data["unit"], e.data["step"]) for e in events if e.data.get("steps") == 8]
        # every step of both units (unit-done events repeat the last step)
        assert set(steps) == {(u, s) for u in range(2) for s in range(1, 9)}
    finally:
        engine.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_short_job_is_not_stuck_behind_a_long_one(tmp_path: Path, workers: int) -> None:
    engine = make_engine(tmp_path, workers=workers)
    try:
        warm = engine.submit("simulate", {"units": 2})  # workers up before the clock starts
        engine.wait(warm.id, timeout=60)
        long = engine.submit("simulate", {"units": 40, "unit_seconds": 0.25})
        wait_until(lambda: engine.get(long.id).progress.done >= 2, what="the long job to run")
        short = engine.submit("simulate", {"units": 1, "unit_seconds": 0.25})
        done = engine.wait(short.id, timeout=60)
        assert done.status == JobStatus.SUCCEEDED
        # before the long one is half done: about one unit behind it, not all of it
        assert engine.get(long.id).progress.done < min(20, 2 + 4 * workers)
        assert engine.wait(long.id, timeout=60).status == JobStatus.SUCCEEDED
    finally:
        engine.close()


def test_two_long_jobs_share_the_workers(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=2)
    try:
        first = engine.submit("simulate", {"units": 12, "unit_seconds": 0.2})
        second = engine.submit("simulate", {"units": 12, "unit_seconds": 0.2})
        engine.wait(first.id, timeout=60)
        # Interleaved: the second job had done a good part of its units by then.
        assert engine.get(second.id).progress.done >= 4
        assert engine.wait(second.id, timeout=60).status == JobStatus.SUCCEEDED
    finally:
        engine.close()


def test_failure_in_one_job_leaves_the_other_running(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=2)
    try:
        good = engine.submit("simulate", {"units": 8, "unit_seconds": 0.1})
        bad = engine.submit("simulate", {"units": 8, "unit_seconds": 0.1, "fail_units": [2]})
        assert engine.wait(bad.id, timeout=60).status == JobStatus.FAILED
        assert engine.wait(good.id, timeout=60).status == JobStatus.SUCCEEDED
    finally:
        engine.close()


SERVER = """
import sys
from pathlib import Path
from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.kinds import PLANNERS

if __name__ == "__main__":  # worker processes import the main module again
    settings = Settings(data_dir=Path(sys.argv[1]), workers=1, cancel_grace_s=600)
    engine = Engine(planners=PLANNERS, settings=settings)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "submit":
            job = engine.submit("simulate", {"units": 3, "stuck_units": [0]})
        elif command == "cancel":
            job = engine.cancel(arg)
        else:
            job = engine.get(arg)
        print(job.id, job.status.value, flush=True)
"""


def test_a_cancel_survives_a_kill_before_the_unit_stops(tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("submit\n")
        proc.stdin.flush()
        job_id, _ = proc.stdout.readline().split()
        store = JobStore(data / "jobs.sqlite3")
        wait_until(
            lambda: store.units(job_id) and store.units(job_id)[0].status == UnitStatus.RUNNING,
            what="the stuck unit to run",
        )
        proc.stdin.write(f"cancel {job_id}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == [job_id, "cancelling"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the unit never stops: it is still running
        proc.wait()
    attempts = [u.attempts for u in store.units(job_id)]
    assert store.get(job_id).status == JobStatus.CANCELLING

    engine = Engine(planners=PLANNERS, settings=Settings(data_dir=data, workers=1))  # the restart
    try:
        assert engine.get(job_id).status == JobStatus.CANCELLED
        engine.wait(engine.submit("simulate", {"units": 2}).id, timeout=60)  # it schedules
        assert [u.attempts for u in engine.store.units(job_id)] == attempts  # nothing ran again
        assert engine.get(job_id).status == JobStatus.CANCELLED
    finally:
        engine.close()
        store.close()


def test_a_surprise_in_one_jobs_handling_fails_it_and_frees_its_workers(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers=2, cancel_grace_s=1)
    calls = []

    def observe_once(kind: str, seconds: float, ok: bool) -> None:
        calls.append(kind)
        if len(calls) == 1:
            raise OSError("disk full")  # as a failed result write would

    engine.unit_observers.append(observe_once)
    try:
        first = engine.submit("simulate", {"units": 2, "unit_seconds": 0.2, "stuck_units": [1]})
        done = engine.wait(first.id, timeout=30)
        assert done.status == JobStatus.FAILED and "disk full" in done.error.message
        # Its stuck unit was abandoned with its worker, not left holding it.
        after = engine.wait(engine.submit("simulate", {"units": 4}).id, timeout=60)
        assert after.status == JobStatus.SUCCEEDED
    finally:
        engine.close()


def test_a_cancel_and_the_scheduler_taking_the_job_cannot_both_win(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    try:
        queued, _ = store.create_job("simulate", {}, "h1")
        assert store.request_cancel(queued.id).status == JobStatus.CANCELLED
        assert store.next_queued(queued.id) is None  # cancelled in one transaction: not taken
        taken, _ = store.create_job("simulate", {}, "h2")
        assert store.next_queued(taken.id) is not None
        assert store.request_cancel(taken.id).status == JobStatus.CANCELLING
    finally:
        store.close()


def test_a_worker_that_dies_young_is_restarted_with_a_back_off(tmp_path: Path) -> None:
    from assetbox.engine.processes import ProcessExecutor

    executor = ProcessExecutor(Settings(data_dir=tmp_path, workers=1))
    lives: list[float] = []

    def dies_at_once(slot) -> bool:
        lives.append(time.monotonic())
        return False

    executor._live_once = dies_at_once  # type: ignore[method-assign]
    executor.start()
    time.sleep(3.2)
    executor.close(timeout=1)
    # 0.5·2^n s apart (1, 2, 4 s ...): a handful of tries in 3 s, not a busy loop.
    assert 2 <= len(lives) <= 4, len(lives)


def test_a_second_engine_on_a_running_data_dir_is_refused_and_takes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from assetbox.cli import app
    from assetbox.config import get_settings
    from assetbox.errors import Conflict
    from tests.utils.images import encode_pil, photo

    first = make_engine(tmp_path, workers=1)
    try:
        job = first.submit("simulate", {"units": 10, "unit_seconds": 0.2})
        wait_until(lambda: first.get(job.id).progress.done >= 1, what="the job to run")
        with pytest.raises(Conflict, match="in use by a running assetbox") as info:
            make_engine(tmp_path, workers=1)
        assert str(os.getpid()) in info.value.message
        # The CLI next to a running service says what to do instead of taking its jobs.
        image = tmp_path / "in.png"
        image.write_bytes(encode_pil(photo("chelsea")[:32, :32].copy()))
        monkeypatch.setenv("ASSETBOX_DATA_DIR", str(tmp_path / "data"))
        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["upscale", str(image), "-o", str(tmp_path / "o.png")])
        assert result.exit_code == 1 and "--server" in result.output
        events = [e.data.get("reason") for e in first.store.events(job.id)]
        assert "restart" not in events  # nobody requeued the live job
        assert first.wait(job.id, timeout=60).status == JobStatus.SUCCEEDED
    finally:
        first.close()
    make_engine(tmp_path, workers=1).close()  # free again once the first one closed
