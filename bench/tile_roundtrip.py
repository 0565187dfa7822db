"""Split a random image into tiles, pass them through unchanged, blend them back.

Prints one JSON line: {"tiles", "max_abs_err" (0..255 units), "seconds", "peak_rss_mb"} for our band
assembly, plus the same figures for a baseline measured in the same run: the usual way of blending
tiles, one full-canvas float32 accumulator and weight sum (same masks, same linear light), and the
ratios between the two. Each case runs in its own process so that its peak RSS is its own.

    python bench/tile_roundtrip.py --size 8192 --tile 1024 --overlap 128
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time

import numpy as np

from assetbox.imaging import TilePlan, axis_weights, blend_tiles, extract_tile
from assetbox.imaging.transfer import from_working, to_working


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height or width)


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the peak of this process over its whole life.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def max_abs_err(a: np.ndarray, b: np.ndarray, rows: int = 256) -> int:
    """Largest per-pixel difference, computed in row chunks to keep int16 copies small."""
    return max(
        int(np.abs(a[y : y + rows].astype(np.int16) - b[y : y + rows].astype(np.int16)).max())
        for y in range(0, a.shape[0], rows)
    )


def full_canvas_blend(image: np.ndarray, plan: TilePlan, ramp: str) -> np.ndarray:
    """Baseline: accumulate every tile into full-canvas float32 arrays, divide once at the end."""
    acc = np.zeros((plan.height, plan.width, 3), dtype=np.float32)
    wsum = np.zeros((plan.height, plan.width), dtype=np.float32)
    for tile in plan:
        rows = min(tile.height, plan.height - tile.y)
        cols = min(tile.width, plan.width - tile.x)
        wy = axis_weights(plan.ys, plan.tile_height, tile.row, 1, ramp)[:rows]  # type: ignore[arg-type]
        wx = axis_weights(plan.xs, plan.tile_width, tile.col, 1, ramp)[:cols]  # type: ignore[arg-type]
        weight = wy[:, None] * wx[None, :]
        pixels = to_working(extract_tile(image, tile)[:rows, :cols])
        acc[tile.y : tile.y + rows, tile.x : tile.x + cols] += pixels * weight[..., None]
        wsum[tile.y : tile.y + rows, tile.x : tile.x + cols] += weight
    acc /= wsum[..., None]
    return from_working(acc)


def run_case(case: str, width: int, height: int, tile: int, overlap: int, ramp: str, seed: int):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    plan = TilePlan.for_image(width, height, tile, overlap)
    start = time.perf_counter()
    if case == "bands":
        out = blend_tiles(plan, ((t, extract_tile(image, t)) for t in plan), ramp=ramp)  # type: ignore[arg-type]
    else:
        out = full_canvas_blend(image, plan, ramp)
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    return {
        "tiles": len(plan),
        "max_abs_err": max_abs_err(out, image),
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(rss, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=parse_size, required=True, help="W or WxH")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--ramp", choices=["cosine", "linear"], default="cosine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the full-canvas baseline")
    args = parser.parse_args(argv)
    width, height = args.size
    common = (width, height, args.tile, args.overlap, args.ramp, args.seed)

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        ours = pool.apply(run_case, ("bands", *common))
    result = dict(ours)
    if not args.no_baseline:
        with ctx.Pool(1, maxtasksperchild=1) as pool:
            base = pool.apply(run_case, ("full_canvas", *common))
        result |= {
            "baseline_full_canvas": base,
            "time_vs_baseline": round(ours["seconds"] / max(base["seconds"], 1e-9), 2),
            "rss_vs_baseline": round(ours["peak_rss_mb"] / max(base["peak_rss_mb"], 1e-9), 2),
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
