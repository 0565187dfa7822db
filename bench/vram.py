"""Seconds and peak VRAM of FLUX.2 generate by resolution and number of references (CUDA only).

The seed's table (FLUX.2 [klein] 4B bf16 on an RTX 5090: 1024² in about 1.0 s, +~400 ms a
reference). For each resolution (512², 1024²) and number of references (0, 1, 4, 8, 16; each
reference an image of the output's size), one image of one prompt, `--steps` steps, through
`pipelines.flux2.run_flux2` as the service runs it:

- ``first_s``: the first run of that row, its references' VAE encodes included (the first
  prompt of a job);
- ``s``: the median of `--repeats` further runs, whose reference latents come from the cache
  (the job's other prompts);
- ``weighted_s``: the same with every reference at weight 0.5 (the attention-bias path);
- ``peak_mib``: ``torch.cuda.max_memory_allocated`` over the row's runs (weights included);
- ``x_s``, ``x_peak``: ``s`` and ``peak_mib`` against the row with 0 references at the same
  resolution, measured in the same process.

Prints a table, then one JSON line of all rows.

    python bench/vram.py MODEL [--steps 4] [--repeats 3] [--sizes 512 1024] [--refs 0 1 4 8 16]

MODEL: a store id of a FLUX.2 checkpoint (diffusers layout) or a diffusers folder. Without CUDA
it prints "skipped: no CUDA" and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_FAMILY_OF = {"Flux2KleinPipeline": "flux2_klein", "Flux2Pipeline": "flux2"}


def _folder_and_family(model: str) -> tuple[Path, str]:
    path = Path(model)
    if path.is_dir():
        index = json.loads((path / "model_index.json").read_text())
        family = _FAMILY_OF.get(index.get("_class_name", ""))
        if family is None:
            raise SystemExit(f"{model}: not a FLUX.2 diffusers folder ({index.get('_class_name')})")
        return path, family
    from assetbox.config import get_settings
    from assetbox.models.diffusion_import import DIFFUSERS_DIR
    from assetbox.models.store import ModelStore

    store = ModelStore(get_settings().data_dir / "models")
    manifest = store.get(model, "checkpoint", field="model")
    if manifest.family not in _FAMILY_OF.values() or manifest.layout != "diffusers":
        raise SystemExit(f"{model}: a {manifest.family} {manifest.layout} checkpoint, not FLUX.2")
    return store.path(model, "checkpoint") / DIFFUSERS_DIR, str(manifest.family)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", help="store id or diffusers folder of a FLUX.2 checkpoint")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--refs", type=int, nargs="+", default=[0, 1, 4, 8, 16])
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    import numpy as np

    from assetbox.pipelines.diffusion import DEFAULT_SAMPLER, RunParams, load_checkpoint
    from assetbox.pipelines.flux2 import forget_reference_latents, run_flux2

    folder, family = _folder_and_family(args.model)
    model = load_checkpoint(family, folder=folder)  # type: ignore[arg-type]
    # Distilled klein runs no CFG (1); base klein and FLUX.2 [dev] their default 4.
    guidance = 1.0 if getattr(model.pipe.config, "is_distilled", False) else 4.0
    rng = np.random.default_rng(0)

    def timed(params: RunParams) -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        run_flux2(model, params)
        torch.cuda.synchronize()
        return time.perf_counter() - started

    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        images = [
            rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(max(args.refs))
        ]

        def params(count: int, weight: float, images: list = images, size: int = size) -> RunParams:
            return RunParams(
                prompt="a lighthouse on a cliff at dusk, photo",
                negative_prompt=None,
                width=size,
                height=size,
                steps=args.steps,
                guidance=guidance,
                seeds=[1],
                sampler=DEFAULT_SAMPLER[family],  # type: ignore[index]
                references=[(image, weight) for image in images[:count]],
            )

        timed(params(0, 1.0))  # warm-up: kernels, allocator
        for count in args.refs:
            forget_reference_latents(model)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            first = timed(params(count, 1.0))
            cached = statistics.median(timed(params(count, 1.0)) for _ in range(args.repeats))
            weighted = (
                statistics.median(timed(params(count, 0.5)) for _ in range(args.repeats))
                if count
                else cached
            )
            peak = torch.cuda.max_memory_allocated() / 2**20
            rows.append(
                {
                    "size": size,
                    "refs": count,
                    "first_s": round(first, 3),
                    "s": round(cached, 3),
                    "weighted_s": round(weighted, 3),
                    "peak_mib": round(peak),
                }
            )
        base = next(r for r in rows if r["size"] == size and r["refs"] == 0)
        for row in rows:
            if row["size"] == size:
                row["x_s"] = round(row["s"] / base["s"], 2)
                row["x_peak"] = round(row["peak_mib"] / base["peak_mib"], 2)
    columns = ["size", "refs", "first_s", "s", "weighted_s", "peak_mib", "x_s", "x_peak"]
    print(f"{family} {folder.name} on {torch.cuda.get_device_name()}, {args.steps} steps")
    print("  ".join(f"{c:>10}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]:>10}" for c in columns))
    json.dump({"family": family, "steps": args.steps, "rows": rows}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
