"""Scheduling overhead of the job engine, with simulated workers that sleep instead of computing.

A GPU worker leaves the host CPU idle, so a sleeping unit is a fair stand-in. The workers are
started first; the clock runs from submitting the job to its completion. Prints one JSON line:
{"makespan_s": M, "ideal_s": I, "efficiency": I/M, "per_unit_overhead_ms": O}, where the ideal is
ceil(units / workers) * unit_seconds and O = (M - I) * workers / units.

    python bench/scheduler.py --executor ray --workers 9 --units 81 --unit-seconds 0.5
    python bench/scheduler.py --executor local --workers 1 --units 200 --unit-seconds 0
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--units", type=int, default=81)
    parser.add_argument("--unit-seconds", type=float, default=0.5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), executor=args.executor, workers=args.workers)
        engine = Engine(settings)  # starts the workers (Ray actors answer a ping first)
        try:
            warm = engine.submit("simulate", {"units": args.workers})
            engine.wait(warm.id, timeout=120)
            start = time.perf_counter()
            job = engine.submit(
                "simulate", {"units": args.units, "unit_seconds": args.unit_seconds}
            )
            job = engine.wait(job.id, timeout=3600)
            makespan = time.perf_counter() - start
        finally:
            engine.close()
    if job.status != JobStatus.SUCCEEDED:
        print(json.dumps({"error": job.error.model_dump() if job.error else job.status}))
        return 1
    ideal = math.ceil(args.units / args.workers) * args.unit_seconds
    print(
        json.dumps(
            {
                "executor": args.executor,
                "workers": args.workers,
                "units": args.units,
                "makespan_s": round(makespan, 3),
                "ideal_s": round(ideal, 3),
                "efficiency": round(ideal / makespan, 3) if ideal else None,
                "per_unit_overhead_ms": round(
                    (makespan - ideal) * args.workers / args.units * 1000, 3
                ),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
