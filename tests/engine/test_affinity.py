"""Model affinity in the scheduler: a free worker that holds a job's model takes that job's units
first, where fairness between jobs is a tie or one unit off, yet a job waiting with nothing in
flight still gets a worker within about one unit's time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.executors import ThreadExecutor, UnitTask
from assetbox.engine.jobs import JobStatus, UnitStatus
from assetbox.engine.planners import UnitContext
from assetbox.kinds import PLANNERS
from assetbox.kinds.simulate import SimulatePlanner, SimulateRequest
from assetbox.models.cache import ModelCache


class RecordingPlanner(SimulatePlanner):
    """`simulate`, recording which worker thread started which model's unit, in order."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()

    def run_unit(self, request: BaseModel, payload: dict[str, Any], ctx: UnitContext) -> bytes:
        assert isinstance(request, SimulateRequest)
        with self._lock:
            self.started.append((threading.current_thread().name, request.model))
        return super().run_unit(request, payload, ctx)


def make_engine(tmp_path: Path, workers: int, planner: RecordingPlanner) -> Engine:
    settings = Settings(data_dir=tmp_path / "data", executor="thread", workers=workers)
    return Engine(planners={**PLANNERS, "simulate": planner}, settings=settings)


def switches_per_worker(started: list[tuple[str, str | None]]) -> dict[str, int]:
    last: dict[str, str | None] = {}
    switches: dict[str, int] = {}
    for worker, model in started:
        if worker in last and last[worker] != model:
            switches[worker] = switches.get(worker, 0) + 1
        last[worker] = model
        switches.setdefault(worker, 0)
    return switches


def test_warm_workers_keep_their_model_when_the_share_is_one_unit_off(tmp_path: Path) -> None:
    # Three workers, two jobs of different models: one job gets two workers, the other one.
    # Without affinity the third worker is a tie between the jobs whenever it frees up, so
    # round robin hands it to the other model's job about every other unit; with it, it keeps
    # its model.
    planner = RecordingPlanner()
    engine = make_engine(tmp_path, 3, planner)
    try:
        request = {"units": 24, "unit_seconds": 0.05}
        a = engine.submit("simulate", {**request, "model": "a"})
        b = engine.submit("simulate", {**request, "model": "b"})
        for job in (a, b):
            assert engine.wait(job.id, timeout=30).status == JobStatus.SUCCEEDED
    finally:
        engine.close()
    assert len(planner.started) == 48
    switches = switches_per_worker(planner.started)
    assert len(switches) == 3, switches
    # At the end a job runs out of units and its workers take the other one's (a switch each).
    assert all(n <= 2 for n in switches.values()), (switches, planner.started)
    assert sum(switches.values()) <= 3, (switches, planner.started)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_new_job_of_another_model_still_starts_within_a_unit(
    tmp_path: Path, workers: int
) -> None:
    # Every worker holds model a and the long job a runs on all of them; job b (model b) must
    # take the next free worker, not wait for a to end: affinity never starves a job.
    planner = RecordingPlanner()
    engine = make_engine(tmp_path, workers, planner)
    try:
        long = engine.submit("simulate", {"units": 40, "unit_seconds": 0.1, "model": "a"})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            running = [u for u in engine.store.units(long.id) if u.status == UnitStatus.RUNNING]
            if len(running) == workers:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the long job never took every worker")
        before = len(planner.started)
        new = engine.submit("simulate", {"units": 2, "unit_seconds": 0.1, "model": "b"})
        assert engine.wait(new.id, timeout=30).status == JobStatus.SUCCEEDED
        assert engine.get(long.id).status == JobStatus.RUNNING  # b did not wait for a's end
        after = [model for _, model in planner.started[before:]]
        # b's first unit comes before a's next two at most (one may have started as b came).
        assert "b" in after[:3], after
        engine.cancel(long.id)
    finally:
        engine.close()


def test_idle_models_lists_the_free_threads_models_fresh_ones_first() -> None:
    executor = ThreadExecutor(3, model_cache=ModelCache(1 << 20))
    planner = SimulatePlanner()

    def run(model: str | None) -> Future[bytes]:
        request = {"units": 1, "model": model}
        return executor.submit(UnitTask(planner, request, {"index": 0}, 1), never, ignore)

    never: Callable[[], bool] = lambda: False  # noqa: E731
    ignore: Callable[[int, int], None] = lambda step, steps: None  # noqa: E731
    try:
        executor.start()
        assert executor.idle_models() == [None, None, None]
        run("a").result(timeout=10)
        assert sorted(executor.idle_models(), key=str) == [None, None, "a"]
        assert executor.idle_models()[-1] == "a"  # a unit of another model takes a fresh one
        run("b").result(timeout=10)
        assert executor.idle_models() == [None, "a", "b"]
        run("a").result(timeout=10)  # back to the worker that holds a
        assert executor.idle_models() == [None, "a", "b"]
    finally:
        executor.close()


def test_the_process_executor_routes_by_model_and_lists_its_idle_models(tmp_path: Path) -> None:
    from assetbox.engine.processes import ProcessExecutor

    executor = ProcessExecutor(Settings(data_dir=tmp_path, workers=2))
    planner = SimulatePlanner()

    def submit(model: str | None, seconds: float = 0.0) -> Future[bytes]:
        request = {"units": 1, "unit_seconds": seconds, "model": model}
        task = UnitTask(planner, request, {"index": 0}, 1, str(tmp_path))
        return executor.submit(task, lambda: False, lambda step, steps: None)

    try:
        executor.start()
        assert executor.idle_models() == [None, None]
        both = [submit(None, 0.2), submit(None, 0.2)]  # both processes up and serving
        for future in both:
            future.result(timeout=60)
        submit("a").result(timeout=30)
        assert executor.idle_models() == [None, "a"]  # fresh first
        submit("b").result(timeout=30)  # takes the fresh one, not a's
        assert executor.idle_models() == ["a", "b"]
        submit("a").result(timeout=30)
        assert executor.idle_models() == ["a", "b"]  # it went to the worker holding a
    finally:
        executor.close(timeout=5)
