"""Tile captioning throughput: batches of 8 tiles per forward pass against one tile at a time.

scikit-image's astronaut, enlarged (Lanczos) to --size and cut with `TilePlan` into --tile
tiles (default: 2048 px, 640 px tiles, 128 overlap: 16 tiles, each scaled by the processor to
448x448, i.e. 256 visual tokens, what a 1024 px tile costs too). The tiny random Qwen2.5-VL from
`assetbox.testing.tiny_models` captions every tile with the default system prompt and
--max-tokens, greedy, once per round at batch 1 and at batch --batch (interleaved, after a
warm-up, so machine noise hits both alike). Checks that both give the same captions, then prints
a table of images per second (median round) and the ratio, and one JSON line with the same.

The tiny model makes the forward passes nearly free, so the ratio measures what batching saves
in per-step overhead (generate's loop, Python, kernel launches), which on a GPU is most of a
small model's decoding time; on a real model on a CPU, compute grows with the batch and the
ratio is smaller.

    python bench/caption.py [--rounds 3] [--batch 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def tiles(size: int, tile: int, overlap: int) -> list[np.ndarray]:
    from PIL import Image
    from skimage import data

    from assetbox.imaging import TilePlan, extract_tile

    photo = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(photo)
    plan = TilePlan.for_image(size, size, tile, overlap)
    return [np.ascontiguousarray(extract_tile(pixels, t)) for t in plan]


def run(captioner, images: list[np.ndarray], batch: int, max_tokens: int):
    from assetbox.pipelines.caption import caption

    started = time.perf_counter()
    captions = []
    for start in range(0, len(images), batch):
        captions += caption(captioner, images[start : start + batch], max_tokens=max_tokens)
    return time.perf_counter() - started, captions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="the photo's size before cutting")
    parser.add_argument("--tile", type=int, default=640)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=77)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    from assetbox.pipelines.caption import load_captioner
    from assetbox.testing.tiny_models import write_captioner

    torch.set_num_threads(args.threads)
    images = tiles(args.size, args.tile, args.overlap)
    with tempfile.TemporaryDirectory() as tmp:
        captioner = load_captioner(write_captioner("qwen2_5_vl", Path(tmp) / "tiny-qwen2_5_vl"))
    batches = {"batch_1": 1, f"batch_{args.batch}": args.batch}
    results = {
        name: run(captioner, images, size, args.max_tokens) for name, size in batches.items()
    }
    reference = results["batch_1"][1]
    for name, (_, captions) in results.items():
        if captions != reference:
            raise SystemExit(f"{name} gave other captions than batch_1")
    seconds: dict[str, list[float]] = {name: [] for name in batches}
    for _ in range(args.rounds):
        for name, size in batches.items():
            seconds[name].append(run(captioner, images, size, args.max_tokens)[0])
    rate = {name: len(images) / statistics.median(values) for name, values in seconds.items()}
    batched = f"batch_{args.batch}"
    ratio = rate[batched] / rate["batch_1"]
    tokens = [c.tokens for c in reference]

    print(f"{len(images)} tiles of {args.tile} px, tiny qwen2_5_vl, {args.threads} thread(s)")
    print(f"{'case':<10} {'images/s':>9} {'s/image':>8} {'vs batch 1':>11}")
    for name in batches:
        print(
            f"{name:<10} {rate[name]:>9.2f} {1 / rate[name]:>8.3f} "
            f"{rate[name] / rate['batch_1']:>10.2f}x"
        )
    result = {
        "tiles": len(images),
        "tile": args.tile,
        "max_tokens": args.max_tokens,
        "tokens_per_caption": {"min": min(tokens), "max": max(tokens)},
        **{f"{name}_images_per_s": round(value, 3) for name, value in rate.items()},
        f"{batched}_vs_batch_1": round(ratio, 2),
        "same_captions": True,
        "rounds": args.rounds,
        "threads": args.threads,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
