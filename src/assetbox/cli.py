"""The `assetbox` command line."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand
from typer.exceptions import TyperException

from assetbox import __version__
from assetbox.atomic_files import write_atomically
from assetbox.errors import AssetboxError, InvalidInput

app = typer.Typer(
    name="assetbox",
    help="AI Assets Toolbox: generate, edit, caption and upscale images.",
    no_args_is_help=True,
    add_completion=False,
)
models_app = typer.Typer(
    help="The model store: list, import and remove models.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
jobs_app = typer.Typer(
    help="Jobs on a server (--server or ASSETBOX_SERVER_URL): list, show, cancel.",
    no_args_is_help=True,
)
app.add_typer(jobs_app, name="jobs")

err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"assetbox {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """AI Assets Toolbox: generate, edit, caption and upscale images."""


def _fail(exc: AssetboxError, as_json: bool = False) -> typer.Exit:
    """The exit for `exc` (code 2 for bad input, 1 otherwise), after saying why on stderr and,
    with `as_json`, as ``{"error": {code, message, field}}`` on stdout (with the job's id and
    status when a job ran)."""
    field = getattr(exc, "field", None)
    where = f" ({field})" if isinstance(exc, InvalidInput) and field else ""
    err.print(f"[red]error{where}:[/red] {exc.message}", highlight=False)
    if as_json:
        body: dict = {"error": {"code": exc.code, "message": exc.message, "field": field}}
        if (job := getattr(exc, "job", None)) is not None:
            body = {"job_id": job[0], "status": job[1], **body}
        _echo_json(body)
    return typer.Exit(code=2 if isinstance(exc, InvalidInput) else 1)


def _echo_json(body: object) -> None:
    typer.echo(json.dumps(body))


class _JsonCommand(TyperCommand):
    """A command with --json: errors in its arguments (a missing option, a value of the wrong
    type), which click reports before the command runs, are also a JSON error on stdout."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        as_json = "--json" in args
        try:
            return super().parse_args(ctx, args)
        except TyperException as exc:  # typer's own click's UsageError and its kinds
            if as_json:
                param = getattr(exc, "param", None)
                error = {
                    "code": "invalid_input",
                    "message": exc.format_message(),
                    "field": param.name if param is not None else None,
                }
                _echo_json({"error": error})
            raise


_Json = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object on stdout (the job and its outputs, or the error) and "
        "nothing else there.",
    ),
]


def _report(job_id: str, written: list[tuple[Path, _Output]], as_json: bool) -> None:
    """Name each output written on stdout (one line each, or one JSON object), also when
    stdout is not a terminal: scripts read it."""
    if as_json:
        outputs = [
            {
                "path": str(path),
                "width": o.width,
                "height": o.height,
                "seed": o.seed,
                "bytes": len(o.data),
            }
            for path, o in written
        ]
        _echo_json({"job_id": job_id, "status": "succeeded", "outputs": outputs})
        return
    for path, o in written:
        seed = f", seed {o.seed}" if o.seed is not None else ""
        typer.echo(f"wrote {path} ({o.width}x{o.height}, {len(o.data)} bytes{seed}, job {job_id})")


@app.command("upscale", cls=_JsonCommand)
def upscale(
    input: Annotated[Path, typer.Argument(help="Image to upscale (PNG, JPEG or WebP).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the result.")],
    model: Annotated[
        str | None,
        typer.Option(
            help="gan: upscaler id (default realesrgan-x4plus); diffusion: checkpoint id "
            "(assetbox models list)."
        ),
    ] = None,
    scale: Annotated[
        int | None,
        typer.Option(help="gan: 2, 3 or 4 (below the model's: Lanczos down); diffusion: 2-8."),
    ] = None,
    tile: Annotated[
        int | None,
        typer.Option(
            help="gan: core tile in input px, 0 = one untiled pass (224 CPU, 512 GPU); "
            "diffusion: tile in output px (the family's native size)."
        ),
    ] = None,
    overlap: Annotated[
        int | None,
        typer.Option(help="gan: feathered seam, input px (2); diffusion: tile overlap (128)."),
    ] = None,
    batch: Annotated[
        int | None, typer.Option(help="Tiles per forward pass (gan torch: 4; diffusion: 1).")
    ] = None,
    engine: Annotated[str, typer.Option(help="auto, torch or ncnn.")] = "auto",
    alpha: Annotated[str, typer.Option(help="Alpha upscaling: model or lanczos.")] = "model",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality.")] = 95,
    server: Annotated[
        str | None,
        typer.Option(
            help="Run the job on this assetbox server (http://HOST:PORT) instead of in this "
            "process. (default: ASSETBOX_SERVER_URL)"
        ),
    ] = None,
    mode: Annotated[
        str, typer.Option(help="gan (an upscaler) or diffusion (tiled img2img, a checkpoint).")
    ] = "gan",
    prompt: Annotated[str | None, typer.Option(help="diffusion: the global style.")] = None,
    negative: Annotated[str | None, typer.Option(help="diffusion: negative prompt.")] = None,
    strength: Annotated[float | None, typer.Option(help="diffusion: 0-1. (0.35)")] = None,
    steps: _Steps = None,
    guidance: _Guidance = None,
    seed: Annotated[int | None, typer.Option(help="diffusion: seed. (default: random)")] = None,
    sampler: _Sampler = None,
    controlnet: Annotated[
        str | None, typer.Option(help="diffusion: a (tile) ControlNet id; each tile is its image.")
    ] = None,
    conditioning_scale: Annotated[float, typer.Option(help="ControlNet strength.")] = 1.0,
    lora: _Lora = [],  # noqa: B006 (typer reads the default)
    ip_adapter: Annotated[
        str | None,
        typer.Option(
            "--ip-adapter", help="diffusion: IP-Adapter id (SD 1.5, SDXL), for every tile."
        ),
    ] = None,
    ip_adapter_image: Annotated[
        Path | None, typer.Option(help="diffusion: the IP-Adapter's image. (default: the input)")
    ] = None,
    ip_adapter_scale: _IPAdapterScale = None,
    pre_upscale: Annotated[
        str | None, typer.Option(help="diffusion: upscaler id or lanczos. (realesrgan-x4plus)")
    ] = None,
    captions: Annotated[
        str | None, typer.Option(help="diffusion: auto (caption every tile) or none.")
    ] = None,
    captioner: Annotated[str | None, typer.Option(help="diffusion: captioner id.")] = None,
    color_fix: Annotated[
        str | None, typer.Option(help="diffusion: wavelet, adain or none. (wavelet)")
    ] = None,
    allow_partial: Annotated[
        bool, typer.Option(help="diffusion: a failing tile keeps its pre-upscaled pixels.")
    ] = False,
    tiles_json: Annotated[
        Path | None,
        typer.Option(
            help='diffusion: JSON file of per-tile overrides, {"row_col": {"prompt", "strength", '
            '"skip"}} (ids as `assetbox caption --tiles` shows).'
        ),
    ] = None,
    as_json: _Json = False,
) -> None:
    """Upscale an image with a Real-ESRGAN-class model (built-in models need no download), or
    with --mode diffusion: tiled img2img with a checkpoint, a prompt per tile, a progress bar
    per tile."""
    from pydantic import ValidationError

    from assetbox.kinds.upscale import UpscaleOptions, format_for_path

    try:
        fmt = format_for_path(output)
        if mode == "gan" and scale is not None and scale not in (2, 3, 4):
            raise InvalidInput(f"`scale` must be 2, 3 or 4 but is {scale}", field="scale")
        # A bad file fails here, before any job exists.
        data = _read_input(input, "image", argument="input")
        images = {"image": data}
        options = {
            "mode": mode,
            "model": model or ("realesrgan-x4plus" if mode == "gan" else None),
            "scale": scale,
            "tile": tile,
            "overlap": overlap,
            "batch": batch,
            "engine": engine,
            "alpha": alpha,
            "format": fmt,
            "quality": quality,
        }
        if mode == "diffusion":
            if model is None:
                raise InvalidInput("--mode diffusion needs --model (a checkpoint)", field="model")
            options |= {
                "prompt": prompt or "",
                "negative_prompt": negative,
                "strength": strength,
                "steps": steps,
                "guidance": guidance,
                "seed": seed,
                "sampler": sampler,
                "loras": _parse_loras(lora),
                "pre_upscale": pre_upscale,
                "captions": captions,
                "captioner": captioner,
                "color_fix": color_fix,
                "allow_partial": allow_partial,
                "tiles": _read_tiles_json(tiles_json) if tiles_json else None,
            }
            if controlnet is not None:
                options["controlnet"] = {
                    "model": controlnet,
                    "conditioning_scale": conditioning_scale,
                }
            options["ip_adapter"] = _ip_adapter(
                ip_adapter, ip_adapter_image, ip_adapter_scale, images
            )
        elif (ip_adapter, ip_adapter_image, ip_adapter_scale) != (None, None, None):
            raise InvalidInput("--ip-adapter is for --mode diffusion", field="ip_adapter")
        options = {k: v for k, v in options.items() if v is not None}
        try:
            UpscaleOptions(**options)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc) from exc
        # The same command again picks up the same job: after a crash it resumes, and
        # units already done are not computed again.
        digests = b"".join(hashlib.sha256(images[f]).digest() for f in sorted(images))
        key = (
            "cli-upscale:"
            + hashlib.sha256(json.dumps(options, sort_keys=True).encode() + digests).hexdigest()
        )
        job_id, (result,) = _run_job("upscale", options, images, server, key=key, progress="units")
        write_atomically(output, result.data)  # never half an output, whatever happens
    except AssetboxError as exc:
        raise _fail(exc, as_json) from exc
    _report(job_id, [(output, result)], as_json)


_INPUT_CODES = {"invalid_input", "image_too_large", "unsupported_format", "not_found"}


@dataclass(frozen=True)
class _Output:
    data: bytes
    width: int | None
    height: int | None
    seed: int | None


def _progress(label: str, show: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not show,
    )


def _job_error(job_id: str, status: str, code: str, message: str) -> AssetboxError:
    """A failed job's error as the CLI's (exit code 2 for bad input, 1 otherwise), keeping
    the job's own code (``out_of_memory``, ``cancelled``) and its id and status for --json."""
    error = (InvalidInput if code in _INPUT_CODES else AssetboxError)(message)
    error.code = code
    error.job = (job_id, status)  # type: ignore[attr-defined]
    return error


def _run_job(
    kind: str,
    request: dict,
    images: dict[str, bytes],
    server: str | None,
    *,
    key: str | None = None,
    progress: str,
) -> tuple[str, list[_Output]]:
    """Run a job on `server` (or ASSETBOX_SERVER_URL) or, without one, in this process, with a
    progress bar of its `progress` ("units" done or denoising "steps"); returns its id and
    outputs. With `key`, the same command again is the same job (a failed one runs anew)."""
    from assetbox.config import get_settings

    if not err.is_terminal:
        # Library progress bars (model loading in diffusers/transformers) are for a person at
        # a terminal too; tqdm and huggingface_hub read these when they are imported.
        for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(name, "1")
    server = server or get_settings().server_url
    fields = ("done", "total") if progress == "units" else ("step", "steps")
    if server:
        return _run_remote(server, kind, request, images, key, fields)
    return _run_local(kind, request, images, key, fields)


def _run_local(kind, request, images, key, fields) -> tuple[str, list[_Output]]:
    from assetbox.config import get_settings
    from assetbox.engine.blobs import with_images
    from assetbox.engine.engine import Engine
    from assetbox.engine.jobs import JobStatus
    from assetbox.kinds import PLANNERS

    # Threads: one unit at a time in this process (worker processes would cost a start-up,
    # and Ctrl-C ends this process and its unit together anyway).
    settings = get_settings().model_copy(update={"executor": "thread", "workers": 1})
    if kind == "upscale":
        from assetbox.models.builtin import ensure_upscaler
        from assetbox.models.store import model_store

        # A built-in model's first use converts it (once), with a message, before the job.
        diffusion = request.get("mode") == "diffusion"
        upscaler = request.get("pre_upscale", "realesrgan-x4plus") if diffusion else None
        if upscaler != "lanczos":
            ensure_upscaler(
                model_store(settings),
                upscaler or request["model"],
                progress=lambda text: err.print(text, highlight=False),
            )
    engine = Engine(planners=PLANNERS, settings=settings)
    try:
        full = with_images(request, {f: engine.put_blob(data) for f, data in images.items()})
        job = engine.submit(kind, full, idempotency_key=key)
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            job = engine.submit(kind, full)  # try again, not the old outcome
        with _progress(kind, err.is_terminal) as bar:
            task = bar.add_task(kind, total=None)
            while not job.status.is_terminal():
                job = engine.wait(job.id, timeout=0.25)
                shown = _bar_position(job.progress.model_dump(), fields)
                if shown:
                    bar.update(task, completed=shown[0], total=shown[1])
        if job.status != JobStatus.SUCCEEDED:
            assert job.error is not None
            raise _job_error(job.id, job.status.value, job.error.code, job.error.message)
        return job.id, [
            _Output(engine.output_path(job, o.index).read_bytes(), o.width, o.height, o.seed)
            for o in job.outputs
        ]
    finally:
        engine.close()


def _bar_position(progress: dict, fields: tuple[str, str]) -> tuple[float, int] | None:
    """Where a progress bar stands: units done plus the share of the unit that reported a step
    last (an upscale's unit is several windows, a minute each with a slow model), or the step."""
    done, total = (progress.get(name) or 0 for name in fields)
    if not total:
        return None
    step, steps = progress.get("step") or 0, progress.get("steps") or 0
    if fields == ("done", "total") and steps and 0 < step < steps:
        return min(total, done + step / steps), total
    return done, total


def _run_remote(server, kind, request, images, key, fields) -> tuple[str, list[_Output]]:
    import base64

    import httpx

    from assetbox.client import ApiError
    from assetbox.engine.blobs import with_images

    body = with_images(request, {f: base64.b64encode(d).decode() for f, d in images.items()})
    try:
        with _client(server) as api:
            job = api.submit(kind, idempotency_key=key, **body)
            if job["status"] in ("failed", "cancelled"):
                job = api.submit(kind, **body)  # try again, not the old outcome
            with _progress(kind, err.is_terminal) as bar:
                task = bar.add_task(kind, total=None)
                for event in api.events(job["id"]):
                    shown = _bar_position(event.get("data", {}), fields)
                    if event.get("type") == "progress" and shown:
                        bar.update(task, completed=shown[0], total=shown[1])
            job = api.job(job["id"])
            if job["status"] != "succeeded":
                error = job.get("error") or {"code": job["status"], "message": job["status"]}
                raise _job_error(job["id"], job["status"], error["code"], error["message"])
            return job["id"], [
                _Output(
                    api.output(job["id"], o["index"]),
                    o.get("width"),
                    o.get("height"),
                    o.get("seed"),
                )
                for o in job["outputs"]
            ]
    except ApiError as exc:
        raise _api_error(exc) from exc
    except httpx.HTTPError as exc:
        raise AssetboxError(f"cannot reach {server}: {exc}") from exc


def _client(server: str | None = None):
    """The HTTP client for `server` (or ASSETBOX_SERVER_URL), with ASSETBOX_API_KEY."""
    from assetbox.client import Client
    from assetbox.config import get_settings

    settings = get_settings()
    url = server or settings.server_url
    if not url:
        raise InvalidInput(
            "no server: pass --server http://HOST:PORT or set ASSETBOX_SERVER_URL", field="server"
        )
    return Client(url, api_key=settings.api_key)


def _api_error(exc) -> AssetboxError:
    """An API error answer as the CLI's error (exit code 2 for bad input, 1 otherwise)."""
    if exc.status in (404, 409, 413, 422):
        error: AssetboxError = InvalidInput(exc.message, field=exc.field)
    else:
        error = AssetboxError(f"the server answered {exc.status} {exc.code}: {exc.message}")
    error.code = exc.code
    return error


def _parse_loras(values: list[str]) -> list[dict]:
    loras = []
    for value in values:
        name, _, weight = value.partition(":")
        try:
            loras.append({"name": name, "weight": float(weight) if weight else 1.0})
        except ValueError as exc:
            raise InvalidInput(
                f"`--lora` must be NAME or NAME:WEIGHT, not {value!r}", field="lora"
            ) from exc
    return loras


def _parse_references(values: list[str], images: dict[str, bytes]) -> list[dict]:
    """FLUX.2 references from ``--reference PATH[:WEIGHT]`` (a path that exists is taken whole,
    colon and all); their bytes go into `images` as ``references.N.image``."""
    references = []
    for n, value in enumerate(values):
        path, weight = Path(value), 1.0
        head, colon, tail = value.rpartition(":")
        if colon and not path.exists():
            try:
                weight = float(tail)
            except ValueError as exc:
                raise InvalidInput(
                    f"`--reference` must be PATH or PATH:WEIGHT, not {value!r}", field="reference"
                ) from exc
            path = Path(head)
        field = f"references.{n}.image"
        images[field] = _read_input(path, field, argument="reference")
        references.append({"image": "-", "weight": weight})
    return references


def _ip_adapter(
    model: str | None, image: Path | None, scale: float | None, images: dict[str, bytes]
) -> dict | None:
    """The request's ``ip_adapter`` from ``--ip-adapter ID --ip-adapter-image PATH
    --ip-adapter-scale S``; its image's bytes go into `images` as ``ip_adapter.image``."""
    if model is None:
        if image is not None or scale is not None:
            raise InvalidInput(
                "--ip-adapter-image and --ip-adapter-scale need --ip-adapter (its id)",
                field="ip_adapter",
            )
        return None
    adapter: dict = {"model": model}
    if scale is not None:
        adapter["scale"] = scale
    if image is not None:
        adapter["image"] = "-"
        images["ip_adapter.image"] = _read_input(image, "ip_adapter.image")
    return adapter


def _run_diffusion(
    kind: str,
    fields: dict,
    loras: list[str],
    images: dict[str, bytes],
    output: Path,
    server: str | None,
    as_json: bool,
) -> None:
    """Run a generate/edit job (on `server`, or in this process) and write its outputs:
    OUT itself for one image, OUT-0, OUT-1, ... for several."""
    from pydantic import ValidationError

    from assetbox.kinds.diffusion import GenerateOptions
    from assetbox.kinds.edit import EditRequest
    from assetbox.kinds.upscale import format_for_path

    request = {k: v for k, v in fields.items() if v is not None}
    request |= {"loras": _parse_loras(loras), "format": format_for_path(output)}
    options_model = EditRequest if kind == "edit" else GenerateOptions
    try:
        options_model(**request)  # bad options fail here, before any job exists
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc) from exc
    job_id, results = _run_job(kind, request, images, server, progress="steps")
    paths = [output]
    if len(results) > 1:
        paths = [output.with_name(f"{output.stem}-{n}{output.suffix}") for n in range(len(results))]
    for path, result in zip(paths, results, strict=True):
        write_atomically(path, result.data)
    _report(job_id, list(zip(paths, results, strict=True)), as_json)


def _read_tiles_json(path: Path) -> dict:
    """Per-tile overrides from a JSON file (an object by tile id)."""
    try:
        tiles = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path} as JSON: {exc}", field="tiles_json") from exc
    if not isinstance(tiles, dict):
        raise InvalidInput(f"{path} must hold a JSON object by tile id", field="tiles_json")
    return tiles


def _read_input(path: Path, field: str, *, argument: str | None = None) -> bytes:
    """An input image's bytes, checked; a file that cannot be read names the CLI `argument`."""
    from assetbox.imaging import probe_image

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field=argument or field) from exc
    probe_image(data, field=field)
    return data


_Model = Annotated[str, typer.Option(help="Checkpoint id (assetbox models list).")]
_Width = Annotated[
    int | None,
    typer.Option(help="Pixels, a multiple of 8 (16 for Flux, Qwen-Image and Z-Image)."),
]
_EditWidth = Annotated[
    int | None,
    typer.Option(
        help="Output width, a multiple of 8 (16 for Flux, Qwen-Image, Z-Image). Default: the "
        "input's width rounded to that multiple, or with only --height the width that keeps "
        "the input's aspect ratio; an input over 4096 px needs an explicit size. Instruction "
        "edit: the last --image's aspect ratio at --condition-pixels."
    ),
]
_EditHeight = Annotated[
    int | None,
    typer.Option(
        help="Output height, a multiple of 8 (16 for Flux, Qwen-Image, Z-Image). Default: the "
        "input's height rounded to that multiple, or with only --width the height that keeps "
        "the input's aspect ratio (instruction edit: as --width)."
    ),
]
_Steps = Annotated[int | None, typer.Option(help="Denoising steps. (default: by family)")]
_Guidance = Annotated[float | None, typer.Option(help="Guidance scale. (default: by family)")]
_Seed = Annotated[int | None, typer.Option(help="Seed of the first image. (default: random)")]
_Sampler = Annotated[str | None, typer.Option(help="euler, euler_a, ddim, dpmpp_2m, ...")]
_Lora = Annotated[list[str], typer.Option("--lora", help="NAME or NAME:WEIGHT (up to 4).")]
_Server = Annotated[
    str | None, typer.Option(help="Run on this server. (default: ASSETBOX_SERVER_URL)")
]
_Reference = Annotated[
    list[str],
    typer.Option(
        "--reference",
        help="FLUX.2: a reference image, PATH or PATH:WEIGHT (weight 0-4, 1 as FLUX.2 itself, "
        "0 as if left out); repeat for up to 16, shared by all prompts.",
    ),
]
_IPAdapter = Annotated[
    str | None,
    typer.Option("--ip-adapter", help="IP-Adapter id (SD 1.5, SDXL): an image as a prompt."),
]
_IPAdapterScale = Annotated[
    float | None,
    typer.Option(help="How strongly the IP-Adapter's image steers, 0-2. (0.6)"),
]
_Backend = Annotated[
    str,
    typer.Option(
        help="auto, diffusers or nunchaku (4-bit Qwen-Image(-Edit) on a supported CUDA GPU; "
        "refused with the reason elsewhere)."
    ),
]
_Rank = Annotated[int | None, typer.Option(help="nunchaku: its weights' rank, 32 or 128.")]


@app.command("generate", cls=_JsonCommand)
def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG/JPEG/WebP to write.")],
    model: _Model,
    negative: Annotated[str | None, typer.Option(help="Negative prompt.")] = None,
    count: Annotated[int, typer.Option(help="Images per prompt.")] = 1,
    width: _Width = None,
    height: _Width = None,
    steps: _Steps = None,
    guidance: _Guidance = None,
    seed: _Seed = None,
    sampler: _Sampler = None,
    lora: _Lora = [],  # noqa: B006 (typer reads the default)
    reference: _Reference = [],  # noqa: B006
    ip_adapter: _IPAdapter = None,
    ip_adapter_image: Annotated[
        Path | None, typer.Option(help="The IP-Adapter's image (needed here).")
    ] = None,
    ip_adapter_scale: _IPAdapterScale = None,
    backend: _Backend = "auto",
    rank: _Rank = None,
    server: _Server = None,
    as_json: _Json = False,
) -> None:
    """Text to image. Several outputs are written as OUT-0.png, OUT-1.png, ... FLUX.2 takes
    reference images (--reference PATH:WEIGHT), SD 1.5 and SDXL an IP-Adapter's image."""
    fields = {
        "model": model,
        "prompts": prompts,
        "negative_prompt": negative,
        "num_images_per_prompt": count,
        "width": width,
        "height": height,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "sampler": sampler,
        "backend": backend,
        "rank": rank,
    }
    try:
        images: dict[str, bytes] = {}
        fields["references"] = _parse_references(reference, images)
        fields["ip_adapter"] = _ip_adapter(ip_adapter, ip_adapter_image, ip_adapter_scale, images)
        _run_diffusion("generate", fields, lora, images, output, server, as_json)
    except AssetboxError as exc:
        raise _fail(exc, as_json) from exc


@app.command("edit", cls=_JsonCommand)
def edit(
    image: Annotated[
        Path | None,
        typer.Argument(
            help="img2img: the image to edit (not with --instruction).", show_default=False
        ),
    ] = None,
    prompt: Annotated[
        str | None, typer.Argument(help="img2img: what the result shows.", show_default=False)
    ] = None,
    *,
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG/JPEG/WebP to write.")],
    model: _Model,
    instruction: Annotated[
        str | None,
        typer.Option(
            help="Instruction edit (qwen_image_edit, qwen_image_edit_plus, FLUX.2): what to "
            "change in the --image images, e.g. 'make the sky red'."
        ),
    ] = None,
    input_images: Annotated[
        list[Path],
        typer.Option(
            "--image",
            help="Instruction edit: an input image; repeat for several (qwen_image_edit 1, "
            "qwen_image_edit_plus 1-3, FLUX.2 1-16), in order.",
        ),
    ] = [],  # noqa: B006
    strength: Annotated[
        float | None, typer.Option(help="img2img: how much is redrawn (0-1]. (0.6)")
    ] = None,
    controlnet: Annotated[str | None, typer.Option(help="img2img: ControlNet id.")] = None,
    control_image: Annotated[
        Path | None, typer.Option(help="Control image. (default: the input)")
    ] = None,
    conditioning_scale: Annotated[float, typer.Option(help="ControlNet strength.")] = 1.0,
    negative: Annotated[str | None, typer.Option(help="Negative prompt.")] = None,
    width: _EditWidth = None,
    height: _EditHeight = None,
    steps: _Steps = None,
    guidance: _Guidance = None,
    true_cfg_scale: Annotated[
        float | None,
        typer.Option(
            help="Qwen-Image-Edit(-Plus): true CFG (acts only above 1 with --negative). (4)"
        ),
    ] = None,
    condition_pixels: Annotated[
        int | None,
        typer.Option(
            help="Qwen-Image-Edit(-Plus): the area each input is resized to before the model "
            "sees it. (1048576, 1 MP)"
        ),
    ] = None,
    seed: _Seed = None,
    sampler: _Sampler = None,
    lora: _Lora = [],  # noqa: B006
    reference: _Reference = [],  # noqa: B006
    ip_adapter: _IPAdapter = None,
    ip_adapter_image: Annotated[
        Path | None, typer.Option(help="The IP-Adapter's image. (default: the input)")
    ] = None,
    ip_adapter_scale: _IPAdapterScale = None,
    backend: _Backend = "auto",
    rank: _Rank = None,
    server: _Server = None,
    as_json: _Json = False,
) -> None:
    """Edit an image. img2img: `assetbox edit IMAGE PROMPT` (optionally a ControlNet, an
    IP-Adapter). By instruction: `assetbox edit --instruction TEXT --image PATH [--image PATH
    ...]` with Qwen-Image-Edit (1 image), -Plus (1-3) or FLUX.2 (1-16)."""
    fields = {
        "model": model,
        "negative_prompt": negative,
        "strength": strength,
        "width": width,
        "height": height,
        "steps": steps,
        "guidance": guidance,
        "true_cfg_scale": true_cfg_scale,
        "condition_pixels": condition_pixels,
        "seed": seed,
        "sampler": sampler,
        "backend": backend,
        "rank": rank,
    }
    try:
        if instruction is not None or input_images:
            if instruction is None:
                raise InvalidInput(
                    "--image is for instruction edit: give --instruction too (img2img takes "
                    "IMAGE PROMPT)",
                    field="instruction",
                )
            if image is not None:
                raise InvalidInput(
                    "instruction edit takes its images from --image, not from an IMAGE argument",
                    field="image",
                )
            if not input_images:
                raise InvalidInput(
                    "--instruction needs --image (the image to edit)", field="images"
                )
            images = {
                f"images.{n}": _read_input(path, f"images.{n}")
                for n, path in enumerate(input_images)
            }
            fields |= {"instruction": instruction, "images": ["-"] * len(input_images)}
        else:
            if image is None or prompt is None:
                raise InvalidInput(
                    "give IMAGE PROMPT (img2img) or --instruction TEXT --image PATH",
                    field="image" if image is None else "prompt",
                )
            images = {"image": _read_input(image, "image")}
            fields["prompts"] = [prompt]
        if controlnet is not None:
            fields["controlnet"] = {"model": controlnet, "conditioning_scale": conditioning_scale}
            if control_image is not None:
                images["controlnet.image"] = _read_input(control_image, "controlnet.image")
        fields["references"] = _parse_references(reference, images)
        fields["ip_adapter"] = _ip_adapter(ip_adapter, ip_adapter_image, ip_adapter_scale, images)
        _run_diffusion("edit", fields, lora, images, output, server, as_json)
    except AssetboxError as exc:
        raise _fail(exc, as_json) from exc


@app.command("caption", cls=_JsonCommand)
def caption(
    images: Annotated[list[Path], typer.Argument(help="Images to caption (PNG, JPEG or WebP).")],
    model: Annotated[str, typer.Option(help="Captioner id (assetbox models list).")],
    tiles: Annotated[
        bool,
        typer.Option(
            "--tiles", help="Caption the tiles of ONE image's upscale plan instead of images."
        ),
    ] = False,
    scale: Annotated[float, typer.Option(help="--tiles: the upscale's factor.")] = 2,
    tile: Annotated[int, typer.Option(help="--tiles: tile side in output px.")] = 1024,
    overlap: Annotated[int, typer.Option(help="--tiles: least overlap in output px.")] = 128,
    pre_upscale: Annotated[
        str, typer.Option(help="--tiles: upscaler id or 'lanczos'.")
    ] = "realesrgan-x4plus",
    prompt: Annotated[str | None, typer.Option(help="The question to the model.")] = None,
    system_prompt: Annotated[
        str | None, typer.Option(help="(default: one tuned for diffusion prompts)")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest caption in tokens.")] = None,
    batch: Annotated[int, typer.Option(help="Images or tiles per forward pass.")] = 8,
    server: _Server = None,
    as_json: _Json = False,
) -> None:
    """Describe images with a vision-language model (a table; --json for one JSON object).
    With --tiles, one caption per tile of the image's upscale plan (ids as `assetbox tiles`)."""
    from pydantic import ValidationError

    from assetbox.kinds.caption import CaptionRequest

    try:
        request: dict = {"model": model, "batch": batch}
        for name, value in (
            ("prompt", prompt),
            ("system_prompt", system_prompt),
            ("max_tokens", max_tokens),
        ):
            if value is not None:
                request[name] = value
        if tiles:
            if len(images) != 1:
                raise InvalidInput(
                    f"--tiles captions the tiles of one image, not {len(images)}", field="images"
                )
            grid = {"scale": scale, "tile": tile, "overlap": overlap, "pre_upscale": pre_upscale}
            request |= {"image": "-", "tiles": grid}
            inputs = {"image": _read_input(images[0], "image")}
        else:
            request["images"] = ["-"] * len(images)
            inputs = {
                f"images.{n}": _read_input(path, f"images.{n}") for n, path in enumerate(images)
            }
        try:
            CaptionRequest(**request)  # bad options fail here, before any job exists
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc) from exc
        # Tile mode adds the preview image as a second output; the table is the captions.
        job_id, (result, *_) = _run_job("caption", request, inputs, server, progress="units")
        found = json.loads(result.data)
    except AssetboxError as exc:
        raise _fail(exc, as_json) from exc
    if as_json:
        _echo_json({"job_id": job_id, "status": "succeeded", **found})
        return
    _caption_table(found, [str(path) for path in images], tiles)


def _caption_table(found: dict, names: list[str], tiles: bool) -> None:
    from rich.table import Table

    console = Console()
    if tiles:
        title = f"{names[0]} at {found['width']}x{found['height']}: {len(found['captions'])} tiles"
        table = Table(title=title, show_lines=True)
        table.add_column("tile")
        table.add_column("box (x, y, w, h)")
    else:
        table = Table(show_lines=True)
        table.add_column("image")
    table.add_column("caption")
    table.add_column("tokens", justify="right")
    for entry in found["captions"]:
        caption_text, tokens = entry["caption"], str(entry["tokens"])
        if tiles:
            box = ", ".join(map(str, entry["box"]))
            table.add_row(entry["id"], box, caption_text, tokens)
        else:
            table.add_row(names[entry["index"]], caption_text, tokens)
    console.print(table)


GRACEFUL_SHUTDOWN_S = 2  # for open HTTP connections, before the engine stops


def service_app(host: str, port: int):
    """The service `assetbox serve` runs: the API, and the web UI at /ui unless the `ui`
    setting is off. The UI drives this same service over HTTP, as it would from a laptop."""
    from assetbox import compat
    from assetbox.config import get_settings
    from assetbox.server import create_app

    app = create_app()
    settings = get_settings()
    compat.mount(app, settings)
    if settings.ui:
        from assetbox import ui

        ui.mount(app, ui.Service(_own_url(host, port), files=settings.data_dir / "ui"))
    return app


def _own_url(host: str, port: int) -> str:
    """The URL this machine reaches a server listening on `host` at."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@app.command("ui")
def ui_command(
    server: Annotated[
        str, typer.Option(help="The assetbox service to drive (ASSETBOX_SERVER_URL).")
    ] = "",
    api_key: Annotated[
        str, typer.Option(help="Its API key, used when the page gives none (ASSETBOX_API_KEY).")
    ] = "",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
) -> None:
    """Run the web UI alone (at /ui), against a service elsewhere: on a laptop, say, with the
    GPU service on another machine. `assetbox serve` also serves it, at its own /ui."""
    import tempfile

    import uvicorn

    from assetbox import ui
    from assetbox.config import get_settings

    settings = get_settings()
    url = server or settings.server_url or "http://127.0.0.1:7000"
    service = ui.Service(
        url.rstrip("/"),
        api_key=api_key or settings.api_key,
        files=Path(tempfile.gettempdir()) / f"assetbox-ui-{port}",
    )
    typer.echo(f"UI at http://{host}:{port}/ui/ driving {service.url}", err=True)
    uvicorn.run(ui.standalone_app(service), host=host, port=port, log_level="warning")


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7000,
) -> None:
    """Run the HTTP API (OpenAPI docs at /docs) and the web UI (/ui) on embedded defaults:
    SQLite and files under the data directory, local workers."""
    from assetbox.logs import configure_json_logs

    # First: it turns progress bars off through variables that libraries read on import.
    configure_json_logs()
    import uvicorn

    # log_config=None (below): uvicorn's loggers keep no handlers of their own and reach our
    # JSON handler (its default config prints plain text). Our JSON request log replaces its
    # access log.
    service = service_app(host, port)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            # SIGTERM/SIGINT: the engine stops sending units and asks running ones to stop
            # now, while uvicorn drains connections (its event streams end with it).
            engine = getattr(service.state, "engine", None)
            if engine is not None:
                engine.begin_close()
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    # timeout_graceful_shutdown: a connection that stays open must not hold the exit.
    config = uvicorn.Config(
        service,
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    Server(config).run()


@models_app.command("list")
def models_list() -> None:
    """Show the models in the store (built-in upscalers are converted on first listing)."""
    from rich.table import Table

    from assetbox.models.builtin import ensure_builtin_upscalers
    from assetbox.models.store import model_store

    store = model_store()
    try:
        ensure_builtin_upscalers(store, progress=lambda text: err.print(text, highlight=False))
    except AssetboxError as exc:
        raise _fail(exc) from exc
    table = Table(title=f"models in {store.root}")
    columns = ("id", "kind", "family", "architecture", "scale", "engines", "size", "source")
    for column in (*columns, "added"):
        table.add_column(column, overflow="fold")
    for m in store.list():
        table.add_row(
            m.id,
            m.kind,
            m.family or "",
            m.architecture,
            f"x{m.scale}" if m.kind == "upscaler" else "",
            ", ".join(m.engines),
            f"{m.size / 2**20:.1f} MiB",
            m.source,
            m.added.strftime("%Y-%m-%d %H:%M"),
        )
    Console(width=max(Console().width, 160) if not sys.stdout.isatty() else None).print(table)


@models_app.command("rm")
def models_rm(model_id: Annotated[str, typer.Argument(help="Id of the model to delete.")]) -> None:
    """Delete a model from the store."""
    from assetbox.models.store import model_store

    try:
        manifest = model_store().remove(model_id)
    except AssetboxError as exc:
        raise _fail(exc) from exc
    typer.echo(f"removed {manifest.id}")


@models_app.command("import")
def models_import(
    path: Annotated[
        Path,
        typer.Argument(
            help="A diffusers folder (checkpoint or ControlNet), a .safetensors checkpoint or "
            "LoRA, or an upscaler: ncnn .param (with its .bin), .safetensors or .pth"
        ),
    ],
    model_id: Annotated[
        str | None, typer.Option("--id", help="Store id (default: file name).")
    ] = None,
) -> None:
    """Import a model into the store (kind and family detected from its files; pickles such as
    .ckpt are refused)."""
    from assetbox.models.importer import import_model
    from assetbox.models.store import model_store

    try:
        manifest = import_model(
            model_store(), path, model_id=model_id, progress=lambda t: err.print(t, highlight=False)
        )
    except AssetboxError as exc:
        raise _fail(exc) from exc
    if manifest.kind == "upscaler":
        typer.echo(f"imported {manifest.id}: {manifest.architecture} x{manifest.scale}")
    else:
        typer.echo(f"imported {manifest.id}: {manifest.family} {manifest.kind}")


ServerOption = Annotated[
    str | None, typer.Option(help="The server (http://HOST:PORT). (default: ASSETBOX_SERVER_URL)")
]


def _call(server: str | None, call, as_json: bool = False):
    """Run `call(client)` against the server, with API errors as CLI errors."""
    import httpx

    from assetbox.client import ApiError

    try:
        with _client(server) as api:
            return call(api)
    except ApiError as exc:
        raise _fail(_api_error(exc), as_json) from exc
    except httpx.HTTPError as exc:
        raise _fail(AssetboxError(f"cannot reach the server: {exc}"), as_json) from exc
    except AssetboxError as exc:
        raise _fail(exc, as_json) from exc


@jobs_app.command("list", cls=_JsonCommand)
def jobs_list(
    server: ServerOption = None,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, ...")] = None,
    kind: Annotated[str | None, typer.Option(help="upscale, generate, edit, ...")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    as_json: _Json = False,
) -> None:
    """The newest jobs on the server."""
    from rich.table import Table

    filters = {k: v for k, v in {"status": status, "kind": kind, "limit": limit}.items() if v}
    jobs = _call(server, lambda api: api.jobs(**filters), as_json)
    if as_json:
        _echo_json({"jobs": jobs})
        return
    table = Table()
    for column in ("id", "kind", "status", "progress", "created", "error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        progress = job.get("progress") or {}
        table.add_row(
            job["id"],
            job["kind"],
            job["status"],
            f"{progress.get('done', 0)}/{progress.get('total', 0)}",
            job["created_at"][:19].replace("T", " "),
            (job.get("error") or {}).get("message", ""),
        )
    Console(width=max(Console().width, 160) if not sys.stdout.isatty() else None).print(table)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job's id.")], server: ServerOption = None
) -> None:
    """A job as JSON (status, progress, outputs with their URLs, error)."""
    typer.echo(json.dumps(_call(server, lambda api: api.job(job_id)), indent=2))


@jobs_app.command("cancel", cls=_JsonCommand)
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    server: ServerOption = None,
    as_json: _Json = False,
) -> None:
    """Cancel a job (a running one stops between steps)."""
    job = _call(server, lambda api: api.cancel(job_id), as_json)
    if as_json:
        _echo_json(job)
    else:
        typer.echo(f"{job['id']} {job['status']}")


@app.command("tiles")
def tiles(
    width: Annotated[int, typer.Argument(help="Image width in pixels.")],
    height: Annotated[int, typer.Argument(help="Image height in pixels.")],
    tile: Annotated[int, typer.Option(help="Tile size in pixels.")] = 1024,
    overlap: Annotated[int, typer.Option(help="Least overlap between neighbours.")] = 128,
) -> None:
    """Show the tile plan for an image size: grid, tile positions and seam overlaps."""
    from rich.table import Table

    from assetbox.imaging import TilePlan

    try:
        plan = TilePlan.for_image(width, height, tile, overlap)
    except InvalidInput as exc:
        raise typer.BadParameter(exc.message, param_hint=f"--{exc.field}") from exc
    console = Console()
    table = Table(title=f"{width}x{height}: {plan.rows}x{plan.cols} = {len(plan)} tiles")
    table.add_column("axis")
    table.add_column("starts")
    table.add_column("seam overlaps")
    table.add_row("x", " ".join(map(str, plan.xs)), " ".join(map(str, plan.seams("x"))) or "-")
    table.add_row("y", " ".join(map(str, plan.ys)), " ".join(map(str, plan.seams("y"))) or "-")
    console.print(table)
    if plan.padded:
        console.print("The image is smaller than a tile along an axis: its tile is padded.")


if __name__ == "__main__":
    app()
