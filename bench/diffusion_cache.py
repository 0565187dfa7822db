"""What the model cache and per-run LoRAs cost, through the engine, with tiny random models.

Each round (interleaved, so machine noise hits all cases alike) runs one-step 64x64 generate
jobs on tiny SDXL in four cases: cold (an engine whose cache holds one model, alternating between
two copies of the checkpoint, so every job loads one), warm (a cache hit), warm with one LoRA and
warm with two (adapters stay loaded between runs; the request picks which are active). Prints
one JSON line of medians in ms and the ratios cold/warm and lora/warm. Tiny models make
loading cheap next to real ones (GBs), so cold/warm here is a lower bound of what the cache
saves; the LoRA ratio is an upper bound of the adapter overhead.

    python bench/diffusion_cache.py --rounds 5
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
from assetbox.engine.jobs import JobStatus
from assetbox.kinds import PLANNERS
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.testing.tiny_models import write


def timed(engine: Engine, request: dict) -> float:
    started = time.perf_counter()
    job = engine.wait(engine.submit("generate", request).id, timeout=300)
    if job.status != JobStatus.SUCCEEDED:
        raise SystemExit(f"job {job.status}: {job.error}")
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write("sdxl", root / "tiny", loras=("lora-a", "lora-b"))
        engines = {}
        for name, budget in (("cold", 1), ("warm", 2**30)):
            data_dir = root / name
            store = ModelStore(data_dir / "models")
            for entry in ("tiny-sdxl", "lora-a.safetensors", "lora-b.safetensors"):
                import_model(store, root / "tiny" / entry)
            import_model(store, root / "tiny" / "tiny-sdxl", model_id="tiny-sdxl-copy")
            engines[name] = Engine(
                planners=PLANNERS, settings=Settings(data_dir=data_dir, model_cache_bytes=budget)
            )
        base = {"model": "tiny-sdxl", "prompts": ["a"], "width": 64, "height": 64, "steps": 1}
        base["seed"] = 1
        cases = {
            "cold": (engines["cold"], base),
            "cold_other": (engines["cold"], base | {"model": "tiny-sdxl-copy"}),
            "warm": (engines["warm"], base),
            "lora1": (engines["warm"], base | {"loras": [{"name": "lora-a"}]}),
            "lora2": (
                engines["warm"],
                base | {"loras": [{"name": "lora-a"}, {"name": "lora-b", "weight": 0.5}]},
            ),
        }
        try:
            for engine, request in cases.values():  # warm-up: imports, first load
                timed(engine, request)
            times: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.rounds):
                for name, (engine, request) in cases.items():
                    times[name].append(timed(engine, request))
        finally:
            for engine in engines.values():
                engine.close()
    times["cold"] += times.pop("cold_other")  # both loaded every time: one case
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {f"{name}_ms": round(value, 1) for name, value in median.items()}
    result |= {
        "cold_vs_warm": round(median["cold"] / median["warm"], 2),
        "lora1_vs_warm": round(median["lora1"] / median["warm"], 2),
        "lora2_vs_warm": round(median["lora2"] / median["warm"], 2),
        "rounds": args.rounds,
    }
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
