"""The Tile Upscale tab: plan and caption an image's tiles, edit each tile in a mosaic (caption,
strength, skip, select), run the tiled diffusion upscale with those overrides, and follow every
tile on the mosaic to a before/after view and the download.

"Plan & caption" runs a caption job in tile mode: its result is the grid (each tile's id, box
and caption) and its second output the *preview*, the tiles' pre-upscaled thumbnails at their
place, which this tab cuts into one thumbnail file per tile (Gradio serves them by URL). The
upscale is the ``upscale`` kind's ``"mode": "diffusion"`` with ``captions: "none"`` (the tiles
are captioned already): every tile's edited caption goes as its prompt override, composed with
the style prompt the way the kind composes automatic captions. The mosaic follows the job's
units (``GET /v1/jobs/{id}/units`` says which tiles each unit holds).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from assetbox.client import Client
from assetbox.pipelines.diffusion import FLOW_FAMILIES, IMG2IMG_FAMILIES
from assetbox.ui.common import (
    Service,
    bar,
    follow,
    ip_adapter_field,
    ip_adapter_form,
    ip_adapter_updates,
    lora_refs,
    lora_table,
    relay,
    save_output,
    typed,
)

LANCZOS = "lanczos"
# The slider and the download show the result; the browser gets it at most this big.
DISPLAY = 2048
NONE = "none"


# -- what the mosaic holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class TileEdit:
    """One tile as the user left it in the mosaic."""

    id: str
    caption: str
    strength: float
    skip: bool
    selected: bool


def tile_prompt(prompt: str, caption: str) -> str:
    """A tile's prompt: the style prompt and its caption, joined as the kind joins automatic
    captions (``prompt + ", " + caption``); either alone when the other is empty."""
    return ", ".join(part for part in (prompt.strip(), caption.strip()) if part)


def tile_overrides(
    prompt: str, strength: float, tiles: list[TileEdit], *, only_selected: bool
) -> dict[str, dict[str, Any]]:
    """The request's ``tiles``: each tile's prompt override (its caption with the style
    prompt), its strength where it differs from the global one, and ``skip`` for a skipped
    tile (and, with `only_selected`, for every tile not selected).

    Raises:
        gr.Error: `only_selected` with no tile selected.
    """
    if only_selected and not any(tile.selected for tile in tiles):
        raise gr.Error("no tile is selected: tick a tile's Select box, or use Upscale all")
    overrides: dict[str, dict[str, Any]] = {}
    for tile in tiles:
        if tile.skip or (only_selected and not tile.selected):
            overrides[tile.id] = {"skip": True}
            continue
        override: dict[str, Any] = {}
        text = tile_prompt(prompt, tile.caption)
        if tile.caption.strip():  # without a caption the tile takes the style prompt alone
            override["prompt"] = text
        if abs(tile.strength - strength) > 1e-6:
            override["strength"] = tile.strength
        if override:
            overrides[tile.id] = override
    return overrides


def mosaic_tiles(
    service: Service, caption_job: dict[str, Any], preview: Path
) -> list[dict[str, Any]]:
    """The caption job's tiles (id, box, caption, row, col) with a thumbnail file each, cut
    from the job's preview (a tile's box times ``result.preview.scale`` is its place there)."""
    result = caption_job["result"]
    scale = float(result["preview"]["scale"])
    folder = service.scratch()
    tiles = []
    with Image.open(preview) as image:
        image.load()
        for entry in result["captions"]:
            x, y, w, h = entry["box"]
            box = (
                round(x * scale),
                round(y * scale),
                min(image.width, round((x + w) * scale)),
                min(image.height, round((y + h) * scale)),
            )
            path = folder / f"tile-{entry['id']}.png"
            image.crop(box).save(path)
            row, col = (int(part) for part in entry["id"].split("_"))
            tiles.append(
                {
                    "id": entry["id"],
                    "box": entry["box"],
                    "caption": entry["caption"],
                    "row": row,
                    "col": col,
                    "thumbnail": str(path),
                }
            )
    return tiles


# -- following the upscale ------------------------------------------------------------------------


def tile_status(job: dict[str, Any], unit: int | None, skipped: bool) -> tuple[str, float, str]:
    """(state, fraction, text) of a tile whose unit is `unit` (None until the job is planned),
    from the job as `common.follow` keeps it."""
    status = job.get("status", "queued")
    units = job.get("units") or {}
    progress = job.get("progress") or {}
    state = units.get(unit) if unit is not None else None
    if status == "succeeded" or state == "done":
        return "done", 1.0, "kept (skipped)" if skipped else "done"
    if state == "failed" or status in ("failed", "cancelled"):
        return "failed", 0.0, "failed" if state == "failed" else status
    if state == "running":
        if progress.get("unit") == unit and progress.get("steps"):
            step, steps = int(progress["step"]), int(progress["steps"])
            return "running", step / steps, f"running · step {step}/{steps}"
        return "running", 0.0, "running"
    if state == "pending":
        return "queued", 0.0, "queued (retrying)"
    return "queued", 0.0, "queued" if unit is not None else "planning"


def tile_bar(tile_id: str, job: dict[str, Any], unit: int | None, skipped: bool) -> str:
    state, fraction, text = tile_status(job, unit, skipped)
    return bar(f"Tile {tile_id}", fraction, text, state=state)


def overall_bar(label: str, job: dict[str, Any]) -> str:
    """The job's bar: units done, and the running unit's step."""
    progress = job.get("progress") or {}
    status = job.get("status", "queued")
    done, total = int(progress.get("done") or 0), int(progress.get("total") or 0)
    if status == "succeeded":
        return bar(label, 1, f"done · {total} unit{'s' if total != 1 else ''}", state="done")
    if status in ("failed", "cancelled"):
        return bar(label, done / total if total else 0, status, state="failed")
    if not total:
        return bar(label, 0, status if status != "running" else "planning", state="queued")
    text = f"{done}/{total} units"
    if progress.get("steps"):
        text += f" · step {progress['step']}/{progress['steps']}"
    return bar(label, done / total, text)


def display_copy(source: Path, target: Path, size: tuple[int, int]) -> str:
    """`source` resized (Lanczos) to `size` as a PNG at `target`: the browser's copy of a large
    image (the download keeps the full result)."""
    with warnings.catch_warnings():
        # The service refused anything over ASSETBOX_MAX_IMAGE_PIXELS before it made it;
        # Pillow's smaller bomb limit only warns up to twice its size.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            image.convert("RGB").resize(size, Image.LANCZOS, reducing_gap=3.0).save(target)
    return str(target)


def fit(width: int, height: int, longest: int = DISPLAY) -> tuple[int, int]:
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


# -- the form's values -----------------------------------------------------------------------------


def grid_number(value: float | None, field: str) -> int:
    """Tile and overlap from their number boxes.

    Raises:
        gr.Error: an empty or fractional value, naming `field`.
    """
    if value is None or value != int(value):
        raise gr.Error(f"`{field}` must be a whole number of pixels but is {value!r}")
    return int(value)


# -- the tab ---------------------------------------------------------------------------------------


def render(service: Service, key: gr.Textbox) -> None:
    """The tab's components and events (inside the caller's ``gr.Tab``)."""
    plan = gr.State(None)  # the planned mosaic: see `plan_and_caption`
    families = gr.State({})  # checkpoint id -> family

    # One column with an id: the tab's labels (Model, Steps, Seed) repeat in other tabs.
    with gr.Column(elem_id="ab-upscale"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(
                    type="filepath",
                    image_mode=None,  # the file as uploaded: no re-encode of a 16-bit or 8K image
                    label="Image",
                    sources=["upload", "clipboard"],
                    elem_id="ab-upscale-image",
                    height=280,
                )
                with gr.Row():
                    scale = gr.Number(label="Scale", value=2, minimum=2, maximum=8, step=0.5)
                    tile = gr.Number(label="Tile", value=512, minimum=64, maximum=4096, step=8)
                    overlap = gr.Number(label="Overlap", value=128, minimum=0, maximum=2048, step=8)
                with gr.Row():
                    pre_upscale = gr.Dropdown(
                        [LANCZOS], value=LANCZOS, label="Pre-upscaler", scale=2
                    )
                    captioner = gr.Dropdown([], value=None, label="Captioner", scale=2)
                plan_button = gr.Button("Plan & caption", variant="primary")
                plan_note = gr.Markdown(elem_id="ab-upscale-plan-note")
            with gr.Column(scale=3, min_width=420):
                with gr.Row():
                    model = gr.Dropdown([], value=None, label="Model", scale=4)
                    refresh = gr.Button("Refresh models", scale=0, min_width=140, size="sm")
                prompt = gr.Textbox(
                    label="Style prompt",
                    lines=2,
                    placeholder="added before every tile's caption, e.g. 'photo, sharp focus'",
                )
                negative = gr.Textbox(label="Negative prompt", lines=1, placeholder="optional")
                with gr.Row():
                    # Interactive said outright: the upscale takes these inside gr.render,
                    # and Gradio would take an output of `pick` for an output only.
                    controlnet = gr.Dropdown(
                        [NONE], value=NONE, label="ControlNet", scale=2, interactive=True
                    )
                    conditioning = gr.Slider(
                        0,
                        2,
                        value=1.0,
                        step=0.05,
                        label="Conditioning scale",
                        scale=2,
                        interactive=True,
                    )
                loras = lora_table("LoRAs of the model's family (weight 0: not used; at most 4)")
                ip = ip_adapter_form("Image prompt (default: the input image)")
                with gr.Row():
                    steps = gr.Textbox(label="Steps", placeholder="family default")
                    guidance = gr.Textbox(label="Guidance", placeholder="family default")
                    seed = gr.Textbox(label="Seed", placeholder="random")
                    strength = gr.Slider(
                        0, 1, value=0.35, step=0.01, label="Strength (all tiles)", min_width=200
                    )
                with gr.Row():
                    upscale_selected = gr.Button("Upscale selected")
                    upscale_all = gr.Button("Upscale all", variant="primary")
                overall = gr.HTML(elem_id="ab-upscale-progress")
        with gr.Row():
            slider = gr.ImageSlider(
                label="Before / after",
                type="filepath",
                elem_id="ab-upscale-result",
                visible=False,
                max_height=720,
                slider_position=50,
            )
        download = gr.DownloadButton("Download result", visible=False)
        # The mosaic (rendered below this column) follows the heading.
        gr.Markdown("### Tiles", elem_id="ab-upscale-mosaic-title")

    # -- models ---------------------------------------------------------------------------------

    @relay
    def load_models(
        key: str, current: str | None, current_pre: str | None, current_captioner: str | None
    ) -> tuple[Any, Any, Any, dict[str, str]]:
        with service.client(key) as api:
            # The tiled upscale redraws by img2img: only the families that have one.
            checkpoints = [
                m for m in api.models(kind="checkpoint") if m.get("family") in IMG2IMG_FAMILIES
            ]
            upscalers = api.models(kind="upscaler")
            captioners = api.models(kind="captioner")
        known = {m["id"]: m.get("family") or "" for m in checkpoints}
        choices = [(f"{m['id']} ({m.get('family') or '?'})", m["id"]) for m in checkpoints]
        value = current if current in known else (choices[0][1] if choices else None)
        pre = [m["id"] for m in upscalers] + [LANCZOS]
        captioner_ids = [m["id"] for m in captioners]
        return (
            gr.Dropdown(choices=choices, value=value),
            gr.Dropdown(choices=pre, value=current_pre if current_pre in pre else pre[0]),
            gr.Dropdown(
                choices=captioner_ids,
                value=current_captioner
                if current_captioner in captioner_ids
                else (captioner_ids[0] if captioner_ids else None),
            ),
            known,
        )

    @relay
    def pick(key: str, checkpoint: str | None, known: dict[str, str]) -> list[Any]:
        family = known.get(checkpoint or "")
        if not family:
            return [
                gr.Dropdown(choices=[NONE], value=NONE),
                gr.Dataframe(value=[]),
                gr.skip(),
                gr.skip(),
            ]
        with service.client(key) as api:
            nets = api.models(kind="controlnet", family=family)
            lora_models = api.models(kind="lora", family=family)
            adapter = ip_adapter_updates(api, family, family not in FLOW_FAMILIES)
        return [
            gr.Dropdown(choices=[NONE, *(m["id"] for m in nets)], value=NONE),
            gr.Dataframe(value=[[m["id"], 0] for m in lora_models]),
            *adapter,
        ]

    blocks = gr.context.get_blocks_context().root_block
    gr.on(
        [blocks.load, refresh.click, key.submit],
        load_models,
        [key, model, pre_upscale, captioner],
        [model, pre_upscale, captioner, families],
        api_visibility="private",
        show_progress="hidden",
    )
    model.change(
        pick,
        [key, model, families],
        [controlnet, loras, ip.box, ip.model],
        api_visibility="private",
        show_progress="hidden",
    )

    # -- plan & caption -------------------------------------------------------------------------

    @relay
    def plan_and_caption(
        key: str,
        path: str | None,
        scale_value: float | None,
        tile_value: float | None,
        overlap_value: float | None,
        pre: str | None,
        captioner_id: str | None,
        strength_value: float,
    ) -> Iterator[tuple[Any, Any, Any]]:
        if not path:
            raise gr.Error("upload an image first")
        if not captioner_id:
            raise gr.Error(
                "`Captioner`: the store has no captioner to caption the tiles with; import one "
                "(Models tab)"
            )
        if scale_value is None:
            raise gr.Error("`scale` is empty")
        grid = {
            "scale": float(scale_value),
            "tile": grid_number(tile_value, "tile"),
            "overlap": grid_number(overlap_value, "overlap"),
            "pre_upscale": pre or LANCZOS,
        }
        data = Path(path).read_bytes()
        with service.client(key) as api:
            job = api.caption_tiles(data, grid, model=captioner_id)
            yield overall_bar("Plan & caption", job), gr.skip(), "Captioning the tiles…"
            job_id = job["id"]
            for _, job in follow(api, job_id):
                yield overall_bar("Plan & caption", job), gr.skip(), gr.skip()
            if job["status"] != "succeeded":
                error = job.get("error") or {}
                raise gr.Error(f"the caption job {job['status']}: {error.get('message', '')}")
            preview = save_output(api, job, job["result"]["preview"]["output"], service.scratch())
        result = job["result"]
        planned = {
            "caption_job": job["id"],
            "image": path,
            "grid": grid,
            "width": result["width"],
            "height": result["height"],
            "rows": result["rows"],
            "cols": result["cols"],
            "strength": strength_value,
            "tiles": mosaic_tiles(service, job, preview),
        }
        note = (
            f"{result['width']}x{result['height']} output in {result['rows']}x{result['cols']}"
            f" tiles of {grid['tile']} px (overlap {grid['overlap']}), pre-upscaled with "
            f"{grid['pre_upscale']}, captioned by {captioner_id}. Edit the tiles below."
        )
        yield overall_bar("Plan & caption", job), planned, note

    plan_button.click(
        plan_and_caption,
        [key, image, scale, tile, overlap, pre_upscale, captioner, strength],
        [overall, plan, plan_note],
        api_visibility="private",
    )

    # -- the mosaic and the upscale -------------------------------------------------------------

    settings = [
        key,
        model,
        prompt,
        negative,
        controlnet,
        conditioning,
        loras,
        steps,
        guidance,
        seed,
        strength,
        *ip.inputs,
    ]

    @gr.render(inputs=[plan])
    def mosaic(planned: dict[str, Any] | None) -> None:
        if not planned:
            gr.Markdown(
                "Upload an image and press **Plan & caption**: each tile appears here with its "
                "caption, strength, skip and select boxes.",
                elem_id="ab-upscale-mosaic-empty",
            )

            def unplanned(*_: Any) -> None:
                raise gr.Error("press “Plan & caption” first: the mosaic is what is upscaled")

            gr.on([upscale_all.click, upscale_selected.click], unplanned, None, None)
            return

        job_key = planned["caption_job"]
        captions: list[gr.Textbox] = []
        strengths: list[gr.Slider] = []
        skips: list[gr.Checkbox] = []
        selects: list[gr.Checkbox] = []
        statuses: list[gr.HTML] = []
        ids: list[str] = []
        by_row: dict[int, list[dict[str, Any]]] = {}
        for entry in planned["tiles"]:
            by_row.setdefault(entry["row"], []).append(entry)
        with gr.Column(elem_id="ab-mosaic"):
            for row in sorted(by_row):
                with gr.Row(equal_height=True, elem_classes="ab-mosaic-row"):
                    for entry in sorted(by_row[row], key=lambda e: e["col"]):
                        tile_id = entry["id"]
                        ids.append(tile_id)
                        with gr.Column(min_width=180, elem_classes="ab-tile"), gr.Group():
                            gr.Image(
                                entry["thumbnail"],
                                label=f"Tile {tile_id}",
                                interactive=False,
                                height=220,
                                buttons=[],
                                key=(job_key, "thumbnail", tile_id),
                            )
                            captions.append(
                                gr.Textbox(
                                    entry["caption"],
                                    label=f"Caption {tile_id}",
                                    # Fixed: cards of one row stay aligned whatever
                                    # the captions' lengths (a long one scrolls).
                                    lines=3,
                                    max_lines=3,
                                    # Gradio makes a rendered input editable only when told.
                                    interactive=True,
                                    key=(job_key, "caption", tile_id),
                                )
                            )
                            strengths.append(
                                gr.Slider(
                                    0,
                                    1,
                                    value=planned["strength"],
                                    step=0.01,
                                    label=f"Strength {tile_id}",
                                    interactive=True,
                                    key=(job_key, "strength", tile_id),
                                )
                            )
                            with gr.Row():
                                skips.append(
                                    gr.Checkbox(
                                        label=f"Skip {tile_id}",
                                        interactive=True,
                                        key=(job_key, "skip", tile_id),
                                        min_width=80,
                                    )
                                )
                                selects.append(
                                    gr.Checkbox(
                                        label=f"Select {tile_id}",
                                        interactive=True,
                                        key=(job_key, "select", tile_id),
                                        min_width=80,
                                    )
                                )
                            statuses.append(
                                gr.HTML(
                                    bar(f"Tile {tile_id}", 0, "not run", state="queued"),
                                    key=(job_key, "status", tile_id),
                                )
                            )
        count = len(ids)

        # The global strength sets every tile's; a tile's own slider changes it alone.
        strength.change(
            lambda value: [value] * count,
            strength,
            strengths,
            api_visibility="private",
            show_progress="hidden",
        )

        def run(only_selected: bool) -> Callable[..., Iterator[list[Any]]]:
            @relay
            def upscale(*values: Any) -> Iterator[list[Any]]:
                (key_value, checkpoint, style, negative_value, net, net_scale, lora_rows) = values[
                    :7
                ]
                steps_value, guidance_value, seed_value, global_strength = values[7:11]
                ip_model, ip_image, ip_scale = values[11:14]
                per_tile = values[14:]
                edits = [
                    TileEdit(
                        id=tile_id,
                        caption=per_tile[n] or "",
                        strength=float(per_tile[count + n]),
                        skip=bool(per_tile[2 * count + n]),
                        selected=bool(per_tile[3 * count + n]),
                    )
                    for n, tile_id in enumerate(ids)
                ]
                if not checkpoint:
                    raise gr.Error("`model`: pick a checkpoint (none in the store? Models tab)")
                fields: dict[str, Any] = {
                    "mode": "diffusion",
                    "model": checkpoint,
                    **planned["grid"],
                    "prompt": (style or "").strip(),
                    "strength": float(global_strength),
                    "captions": "none",
                    "tiles": tile_overrides(
                        style or "", float(global_strength), edits, only_selected=only_selected
                    ),
                    "loras": lora_refs(lora_rows),
                }
                optional = {
                    "negative_prompt": (negative_value or "").strip() or None,
                    "steps": typed(steps_value),
                    "guidance": typed(guidance_value),
                    "seed": typed(seed_value),
                }
                fields |= {k: v for k, v in optional.items() if v is not None}
                if net and net != NONE:
                    fields["controlnet"] = {"model": net, "conditioning_scale": float(net_scale)}
                adapter = ip_adapter_field(ip_model, ip_image, ip_scale)
                if adapter is not None:  # without its own image, the service uses the input
                    fields["ip_adapter"] = adapter
                skipped = {
                    edit.id for edit in edits if fields["tiles"].get(edit.id, {}).get("skip")
                }
                hidden = gr.ImageSlider(visible=False), gr.DownloadButton(visible=False)
                data = Path(planned["image"]).read_bytes()
                with service.client(key_value) as api:
                    job = api.upscale(data, **fields)
                    unit_of: dict[str, int] = {}

                    def view(job: dict[str, Any]) -> list[Any]:
                        return [
                            overall_bar("Upscale", job),
                            *(
                                tile_bar(tile_id, job, unit_of.get(tile_id), tile_id in skipped)
                                for tile_id in ids
                            ),
                        ]

                    yield [*view(job), *hidden]
                    job_id = job["id"]
                    for _, job in follow(api, job_id):
                        if not unit_of and (job.get("progress") or {}).get("total"):
                            unit_of = units_by_tile(api, job["id"])
                        yield [*view(job), *hidden]
                    if job["status"] != "succeeded":
                        error = job.get("error") or {}
                        yield [*view(job), *hidden]  # the mosaic shows which tiles failed
                        raise gr.Error(f"the upscale {job['status']}: {error.get('message', '')}")
                    if not unit_of:
                        unit_of = units_by_tile(api, job["id"])
                    folder = service.scratch()
                    result = save_output(api, job, 0, folder)
                output = job["outputs"][0]
                size = fit(int(output["width"]), int(output["height"]))
                before = display_copy(Path(planned["image"]), folder / "before.png", size)
                after = display_copy(result, folder / "after.png", size)
                yield [
                    *view(job),
                    gr.ImageSlider(value=(before, after), visible=True),
                    gr.DownloadButton(value=str(result), visible=True),
                ]

            return upscale

        inputs = [*settings, *captions, *strengths, *skips, *selects]
        outputs = [overall, *statuses, slider, download]
        upscale_all.click(run(False), inputs, outputs, api_visibility="private")
        upscale_selected.click(run(True), inputs, outputs, api_visibility="private")


def units_by_tile(api: Client, job_id: str) -> dict[str, int]:
    """Tile id → the index of the unit that holds it (``GET /v1/jobs/{id}/units``)."""
    return {
        tile_id: unit["index"] for unit in api.units(job_id) for tile_id in unit.get("tiles", [])
    }
