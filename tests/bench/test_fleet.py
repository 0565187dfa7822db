from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fleet.py"


def test_bench_prints_one_json_line_with_the_numbers_and_the_targets() -> None:
    # Scaled down (8 units of 50 ms, two arrivals, two threads): the output's shape, never the
    # timing targets, which only a full run on idle cores can speak to.
    args = ["--unit-seconds", "0.05", "--large-units", "8", "--small", "2", "--workers", "2"]
    result = subprocess.run(
        [sys.executable, str(BENCH), *args, "--executor", "thread"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert (report["workers"], report["large_units"], report["small_jobs"]) == (2, 8, 2)
    assert 0 <= report["small_wait_units_p50"] <= report["small_wait_units_p95"]
    assert report["small_wait_units_p95"] <= report["small_wait_units_max"]
    assert min(report["large_solo_makespan_s"], report["large_fleet_makespan_s"]) > 0
    assert 0 < report["efficiency"] <= 1 and 0 < report["occupancy"] <= 1
    assert set(report["targets"]) == {"small_wait_p95_units", "efficiency", "large_makespan_s"}
    for target in report["targets"].values():
        assert isinstance(target["met"], bool) and "value" in target
    assert report["all_met"] == all(t["met"] for t in report["targets"].values())
