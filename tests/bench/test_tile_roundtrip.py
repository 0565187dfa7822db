from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "tile_roundtrip.py"


def test_bench_prints_one_json_line_with_the_promised_fields() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--size", "500x301", "--tile", "128", "--overlap", "16"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["tiles"] == 5 * 3  # ceil((500-128)/112)+1 by ceil((301-128)/112)+1
    assert report["max_abs_err"] <= 1
    assert report["baseline_full_canvas"]["max_abs_err"] <= 1
    assert report["seconds"] > 0 and report["peak_rss_mb"] > 0
    assert report["rss_vs_baseline"] > 0
