"""A fleet under mixed load: one long job, short jobs arriving while it runs, on shared workers.

One job of `--large-units` sleeping units runs on `--workers` workers, alone first (the baseline,
in the same run), then again while `--small` one-unit jobs arrive one by one at random moments
(`--seed`) of the baseline's makespan. Measured, in unit times where it says so:

- each small job's wait: from its submission (the job's `created_at`) to its unit's start, the
  moment the engine marks the unit running (`JobStore.start_unit`, which it calls as it hands the
  unit to a worker; the bench listens to that call, as the unit table keeps no start time);
- the large job's makespan (`created_at` to `finished_at`) with the small jobs against alone;
- the fleet's efficiency: work / (workers x makespan), the work being units x unit time and the
  makespan from the large job's submission to the last job's end; `occupancy` is the same with
  the measured unit intervals (start to result stored) in place of the work.

Prints one JSON line with the numbers and the issue's targets, each with whether it is met:
p95 wait <= 2 unit times; efficiency >= 0.9; large makespan <= solo + small work / workers + 2
unit times.

    python bench/fleet.py --unit-seconds 0.5 --workers 4 --executor local
    python bench/fleet.py --executor ray --ray-nodes 2   # a head and two worker nodes, here
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import Job, JobStatus
from assetbox.kinds import PLANNERS


class UnitClock:
    """When the engine starts and stores each unit, read off its store's calls."""

    def __init__(self, engine: Engine) -> None:
        self.started: dict[tuple[str, int], datetime] = {}
        self.finished: dict[tuple[str, int], datetime] = {}
        self._lock = threading.Lock()
        start_unit, finish_unit = engine.store.start_unit, engine.store.finish_unit

        def started(job_id: str, index: int) -> int:
            attempt = start_unit(job_id, index)
            with self._lock:
                self.started.setdefault((job_id, index), datetime.now(UTC))
            return attempt

        def finished(job_id: str, index: int, result_path: str) -> None:
            finish_unit(job_id, index, result_path)
            with self._lock:
                self.finished[(job_id, index)] = datetime.now(UTC)

        engine.store.start_unit = started  # type: ignore[method-assign]
        engine.store.finish_unit = finished  # type: ignore[method-assign]

    def first_start(self, job_id: str) -> datetime:
        with self._lock:
            return min(at for (job, _), at in self.started.items() if job == job_id)

    def busy_s(self, job_ids: set[str]) -> float:
        with self._lock:
            return sum(
                (self.finished[key] - at).total_seconds()
                for key, at in self.started.items()
                if key[0] in job_ids and key in self.finished
            )


def _makespan(job: Job) -> float:
    assert job.status == JobStatus.SUCCEEDED, (job.id, job.status, job.error)
    assert job.finished_at is not None
    return (job.finished_at - job.created_at).total_seconds()


@contextmanager
def ray_cluster(nodes: int, workers: int) -> Iterator[str | None]:
    """The address of a Ray cluster on this machine: a head that runs nothing and `nodes` worker
    nodes sharing the workers' CPUs; none (a local instance the executor starts) for 0 nodes."""
    if nodes == 0:
        yield None
        return
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for n in range(nodes):
            cluster.add_node(num_cpus=workers // nodes + (n < workers % nodes))
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def measure(
    *,
    workers: int,
    large_units: int,
    small: int,
    unit_seconds: float,
    executor: str,
    ray_nodes: int = 0,
    seed: int = 0,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp, ray_cluster(ray_nodes, workers) as address:
        settings = Settings(
            data_dir=Path(tmp), executor=executor, workers=workers, ray_address=address
        )
        engine = Engine(planners=PLANNERS, settings=settings)
        try:
            clock = UnitClock(engine)
            # 1. Warm every worker, so neither run pays for starting them.
            engine.wait(engine.submit("simulate", {"units": workers}).id, timeout=300)
            large = {"units": large_units, "unit_seconds": unit_seconds}
            one = {"units": 1, "unit_seconds": unit_seconds}
            # 2. The baseline: the large job alone.
            solo = _makespan(engine.wait(engine.submit("simulate", large).id, timeout=3600))
            # 3. The fleet: the large job again, the small ones arriving at random moments of
            #    its solo makespan. Not evenly spaced: its units run in step, so arrivals a
            #    fixed gap apart would all meet the same phase of a unit and wait alike.
            rng = random.Random(seed)
            arrivals = sorted(rng.uniform(0, solo) for _ in range(small))
            fleet_start = time.monotonic()
            big = engine.submit("simulate", large)
            small_ids = []
            for at in arrivals:
                time.sleep(max(0.0, fleet_start + at - time.monotonic()))
                small_ids.append(engine.submit("simulate", one).id)
            done = [engine.wait(job_id, timeout=3600) for job_id in [big.id, *small_ids]]
            waits = [
                (clock.first_start(job.id) - job.created_at).total_seconds() / unit_seconds
                for job in done[1:]
            ]
            busy = clock.busy_s({job.id for job in done})
        finally:
            engine.close()
    # 4. The numbers and the targets.
    large_makespan = _makespan(done[0])
    assert all(job.finished_at is not None for job in done)
    fleet_makespan = (max(j.finished_at for j in done) - done[0].created_at).total_seconds()  # type: ignore[type-var, operator]
    work = (large_units + small) * unit_seconds
    efficiency = work / (workers * fleet_makespan)
    p95 = statistics.quantiles(waits, n=20, method="inclusive")[18] if len(waits) > 1 else waits[0]
    large_limit = solo + small * unit_seconds / workers + 2 * unit_seconds
    targets = {
        "small_wait_p95_units": {"value": round(p95, 2), "at_most": 2.0, "met": p95 <= 2.0},
        "efficiency": {"value": round(efficiency, 3), "at_least": 0.9, "met": efficiency >= 0.9},
        "large_makespan_s": {
            "value": round(large_makespan, 3),
            "at_most": round(large_limit, 3),
            "met": large_makespan <= large_limit,
        },
    }
    return {
        "executor": executor,
        "ray_nodes": ray_nodes,
        "workers": workers,
        "unit_seconds": unit_seconds,
        "large_units": large_units,
        "small_jobs": small,
        "seed": seed,
        "small_wait_units_p50": round(statistics.median(waits), 2),
        "small_wait_units_p95": round(p95, 2),
        "small_wait_units_max": round(max(waits), 2),
        "large_solo_makespan_s": round(solo, 3),
        "large_fleet_makespan_s": round(large_makespan, 3),
        "large_makespan_vs_solo": round(large_makespan / solo, 3),
        "fleet_makespan_s": round(fleet_makespan, 3),
        "efficiency": round(efficiency, 3),
        "occupancy": round(busy / (workers * fleet_makespan), 3),
        "targets": targets,
        "all_met": all(t["met"] for t in targets.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--unit-seconds", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--large-units", type=int, default=81)
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="of the small jobs' arrivals")
    parser.add_argument("--executor", default="local", choices=["local", "thread", "ray"])
    parser.add_argument(
        "--ray-nodes",
        type=int,
        default=0,
        help="with --executor ray: worker nodes of a Ray cluster started on this machine "
        "(ray.cluster_utils.Cluster); 0 runs on a local Ray instance",
    )
    args = parser.parse_args(argv)
    if args.ray_nodes and (args.executor != "ray" or not 0 < args.ray_nodes <= args.workers):
        parser.error("--ray-nodes needs --executor ray and at most --workers nodes")
    if args.small < 1 or args.large_units < 1 or args.unit_seconds <= 0:
        parser.error("--small and --large-units need at least 1, --unit-seconds more than 0")
    row = measure(
        workers=args.workers,
        large_units=args.large_units,
        small=args.small,
        unit_seconds=args.unit_seconds,
        executor=args.executor,
        ray_nodes=args.ray_nodes,
        seed=args.seed,
    )
    print(json.dumps(row))
    return 0


if __name__ == "__main__":  # worker processes import the main module again
    sys.exit(main())
