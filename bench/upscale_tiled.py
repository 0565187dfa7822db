"""Tiled diffusion upscale: denoiser passes against Ultimate SD Upscale's, peak memory, seams.

For each --size, scikit-image's astronaut is enlarged (Lanczos) to size / --scale and upscaled
by the `upscale` kind's ``"mode": "diffusion"`` with the tiny random SDXL from
`assetbox.testing.tiny_models`: Lanczos pre-upscale, --tile tiles with --overlap, img2img of every
tile, wavelet colour fix, feathered blend in bands, PNG. The kind's own functions are called in
this process (plan → run_unit per unit, each result written to a file as the engine does →
assemble reading them back one at a time), so the figures are the kind's own work. Each size
runs in a fresh process, so its peak RSS is its own. One JSON line per size:

- ``tiles``; ``denoiser_calls`` and ``denoiser_passes`` (tile-steps: each call's latent batch
  over the guidance factor), counted by a wrapper around ``UNet2DConditionModel.forward``, and
  ``steps_run`` (what the pipeline reported: img2img runs ``int(steps * strength)`` steps, given
  as ``steps_expected``); ``one_pass_per_tile_per_step`` is ``denoiser_passes == real_tiles *
  steps_run`` with every unit reporting ``steps_expected`` steps;
- ``usdu_tile_jobs``: Ultimate SD Upscale on the same canvas, a redraw of an R x C grid of
  non-overlapping tiles of the same size plus the half-tile seam fix, ``3RC - R - C`` jobs
  (R = ceil(H / tile), C = ceil(W / tile)), each the same steps; ``usdu_vs_ours`` its passes over
  ours; ``diffused_mp_per_output_mp`` (ours and ``usdu_…``): tile area diffused per output pixel;
- ``peak_rss_mb`` (MiB, the process's ru_maxrss at the end; ``peak_rss_units_mb`` before
  assembly), ``seconds`` (plan, units and assembly; ``seconds_per_real_tile``);
- the seam score SER (`assetbox.imaging.seams.seam_energy_ratio`, the largest of its start,
  centre and end lines) in a second fresh process whose denoiser is a fake that returns each
  tile's crop plus its own constant colour offset (±20..30 per channel, the sign alternating as a
  checkerboard), through the kind's real colour fix and blend: ``ser`` (wavelet fix, feathered),
  ``ser_feather_only`` (no colour fix), ``ser_color_fix_only`` (wavelet, tiles pasted hard in plan
  order) and ``ser_control`` (neither: no colour fix, pasted hard), which must fail; and, as the
  baseline, ``ser_pre_upscaled``: the same score of the pre-upscaled image, which has no seams,
  with each score over it (``…_vs_pre_upscaled``): about 1, since the score takes out the
  gradient structure an integer Lanczos enlargement repeats every 4 or 16 px, at the phase all
  the plan's seam lines share (see `assetbox.imaging.seams`; before it did, this seam-free
  image scored 1.32 and every run inherited that). ``ser_vs_pre_upscaled`` is what the seams add;
- ``targets`` and ``misses`` (the targets this line misses; empty when it meets them all).

CPU stand-ins, said in each line: the tiny SDXL's VAE downsamples by 8 as the real one does,
so a 1024 px tile is a 128 x 128 latent, but its one mid-block self-attention over those 16k
tokens (and the UNet's over 4k) is still the bulk of a tile's time on 2 CPU cores. With
``--attention local`` (the default) a self-attention over more than LOCAL_ATTENTION_ABOVE tokens
lets each token attend to itself only: the same modules, calls, scheduler and steps (what the
pass count counts), at about 4.5 s a 1024 px tile here; ``--attention full`` runs the model
unchanged (for a GPU). ``--real-tiles N`` runs the real tiny SDXL on N tiles spread evenly over
the grid (all of them when the grid has N or fewer) and the fake denoiser on the rest: pass
counts cover the real ones, and the peak RSS still sees a real tile's activations, which are the
same for every tile.

Measured here (2 CPU cores; guidance 1, 4 steps at strength 0.5, so 2 steps run; --attention
local):

    python bench/upscale_tiled.py --size 8192                    # 7 min
    81 tiles (9 x 9), all real: 162 denoiser calls = 162 passes = 81 x 2 steps run, one pass per
    tile per step: true; USDU 176 jobs (8 x 8) = 352 passes, usdu_vs_ours 2.173; diffused MP per
    output MP 1.266 (USDU 2.75); peak RSS 1381 MiB (target 3072); 351 s (4.1 s a tile, assembly
    14.5 s); ser 0.996 (the seam-free pre-upscale's own 0.974; 1.022 of it), feathering only
    0.931, colour fix only 1.159, control 22.8; misses: none.

    python bench/upscale_tiled.py --size 16384 --real-tiles 16   # 7 min
    361 tiles (19 x 19), 16 real: 32 calls = 32 passes = 16 x 2; USDU 736 jobs (16 x 16) = 1472
    passes, usdu_vs_ours 2.039; diffused MP per output MP 1.41 (USDU 2.875); peak RSS 3059 MiB
    (target 4096); 168 s (assembly 32.8 s); ser 0.989 (the pre-upscale's own 0.964; 1.025 of
    it), feathering only 0.981, colour fix only 1.108, control 35.4; misses: none.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Self-attention longer than this is cut to each token attending to itself (--attention local).
LOCAL_ATTENTION_ABOVE = 1024
MODEL = "tiny-sdxl"
# Issue 12's targets.
USDU_RATIO_MIN = 2.0
SER_MAX = 1.05
SER_CONTROL_MIN = 1.5  # the control must score above it: proof that the score can fail
PEAK_RSS_MB_MAX = {8192: 3 * 1024, 16384: 4 * 1024}  # MiB by output side: 3 and 4 GiB


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the peak of this process over its whole life.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def usdu_tile_jobs(width: int, height: int, tile: int) -> int:
    """Ultimate SD Upscale's tile jobs on a `width` x `height` canvas: a redraw of its R x C grid
    of non-overlapping `tile` tiles, then the half-tile seam fix, one job per seam between
    neighbours (R(C - 1) + (R - 1)C): 3RC - R - C."""
    rows, cols = math.ceil(height / tile), math.ceil(width / tile)
    return 3 * rows * cols - rows - cols


def tile_offset(row: int, col: int) -> np.ndarray:
    """The fake denoiser's colour offset of tile (row, col): 20..30 per channel, differing
    between neighbours, its sign alternating as a checkerboard."""
    sign = 1 if (row + col) % 2 == 0 else -1
    return np.array([sign * (20 + (row * 7 + col * 3 + c * 5) % 11) for c in range(3)], np.int16)


def fake_tile(pixels: np.ndarray, row: int, col: int) -> np.ndarray:
    return np.clip(pixels.astype(np.int16) + tile_offset(row, col), 0, 255).astype(np.uint8)


# -- the run, in a fresh process -----------------------------------------------------------------


@contextlib.contextmanager
def local_attention() -> Iterator[None]:
    """Self-attention over more than LOCAL_ATTENTION_ABOVE tokens: each token attends to itself
    (the output is the values), so a 1024 px tile of the tiny SDXL runs on a CPU."""
    import torch.nn.functional as F

    full = F.scaled_dot_product_attention

    def attention(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        tokens = query.shape[-2]
        if tokens == key.shape[-2] and tokens > LOCAL_ATTENTION_ABOVE:
            return value.clone()
        return full(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = full


@contextlib.contextmanager
def counted_denoiser(calls: list[int]) -> Iterator[None]:
    """Appends the latent batch of every ``UNet2DConditionModel.forward`` call to `calls`."""
    from diffusers import UNet2DConditionModel

    forward = UNet2DConditionModel.forward

    def counted(self: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(int(sample.shape[0]))
        return forward(self, sample, *args, **kwargs)

    UNet2DConditionModel.forward = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        UNet2DConditionModel.forward = forward  # type: ignore[method-assign]


@contextlib.contextmanager
def denoiser(plan: Any, real: set[tuple[int, int]]) -> Iterator[None]:
    """The kind's `diffuse_tiles` runs for batches of `real` tile places (x, y); the fake
    (`fake_tile`) for the others."""
    from assetbox.pipelines import upscale_tiled as pipeline

    diffuse = pipeline.diffuse_tiles
    rows = {y: i for i, y in enumerate(plan.ys)}
    cols = {x: i for i, x in enumerate(plan.xs)}

    def either(model: Any, tiles: Sequence[Any], params: Any, **kwargs: Any) -> list[np.ndarray]:
        places = {(t.x, t.y) for t in tiles}
        if places <= real:
            return diffuse(model, tiles, params, **kwargs)
        if places & real:
            raise AssertionError("a unit mixes real and fake tiles")
        return [fake_tile(t.pixels, rows[t.y], cols[t.x]) for t in tiles]

    pipeline.diffuse_tiles = either  # the kind imports it from the module at every call
    try:
        yield
    finally:
        pipeline.diffuse_tiles = diffuse


def spread(count: int, chosen: int) -> list[int]:
    """`chosen` indices spread evenly over range(count) (all of them if chosen >= count)."""
    if chosen >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(chosen - 1, 1)) for i in range(chosen)})


def make_request(args: dict[str, Any], image: str, color_fix: str) -> Any:
    from assetbox.kinds.upscale import UpscaleRequest

    return UpscaleRequest(
        image=image,
        mode="diffusion",
        model=MODEL,
        scale=args["scale"],
        tile=args["tile"],
        overlap=args["overlap"],
        batch=args["batch"],
        pre_upscale="lanczos",
        prompt="an astronaut, photo",
        steps=args["steps"],
        strength=args["strength"],
        guidance=args["guidance"],
        seed=args["seed"],
        color_fix=color_fix,  # type: ignore[arg-type]
    )


def plan_job(request: Any, data_dir: Path) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The kind's checks (filling the family's defaults, as at submit), its grid and units."""
    from assetbox.engine.blobs import blob_path
    from assetbox.imaging import verify_image
    from assetbox.kinds import PLANNERS
    from assetbox.kinds.upscale_tiled import plan_for

    planner = PLANNERS["upscale"]
    planner.check(request, data_dir)
    _, width, height = verify_image(blob_path(data_dir, request.image).read_bytes())
    return planner, plan_for(request, width, height), planner.plan(request, data_dir)


def run_units(
    planner: Any,
    request: Any,
    units: list[dict[str, Any]],
    data_dir: Path,
    out_dir: Path,
    *,
    on_unit: Callable[[int, float], None] = lambda n, seconds: None,
    on_step: Callable[[int, int], None] = lambda step, total: None,
) -> Sequence[bytes]:
    """Every unit on one worker context, each result written to `out_dir`; the results as the
    engine hands them to assemble (read back one at a time)."""
    from assetbox.engine.engine import UnitResults
    from assetbox.engine.executors import worker_cache
    from assetbox.engine.planners import UnitContext

    ctx = UnitContext(
        report_step=on_step,
        should_stop=lambda: False,
        cache={},
        models=worker_cache(None),
        data_dir=data_dir,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, payload in enumerate(units):
        started = time.perf_counter()
        path = out_dir / f"{n}.bin"
        path.write_bytes(planner.run_unit(request, payload, ctx))
        paths.append(path)
        on_unit(n, time.perf_counter() - started)
    return UnitResults(paths)


def run_case(args: dict[str, Any], data_dir: Path, image: str, work: Path) -> dict[str, Any]:
    """The upscale with the tiny SDXL on `--real-tiles` tiles: passes, RSS, seconds."""
    import torch

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    started = time.perf_counter()
    request = make_request(args, image, "wavelet")
    planner, plan, units = plan_job(request, data_dir)
    tiles = len(plan)
    # Whole units are real or fake; the real ones spread evenly over the grid.
    chosen = spread(len(units), math.ceil(args["real_tiles"] / request.batch))
    real_units = set(chosen) if args["real_tiles"] else set()
    real = {(t.x, t.y) for n in real_units for t in map(plan.tile, units[n]["tiles"])}
    calls: list[int] = []  # the latent batch of each denoiser call in this unit
    steps: list[tuple[int, int]] = []  # (step, of) reported in this unit
    per_unit: list[dict[str, Any]] = []

    def on_unit(n: int, seconds: float) -> None:
        per_unit.append(
            {"tiles": len(units[n]["tiles"]), "real": n in real_units, "seconds": seconds}
            | {"calls": calls[:], "steps": steps[:]}
        )
        calls.clear()
        steps.clear()
        if n % 10 == 0 or n == len(units) - 1:
            print(f"{plan.width}: unit {n + 1}/{len(units)} {seconds:.1f} s", file=sys.stderr)

    attention = local_attention() if args["attention"] == "local" else contextlib.nullcontext()
    with attention, counted_denoiser(calls), denoiser(plan, real):
        results = run_units(
            planner,
            request,
            units,
            data_dir,
            work / "units",
            on_unit=on_unit,
            on_step=lambda step, total: steps.append((step, total)),
        )
    units_done = time.perf_counter()
    rss_units = peak_rss_mb()
    outputs = planner.assemble(request, results, data_dir)
    (work / "out.png").write_bytes(outputs[0].data)
    ended = time.perf_counter()
    del outputs

    # SDXL with guidance above 1 runs [negative, positive] in one call: twice the tiles.
    factor = 2 if (request.guidance or 0) > 1 else 1
    ran = [u for u in per_unit if u["real"]]
    real_tiles = sum(u["tiles"] for u in ran)
    batches = [rows for u in ran for rows in u["calls"]]
    # Steps a unit ran: what it reported, 1..total in order, each once.
    counts = {len(u["steps"]) for u in ran}
    in_order = all(
        [s for s, _ in u["steps"]] == list(range(1, len(u["steps"]) + 1))
        and {t for _, t in u["steps"]} == {len(u["steps"])}
        for u in ran
    )
    steps_run = counts.pop() if len(counts) == 1 and in_order else None
    steps_expected = int(request.steps * request.strength)
    passes = sum(batches) // factor
    one_pass = (
        steps_run == steps_expected
        and all(len(u["calls"]) == steps_run for u in ran)  # one call per step per unit
        and all(rows == factor * u["tiles"] for u in ran for rows in u["calls"])
        and passes == real_tiles * steps_expected
    )
    real_seconds = sum(u["seconds"] for u in ran)
    return {
        "tiles": tiles,
        "grid": [plan.rows, plan.cols],
        "output": [plan.width, plan.height],
        "tile_size": [plan.tile_width, plan.tile_height],
        "units": len(units),
        "real_tiles": real_tiles,
        "denoiser_calls": len(batches),
        "denoiser_passes": passes,
        "steps_run": steps_run,
        "steps_expected": steps_expected,
        "one_pass_per_tile_per_step": one_pass,
        "guidance_factor": factor,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_units_mb": round(rss_units, 1),
        "seconds": round(ended - started, 1),
        "seconds_units": round(units_done - started, 1),
        "seconds_assemble": round(ended - units_done, 1),
        "seconds_per_real_tile": round(real_seconds / max(real_tiles, 1), 2),
    }


def hard_paste(plan: Any, units: list[dict[str, Any]], results: Sequence[bytes]) -> np.ndarray:
    """Every tile pasted over the canvas in plan order, no feathering: the later tile wins."""
    canvas = np.zeros((plan.height, plan.width, 3), np.uint8)
    for payload, data in zip(units, results, strict=True):
        stacked = np.load(io.BytesIO(data), allow_pickle=False)["tiles"]
        for tile_id, pixels in zip(payload["tiles"], stacked, strict=True):
            tile = plan.tile(tile_id)
            rows = min(tile.height, plan.height - tile.y)
            cols = min(tile.width, plan.width - tile.x)
            canvas[tile.y : tile.y + rows, tile.x : tile.x + cols] = pixels[:rows, :cols]
    return canvas


def seams_case(args: dict[str, Any], data_dir: Path, image: str, work: Path) -> dict[str, Any]:
    """SER of the fake-denoiser runs: colour fix and feathering, each alone, and neither."""
    from assetbox.engine.blobs import blob_path
    from assetbox.imaging import decode_image
    from assetbox.imaging.resize import resize_lanczos
    from assetbox.imaging.seams import seam_energy_ratio, seam_energy_ratios

    scores: dict[str, Any] = {}
    for color_fix in ("wavelet", "none"):
        request = make_request(args, image, color_fix)
        planner, plan, units = plan_job(request, data_dir)
        with denoiser(plan, real=set()):
            results = run_units(planner, request, units, data_dir, work / color_fix)
        feathered = decode_image(planner.assemble(request, results, data_dir)[0].data).rgb
        pasted = hard_paste(plan, units, results)
        if color_fix == "wavelet":
            scores["ser"] = round(seam_energy_ratio(feathered, plan), 3)
            lines = seam_energy_ratios(feathered, plan)
            scores["ser_lines"] = {line: round(value, 3) for line, value in lines.items()}
            scores["ser_color_fix_only"] = round(seam_energy_ratio(pasted, plan), 3)
        else:
            scores["ser_feather_only"] = round(seam_energy_ratio(feathered, plan), 3)
            scores["ser_control"] = round(seam_energy_ratio(pasted, plan), 3)
        del feathered, pasted
    # The same score of the pre-upscaled image itself, which has no seams: what the content
    # alone scores on this grid.
    source = decode_image(blob_path(data_dir, image).read_bytes()).rgb
    pre = resize_lanczos(source, (plan.width, plan.height))
    reference = seam_energy_ratio(pre, plan)
    scores["ser_pre_upscaled"] = round(reference, 3)
    for name in ("ser", "ser_color_fix_only", "ser_feather_only", "ser_control"):
        scores[f"{name}_vs_pre_upscaled"] = round(scores[name] / reference, 3)
    return scores


# -- the parent ----------------------------------------------------------------------------------


def prepare(root: Path, sides: list[int], scale: int) -> tuple[Path, dict[int, str]]:
    """A data dir with the tiny SDXL imported and the input photo of each output side."""
    from PIL import Image
    from skimage import data

    from assetbox.engine.blobs import put_blob
    from assetbox.models.importer import import_model
    from assetbox.models.store import ModelStore
    from assetbox.testing.tiny_models import write

    data_dir = root / "data"
    write("sdxl", root / "tiny")
    import_model(ModelStore(data_dir / "models"), root / "tiny" / MODEL)
    astronaut = Image.fromarray(data.astronaut())
    images = {}
    for side in sides:
        small = side // scale
        buffer = io.BytesIO()
        astronaut.resize((small, small), Image.Resampling.LANCZOS).save(buffer, "PNG")
        images[side] = put_blob(data_dir, buffer.getvalue())
    return data_dir, images


def in_fresh_process(target: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(target, args)


def report(args: dict[str, Any], run: dict[str, Any], seams: dict[str, Any] | None) -> dict:
    """One size's JSON line: the run, Ultimate SD Upscale's count on its canvas, the targets."""
    width, height = run["output"]
    tile_w, tile_h = run["tile_size"]
    tiles = run["tiles"]
    steps = run["steps_run"] or run["steps_expected"]
    usdu = usdu_tile_jobs(width, height, tile_w)
    area = width * height
    real = run["real_tiles"]
    line: dict[str, Any] = {
        "size": width,
        "input": width // args["scale"],
        "scale": args["scale"],
        "tile": args["tile"],
        "overlap": args["overlap"],
        "batch": args["batch"],
        "denoiser": MODEL
        if real == tiles
        else f"{MODEL} on {real} of {tiles} tiles (spread over the grid), the fake on the rest",
        "attention": "full"
        if args["attention"] == "full"
        else f"self-attention over more than {LOCAL_ATTENTION_ABOVE} tokens: each token to itself",
        "steps": args["steps"],
        "strength": args["strength"],
        "guidance": args["guidance"],
        **run,
        "ours_passes": tiles * steps,
        "usdu_tile_jobs": usdu,
        "usdu_passes": usdu * steps,
        "usdu_vs_ours": round(usdu / tiles, 3),
        "diffused_mp_per_output_mp": round(tiles * tile_w * tile_h / area, 3),
        "usdu_diffused_mp_per_output_mp": round(usdu * tile_w * tile_h / area, 3),
    }
    if seams is not None:
        line |= seams
    targets: dict[str, Any] = {
        "usdu_vs_ours_min": USDU_RATIO_MIN,
        "ser_max": SER_MAX,
        "ser_control_min": SER_CONTROL_MIN,
    }
    rss_max = PEAK_RSS_MB_MAX.get(width)
    if rss_max and width == height:
        targets["peak_rss_mb_max"] = rss_max
    misses = []
    if real and not run["one_pass_per_tile_per_step"]:
        misses.append("one_pass_per_tile_per_step")
    if line["usdu_vs_ours"] < USDU_RATIO_MIN:
        misses.append("usdu_vs_ours")
    if "peak_rss_mb_max" in targets and run["peak_rss_mb"] > rss_max:
        misses.append("peak_rss_mb")
    if seams is not None:
        targets["ser_vs_pre_upscaled_max"] = SER_MAX
    if seams is not None and seams["ser"] > SER_MAX:
        misses.append("ser")
    if seams is not None and seams["ser_vs_pre_upscaled"] > SER_MAX:
        misses.append("ser_vs_pre_upscaled")
    if seams is not None and seams["ser_control"] <= SER_CONTROL_MIN:
        misses.append("ser_control")
    return line | {"targets": targets, "misses": misses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", required=True, help="output side(s)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1, help="tiles per unit (forward pass)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--guidance", type=float, default=1.0, help="1: no CFG (half the cost)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--real-tiles", type=int, default=81, help="tiles the tiny SDXL runs (the fake the rest)"
    )
    parser.add_argument("--attention", choices=["local", "full"], default="local")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--no-seams", action="store_true", help="skip the fake-denoiser SER runs")
    parsed = parser.parse_args(argv)
    args = vars(parsed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir, images = prepare(root, parsed.size, parsed.scale)
        for side in parsed.size:
            work = root / f"run-{side}"
            run = in_fresh_process(run_case, args, data_dir, images[side], work)
            shutil.rmtree(work)
            seams = None
            if not parsed.no_seams:
                work = root / f"seams-{side}"
                seams = in_fresh_process(seams_case, args, data_dir, images[side], work)
                shutil.rmtree(work)
            print(json.dumps(report(args, run, seams)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
