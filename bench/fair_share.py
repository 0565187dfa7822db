"""How long a one-unit job waits behind a long job: the engine's fair share, measured.

A long job of `--units` sleeping units runs on `--workers` workers; once it has a few units done,
`--small` one-unit jobs are submitted one after another (each after the previous finished). Each
small job's latency is compared with the same job run alone on idle workers (the baseline, in the
same run) and reported in unit times. Prints one JSON line per worker count:
{"workers", "small_alone_s", "small_behind_long_p50_s", "wait_in_units_p50", "wait_in_units_max",
"long_done_when_small_finished"}.

    python bench/fair_share.py --workers 1,2 --units 40 --unit-seconds 0.5 --small 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.kinds import PLANNERS


def measure(workers: int, units: int, unit_seconds: float, small: int, executor: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(
            planners=PLANNERS,
            settings=Settings(data_dir=Path(tmp), executor=executor, workers=workers),
        )
        try:
            one = {"units": 1, "unit_seconds": unit_seconds}
            engine.wait(engine.submit("simulate", {"units": workers}).id, timeout=120)  # warm
            started = time.perf_counter()
            engine.wait(engine.submit("simulate", one).id, timeout=120)
            alone = time.perf_counter() - started
            long = engine.submit("simulate", {"units": units, "unit_seconds": unit_seconds})
            while engine.get(long.id).progress.done < 2:
                time.sleep(0.01)
            latencies, long_done = [], []
            for _ in range(small):
                started = time.perf_counter()
                engine.wait(engine.submit("simulate", one).id, timeout=600)
                latencies.append(time.perf_counter() - started)
                long_done.append(engine.get(long.id).progress.done)
            engine.wait(long.id, timeout=3600)
        finally:
            engine.close()
    waits = [(latency - alone) / unit_seconds for latency in latencies]
    return {
        "executor": executor,
        "workers": workers,
        "small_alone_s": round(alone, 3),
        "small_behind_long_p50_s": round(statistics.median(latencies), 3),
        "wait_in_units_p50": round(statistics.median(waits), 2),
        "wait_in_units_max": round(max(waits), 2),
        "long_done_when_small_finished": long_done,
        "long_units": units,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--units", type=int, default=40)
    parser.add_argument("--unit-seconds", type=float, default=0.5)
    parser.add_argument("--small", type=int, default=5)
    parser.add_argument("--executor", default="local", choices=["local", "thread"])
    args = parser.parse_args(argv)
    for workers in (int(w) for w in args.workers.split(",")):
        row = measure(workers, args.units, args.unit_seconds, args.small, args.executor)
        print(json.dumps(row))
    return 0


if __name__ == "__main__":  # worker processes import the main module again
    sys.exit(main())
