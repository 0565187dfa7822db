"""GAN upscaling (Real-ESRGAN class models): tiled, batched, seam-free, bounded memory.

How a picture is cut up: the model needs context around every output pixel (`context`, its
reach in input pixels). Each window the model sees is a core tile plus `context` pixels of real
image on each side, so windows are ``tile + 2 * context`` pixels and lie fully inside the image
(no padding except the image's own border, exactly as in an untiled pass). Windows overlap by
``overlap + 2 * context``; when blending, the outer `context` pixels of every inner edge get no
weight and the remaining `overlap` pixels are feathered. So each output pixel comes from windows
that saw its full neighbourhood, and tiling does not show.

Engines: ``torch`` runs the spandrel model (batched, channels-last, ``inference_mode``);
``ncnn`` runs the original ncnn files (CPU threads, or Vulkan where a Vulkan GPU exists) one
window at a time. Both go through the same tiling and blending.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from assetbox.errors import Cancelled, InvalidInput, ModelError, OutOfMemory
from assetbox.imaging import Tile, TileBlender, TilePlan, extract_tile
from assetbox.imaging.resize import resize_lanczos
from assetbox.imaging.transfer import Transfer

Progress = Callable[[int, int], None]
EngineChoice = Literal["auto", "torch", "ncnn"]
AlphaMode = Literal["model", "lanczos"]

DEFAULT_TILE = 256
# Default core tiles by device. On a CPU, ncnn's memory grows with the window (about 3.5 KB per
# input pixel for realesr-animevideov3) and its speed per pixel is flat from 196 to 400 px
# windows, so a 224 px core keeps memory low at no cost in speed (bench/upscale_gan.py).
CPU_TILE = 224
GPU_TILE = 512
DEFAULT_OVERLAP = 2
DEFAULT_BATCH = 4
MIN_TILE = 16  # below this, an out-of-memory error is final


class UpscaleBackend(Protocol):
    """Runs one model on batches of equal-size windows."""

    name: str
    max_batch: int | None  # windows per call it can use; None = any
    preferred_tile: int  # default core tile for this engine and device
    network_scale: int
    post_resize: float | None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` float32 0..1 → ``(N, H*s, W*s, 3)`` float32 0..1.

        Raises:
            OutOfMemory: the device ran out of memory for this batch.
        """
        ...


# -- engines ----------------------------------------------------------------------------------


class TorchBackend:
    """A spandrel model on a torch device, run on whole batches in channels-last layout."""

    name = "torch"
    max_batch = None

    def __init__(
        self,
        weights: Path,
        *,
        post_resize: float | None = None,
        device: str | None = None,
    ) -> None:
        import torch
        from safetensors.torch import load_file

        from assetbox.models.architectures import load_descriptor

        self._torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        descriptor = load_descriptor(load_file(str(weights)))
        self.network_scale = int(descriptor.scale)
        self.post_resize = post_resize
        # CPUs run small windows faster per pixel (they stay in cache); GPUs want big batches.
        self.preferred_tile = CPU_TILE if self.device.type == "cpu" else GPU_TILE
        self.model = (
            descriptor.model.eval()
            .to(self.device)
            .to(memory_format=torch.channels_last)
            .requires_grad_(False)
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        try:
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
                x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
                y = self.model(x)
                if self.post_resize:
                    y = torch.nn.functional.interpolate(
                        y, scale_factor=self.post_resize, mode="bicubic", align_corners=False
                    )
                y = y.clamp_(0, 1).permute(0, 2, 3, 1)
                return y.to("cpu", torch.float32).contiguous().numpy()
        except torch.OutOfMemoryError as exc:
            raise OutOfMemory(f"{self.device} ran out of memory for {batch.shape}") from exc
        except RuntimeError as exc:
            if "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
                raise OutOfMemory(f"{self.device} ran out of memory: {exc}") from exc
            raise


def vulkan_gpu_count() -> int:
    """Vulkan GPUs ncnn can use; 0 when there is no Vulkan driver (its complaints are hidden)."""
    import ncnn

    with _quiet_stderr():
        return int(ncnn.get_gpu_count())


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    # ncnn's C++ side prints "dlopen failed libvulkan.so.1" on machines without Vulkan.
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class NcnnBackend:
    """The original ncnn files, one window per call (ncnn takes no batch)."""

    name = "ncnn"
    max_batch = 1  # ncnn takes one image per extraction; bigger batches only cost memory

    def __init__(
        self,
        param: Path,
        model: Path,
        *,
        network_scale: int,
        post_resize: float | None = None,
        threads: int | None = None,
        vulkan: bool | None = None,
    ) -> None:
        import ncnn

        self._ncnn = ncnn
        self.network_scale = network_scale
        self.post_resize = post_resize  # applied inside the ncnn graph
        self.net = ncnn.Net()
        self.nbytes = model.stat().st_size  # what the model cache counts for it
        use_vulkan = vulkan_gpu_count() > 0 if vulkan is None else vulkan
        self.net.opt.use_vulkan_compute = use_vulkan
        self.preferred_tile = GPU_TILE if use_vulkan else CPU_TILE
        self.net.opt.num_threads = threads or os.cpu_count() or 1
        with _quiet_stderr():
            if self.net.load_param(str(param)) != 0 or self.net.load_model(str(model)) != 0:
                raise ModelError(f"ncnn could not load {param.name} / {model.name}")

    def run(self, batch: np.ndarray) -> np.ndarray:
        outputs = []
        for window in batch:
            # The Mat borrows the array's memory: keep `planar` alive until extract returns.
            planar = np.ascontiguousarray(window.transpose(2, 0, 1))
            extractor = self.net.create_extractor()
            extractor.input("data", self._ncnn.Mat(planar))
            status, out = extractor.extract("output")
            if status != 0:
                raise ModelError(f"ncnn failed on a {window.shape} window (status {status})")
            outputs.append(np.clip(np.asarray(out).transpose(1, 2, 0), 0.0, 1.0))
            del out, extractor  # free ncnn's blobs before the next window
        return outputs[0][None] if len(outputs) == 1 else np.stack(outputs)


# -- tiling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileSettings:
    """How an image is cut for the model (input pixels)."""

    tile: int = DEFAULT_TILE  # core tile; 0 = the whole image in one pass
    overlap: int = DEFAULT_OVERLAP  # feathered seam between cores
    context: int = 16  # real-image pixels each side of a core (the model's reach)
    batch: int = DEFAULT_BATCH  # windows per forward pass

    def check(self) -> None:
        """Raises InvalidInput naming the first bad field."""
        if self.tile != 0 and self.tile < MIN_TILE:
            raise InvalidInput(
                f"`tile` must be 0 (untiled) or at least {MIN_TILE} but is {self.tile}",
                field="tile",
            )
        if self.overlap < 0:
            raise InvalidInput(
                f"`overlap` must be 0 or more but is {self.overlap}", field="overlap"
            )
        if self.tile and self.overlap >= self.tile:
            raise InvalidInput(
                f"`overlap` must be smaller than the tile ({self.tile}) but is {self.overlap}",
                field="overlap",
            )
        if self.context < 0:
            raise InvalidInput(
                f"`context` must be 0 or more but is {self.context}", field="context"
            )
        if self.batch < 1:
            raise InvalidInput(f"`batch` must be at least 1 but is {self.batch}", field="batch")


def _window(length: int, settings: TileSettings) -> int:
    # The fewest cores of at most `tile` pixels that cover the axis, all the same size, each
    # grown by the feathered seam and the context on both sides. Sizing windows from the core
    # count (rather than stepping by a fixed stride) avoids a nearly empty extra row of windows
    # when the image is a little larger than a multiple of the stride.
    count = math.ceil(length / settings.tile)
    core = math.ceil(length / count)
    return min(core + settings.overlap + 2 * settings.context, length)


def plan_windows(width: int, height: int, settings: TileSettings) -> tuple[TilePlan, int]:
    """The window plan for an image and the margin (context) the blender must drop."""
    if settings.tile == 0:
        return TilePlan.for_image(width, height, (width, height), 0), 0
    win_w, win_h = _window(width, settings), _window(height, settings)
    overlap = min(settings.overlap + 2 * settings.context, min(win_w, win_h) - 1)
    # Tiny images: the seam must still hold two margins and one blended pixel.
    margin = min(settings.context, max(overlap - 1, 0) // 2)
    return TilePlan.for_image(width, height, (win_w, win_h), max(overlap, 0)), margin


def _to_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) * np.float32(1 / 255)
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) * np.float32(1 / 65535)
    return pixels.astype(np.float32, copy=False)


def _quantize(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # Model output goes to the output's integer type before blending: the blender then decodes
    # through a lookup table instead of evaluating the sRGB curve per pixel. In place, and
    # +0.5 then truncate instead of np.rint: values are already clipped to 0..1.
    if dtype.kind == "f":
        return values
    values *= np.float32(np.iinfo(dtype).max)
    values += np.float32(0.5)
    return values.astype(dtype)


class _Run:
    """One upscale of one array: holds the current tile size, which halves on out-of-memory."""

    def __init__(
        self,
        backend: UpscaleBackend,
        settings: TileSettings,
        transfer: Transfer,
        progress: Progress | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.transfer = transfer
        self.progress = progress
        self.should_stop = should_stop
        self.tile_limit: int | None = None  # set after an out-of-memory error

    @property
    def scale(self) -> int:
        post = self.backend.post_resize
        return round(self.backend.network_scale * post) if post else self.backend.network_scale

    def upscale(self, pixels: np.ndarray, settings: TileSettings, report: bool) -> np.ndarray:
        height, width = pixels.shape[:2]
        plan, _ = plan_windows(width, height, settings)
        outputs = self.windows(pixels, settings, list(plan), report)
        return blend_windows(
            outputs, width, height, self.scale, settings, dtype=pixels.dtype, transfer=self.transfer
        )

    def windows(
        self, pixels: np.ndarray, settings: TileSettings, tiles: list[Tile], report: bool
    ) -> Iterator[tuple[Tile, np.ndarray]]:
        """The model's output for each window of `tiles`, in order, batch by batch."""
        height, width = pixels.shape[:2]
        plan, _ = plan_windows(width, height, settings)
        dtype = pixels.dtype
        done = 0
        if report and self.progress:
            self.progress(0, len(tiles))
        index = 0
        while index < len(tiles):
            if self.should_stop and self.should_stop():
                raise Cancelled("the upscale was cancelled")
            window = max(plan.tile_width, plan.tile_height)
            limit = self.tile_limit
            if limit is not None and window > limit + 2 * settings.context:
                # After an out-of-memory error, windows too big for the device are upscaled
                # as images of their own, with the smaller tile.
                tile = tiles[index]
                batch_out = [
                    self.upscale(
                        extract_tile(pixels, tile),
                        TileSettings(
                            tile=limit,
                            overlap=min(settings.overlap, limit - 1),
                            context=settings.context,
                            batch=settings.batch,
                        ),
                        report=False,
                    )
                ]
                group = [tile]
            else:
                size = min(settings.batch, self.backend.max_batch or settings.batch)
                group = tiles[index : index + size]
                batch = np.stack([_to_float(extract_tile(pixels, t)) for t in group])
                try:
                    batch_out = list(_quantize(self.backend.run(batch), dtype))
                except OutOfMemory:
                    current = limit if limit is not None else (settings.tile or window)
                    if current // 2 < MIN_TILE:
                        raise
                    self.tile_limit = current // 2
                    continue
            yield from zip(group, batch_out, strict=True)
            index += len(group)
            done += len(group)
            if report and self.progress:
                self.progress(done, len(tiles))


def blend_windows(
    outputs: Iterable[tuple[Tile, np.ndarray]],
    width: int,
    height: int,
    scale: int,
    settings: TileSettings,
    *,
    dtype: np.dtype,
    transfer: Transfer = "srgb",
) -> np.ndarray:
    """Blend the model's window outputs of a ``width x height`` image into the upscaled image.

    Raises:
        InvalidInput: a window missing or not of this image's plan.
    """
    plan, margin = plan_windows(width, height, settings)
    blender = TileBlender(plan, scale=scale, transfer=transfer, dtype=dtype, margin=margin)
    out = np.empty((height * scale, width * scale, 3), dtype=dtype)
    for tile, result in outputs:
        for band in blender.add(tile, result):
            out[band.y : band.y + len(band.pixels)] = band.pixels
    if not blender.done:
        raise InvalidInput(f"windows never arrived: {', '.join(blender.missing()[:8])}")
    return out


def upscale_windows(
    backend: UpscaleBackend,
    pixels: np.ndarray,
    settings: TileSettings,
    tiles: list[Tile],
    *,
    should_stop: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """The model's output for some windows of an image (a unit of a job), in the input's dtype.

    Raises:
        OutOfMemory: out of memory even with the smallest tile.
        Cancelled: `should_stop` returned True.
    """
    settings.check()
    run = _Run(backend, settings, "srgb", progress, should_stop)
    return [out for _, out in run.windows(pixels, settings, tiles, report=True)]


def upscale_pixels(
    backend: UpscaleBackend,
    pixels: np.ndarray,
    settings: TileSettings,
    *,
    transfer: Transfer = "srgb",
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Upscale ``(H, W, 3)`` pixels (``uint8``, ``uint16`` or float 0..1) by the model's scale.

    The result has the input's dtype. `progress(done, total)` is called after every batch of
    windows; `should_stop()` is checked before every batch.

    Raises:
        InvalidInput: bad settings or a wrongly shaped array.
        OutOfMemory: out of memory even with the smallest tile.
        Cancelled: `should_stop` returned True.
    """
    settings.check()
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInput(f"pixels must be (H, W, 3) but are {pixels.shape}", field="image")
    return _Run(backend, settings, transfer, progress, should_stop).upscale(
        pixels, settings, report=True
    )


@dataclass(frozen=True)
class UpscaleResult:
    """Colour and alpha at the requested size, in the input's dtype."""

    rgb: np.ndarray
    alpha: np.ndarray | None


def upscale_image(
    backend: UpscaleBackend,
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    *,
    scale: int | None = None,
    settings: TileSettings | None = None,
    alpha_mode: AlphaMode = "model",
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> UpscaleResult:
    """Upscale colour (and alpha, separately) to `scale` (default: the model's own).

    A `scale` below the model's is reached by a Lanczos downsample of the model's output. Alpha
    goes through the model as a gray image (``alpha_mode="model"``, as Real-ESRGAN does) or is
    resized with Lanczos (``"lanczos"``, cheaper); it is blended without gamma.

    Raises:
        InvalidInput: a `scale` above the model's or below 1, bad settings or arrays.
        OutOfMemory, Cancelled: see `upscale_pixels`.
    """
    settings = settings or TileSettings()
    native = _Run(backend, settings, "srgb", None, None).scale
    scale = native if scale is None else scale
    if not 1 <= scale <= native:
        raise InvalidInput(
            f"`scale` must be between 1 and the model's native {native} but is {scale}",
            field="scale",
        )
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        raise InvalidInput(f"alpha {alpha.shape} does not match colour {rgb.shape}", field="alpha")
    if alpha_mode not in ("model", "lanczos"):
        raise InvalidInput(
            f"`alpha_mode` must be model or lanczos but is {alpha_mode!r}", field="alpha"
        )
    height, width = rgb.shape[:2]
    windows = len(plan_windows(width, height, settings)[0])
    model_alpha = alpha is not None and alpha_mode == "model"
    total = windows * (2 if model_alpha else 1)

    def colour_progress(done: int, _: int) -> None:
        if progress:
            progress(done, total)

    def alpha_progress(done: int, _: int) -> None:
        if progress:
            progress(windows + done, total)

    out = upscale_pixels(backend, rgb, settings, progress=colour_progress, should_stop=should_stop)
    out_alpha = None
    if alpha is not None and model_alpha:
        gray = np.repeat(alpha[..., None], 3, axis=2)
        upscaled = upscale_pixels(
            backend,
            gray,
            settings,
            transfer="linear",
            progress=alpha_progress,
            should_stop=should_stop,
        )
        out_alpha = alpha_from_gray(upscaled, alpha.dtype)
    return finish_upscale(out, out_alpha, alpha, native=native, scale=scale)


def alpha_from_gray(upscaled: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Alpha from alpha upscaled as a gray image: the mean of its channels (the model may tint
    gray slightly)."""
    mean = upscaled.mean(axis=2, dtype=np.float32)
    return np.rint(mean).astype(dtype) if np.dtype(dtype).kind == "u" else mean


def finish_upscale(
    rgb: np.ndarray,
    upscaled_alpha: np.ndarray | None,
    source_alpha: np.ndarray | None,
    *,
    native: int,
    scale: int,
) -> UpscaleResult:
    """Colour and alpha at the requested scale: alpha not upscaled by the model is resized with
    Lanczos, and a scale below the model's comes from a Lanczos downsample."""
    height, width = rgb.shape[0] // native, rgb.shape[1] // native
    alpha = upscaled_alpha
    if alpha is None and source_alpha is not None:
        alpha = resize_lanczos(source_alpha, (width * native, height * native))
    if scale != native:
        size = (width * scale, height * scale)
        rgb = resize_lanczos(rgb, size)
        alpha = resize_lanczos(alpha, size) if alpha is not None else None
    return UpscaleResult(rgb, alpha)


def cuda_available() -> bool:
    """Whether torch can use a CUDA GPU, without importing torch (about 200 MB of memory) on
    machines that have no NVIDIA driver at all."""
    if "torch" not in sys.modules and not (
        Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi")
    ):
        return False
    import torch

    return bool(torch.cuda.is_available())


def preferred_tile(engine: Literal["torch", "ncnn"]) -> int:
    """The default core tile of an engine on this machine (see CPU_TILE), without loading it."""
    if engine == "ncnn":
        return GPU_TILE if vulkan_gpu_count() > 0 else CPU_TILE
    return GPU_TILE if cuda_available() else CPU_TILE


def choose_engine(engine: EngineChoice, engines: list[str]) -> Literal["torch", "ncnn"]:
    """The engine to run: ``auto`` takes torch on CUDA and, on a CPU-only machine, ncnn where
    the model has ncnn files (bench/upscale_gan.py measures ncnn faster on CPUs), else torch.

    Raises:
        InvalidInput: an unknown engine, or ncnn asked for a model without ncnn files.
    """
    if engine == "auto":
        return "torch" if "ncnn" not in engines or cuda_available() else "ncnn"
    if engine not in ("torch", "ncnn"):
        raise InvalidInput(
            f"`engine` must be auto, torch or ncnn but is {engine!r}", field="engine"
        )
    if engine not in engines:
        raise InvalidInput(
            f"this model runs on {', '.join(engines)} only, not on {engine}", field="engine"
        )
    return engine


def open_backend(
    folder: Path,
    *,
    engine: Literal["torch", "ncnn"],
    network_scale: int,
    post_resize: float | None,
) -> UpscaleBackend:
    """Load a stored model's weights from its folder for `engine`.

    Raises:
        ModelError: the weights cannot be loaded.
    """
    if engine == "ncnn":
        return NcnnBackend(
            folder / "model.param",
            folder / "model.bin",
            network_scale=network_scale,
            post_resize=post_resize,
        )
    return TorchBackend(folder / "model.safetensors", post_resize=post_resize)
