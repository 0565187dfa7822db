from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "caption.py"


def test_bench_compares_batches_on_the_same_captions() -> None:
    result = subprocess.run(
        [
            *(sys.executable, str(BENCH), "--size", "512", "--tile", "256", "--overlap", "32"),
            *("--batch", "4", "--max-tokens", "6", "--rounds", "1"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert lines[1].split() == ["case", "images/s", "s/image", "vs", "batch", "1"]
    assert [line.split()[0] for line in lines[2:4]] == ["batch_1", "batch_4"]
    report = json.loads(lines[-1])
    assert report["tiles"] == 3 * 3  # ceil((512-256)/224)+1 per side
    assert report["same_captions"] is True
    assert report["batch_1_images_per_s"] > 0 and report["batch_4_images_per_s"] > 0
    # The ratio printed is the ratio of the two rates.
    ratio = report["batch_4_images_per_s"] / report["batch_1_images_per_s"]
    assert report["batch_4_vs_batch_1"] == pytest.approx(ratio, abs=0.01)
