"""Scheduling overhead of the job engine, with simulated workers that sleep instead of computing.

A GPU worker leaves the host CPU idle, so a sleeping unit is a fair stand-in. The workers are
started first; the clock runs from submitting the job to its completion. Prints one JSON line:
{"makespan_s": M, "ideal_s": I, "efficiency": I/M, "per_unit_overhead_ms": O}, where the ideal is
ceil(units / workers) * unit_seconds and O = (M - I) * workers / units.

    python bench/scheduler.py --executor ray --workers 9 --units 81 --unit-seconds 0.5
    python bench/scheduler.py --executor local --workers 1 --units 200 --unit-seconds 0

`--executor thread,local` runs both in one go and adds each one's overhead as a ratio to the
first's (`local` runs units in worker processes, `thread` in threads of this process).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus
from assetbox.kinds import PLANNERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--executor", default="local", help="local, thread, ray or a list")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--units", type=int, default=81)
    parser.add_argument("--unit-seconds", type=float, default=0.5)
    args = parser.parse_args(argv)

    baseline = None
    for executor in args.executor.split(","):
        row = run(executor, args.workers, args.units, args.unit_seconds)
        if "error" in row:
            print(json.dumps(row))
            return 1
        if baseline is None:
            baseline = row["makespan_s"]
        row["makespan_vs_first"] = round(row["makespan_s"] / baseline, 3)
        print(json.dumps(row))
    return 0


def run(executor: str, workers: int, units: int, unit_seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), executor=executor, workers=workers)
        engine = Engine(
            planners=PLANNERS, settings=settings
        )  # starts the workers (Ray actors answer a ping first)
        try:
            warm = engine.submit("simulate", {"units": workers})
            engine.wait(warm.id, timeout=120)
            start = time.perf_counter()
            job = engine.submit("simulate", {"units": units, "unit_seconds": unit_seconds})
            job = engine.wait(job.id, timeout=3600)
            makespan = time.perf_counter() - start
        finally:
            engine.close()
    if job.status != JobStatus.SUCCEEDED:
        return {"error": job.error.model_dump() if job.error else job.status}
    ideal = math.ceil(units / workers) * unit_seconds
    return {
        "executor": executor,
        "workers": workers,
        "units": units,
        "makespan_s": round(makespan, 3),
        "ideal_s": round(ideal, 3),
        "efficiency": round(ideal / makespan, 3) if ideal else None,
        "per_unit_overhead_ms": round((makespan - ideal) * workers / units * 1000, 3),
    }


if __name__ == "__main__":
    sys.exit(main())
