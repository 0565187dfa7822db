from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "upscale_tiled.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_upscale_tiled", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_ultimate_sd_upscale_count_is_redraw_plus_one_job_per_seam() -> None:
    usdu_tile_jobs = bench_module().usdu_tile_jobs
    assert usdu_tile_jobs(1024, 1024, 1024) == 1  # one tile, no seam
    assert usdu_tile_jobs(2048, 1024, 1024) == 2 + 1  # 1x2: two redraws, one seam
    assert usdu_tile_jobs(8192, 8192, 1024) == 3 * 64 - 8 - 8 == 176
    assert usdu_tile_jobs(16384, 16384, 1024) == 3 * 256 - 16 - 16 == 736
    # Partial tiles count whole: 3000x2000 is a 2x3 grid, 6 redraws and 2*2 + 1*3 = 7 seams.
    assert usdu_tile_jobs(3000, 2000, 1024) == 6 + 7


def test_fake_offsets_differ_between_neighbours_in_sign() -> None:
    tile_offset = bench_module().tile_offset
    for row in range(4):
        for col in range(4):
            offset = tile_offset(row, col)
            assert all(20 <= abs(int(v)) <= 30 for v in offset)
            assert (offset > 0).all() == ((row + col) % 2 == 0)
            assert ((tile_offset(row, col + 1) > 0) != (offset > 0)).all()


def test_bench_counts_one_denoiser_pass_per_tile_per_step_and_scores_seams() -> None:
    report = run_bench(
        *("--size", "512", "--tile", "128", "--overlap", "32", "--real-tiles", "4"),
    )
    assert report["tiles"] == 25 and report["grid"] == [5, 5]  # ceil((512-128)/96)+1 a side
    assert report["real_tiles"] == 4
    assert report["steps_run"] == report["steps_expected"] == 2  # int(4 steps * strength 0.5)
    assert report["denoiser_calls"] == report["denoiser_passes"] == 4 * 2
    assert report["one_pass_per_tile_per_step"] is True
    assert report["ours_passes"] == 25 * 2
    assert report["usdu_tile_jobs"] == 3 * 16 - 4 - 4  # a 4x4 grid of 128 px tiles
    assert report["usdu_passes"] == 40 * 2
    assert report["usdu_vs_ours"] == pytest.approx(40 / 25, abs=1e-3)
    assert report["diffused_mp_per_output_mp"] == pytest.approx(25 * 128**2 / 512**2, abs=1e-3)
    assert report["usdu_diffused_mp_per_output_mp"] == pytest.approx(40 / 16, abs=1e-3)
    assert report["peak_rss_mb"] >= report["peak_rss_units_mb"] > 0
    assert report["seconds"] > 0
    # With the colour-offset fake: colour fix and feathering leave no seam beyond what the
    # seam-free pre-upscale itself scores; no colour fix and hard pasting fails clearly.
    assert report["ser_vs_pre_upscaled"] <= 1.05
    assert report["ser_control"] > 1.5
    assert report["ser_control_vs_pre_upscaled"] > 1.5
    assert "ser" in report and "ser_pre_upscaled" in report


def test_batches_and_guidance_still_count_one_pass_per_tile_per_step() -> None:
    report = run_bench(
        *("--size", "256", "--tile", "128", "--overlap", "32", "--batch", "2"),
        *("--guidance", "5", "--no-seams"),
    )
    assert report["tiles"] == report["real_tiles"] == 9
    assert report["units"] == 5  # four batches of two tiles, one of one
    assert report["guidance_factor"] == 2
    assert report["denoiser_calls"] == 5 * 2  # one call per unit per step
    assert report["denoiser_passes"] == 9 * 2
    assert report["one_pass_per_tile_per_step"] is True
    assert "ser" not in report
