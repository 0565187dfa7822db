"""Importing upscaler weights into the store: ncnn ``.param``/``.bin``, ``.safetensors``, ``.pth``.

Every import ends as a ``model.safetensors`` state dict that spandrel recognises; the architecture
and scale come from spandrel's detection, never from the file name. ``.pth`` files are pickles, so
they are opened only with torch's weights-only unpickler, which refuses code and arbitrary
objects. Anything else is refused, and a refused import leaves the store as it was.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assetbox.errors import InvalidInput, ModelError, UnsupportedFormat
from assetbox.models import ncnn
from assetbox.models.architectures import import_spandrel, load_descriptor
from assetbox.models.store import (
    NCNN_BIN_FILE,
    NCNN_PARAM_FILE,
    WEIGHTS_FILE,
    Engine,
    ModelKind,
    ModelManifest,
    ModelStore,
    default_id,
    now,
    sha256_file,
    validate_model_id,
)

SUFFIXES = (".param", ".safetensors", ".pth")
Progress = Callable[[str], None]

# Context (input pixels each side of a tile) a window needs so that tiling does not show; the
# others get the conservative default. Measured on skimage's astronaut at 200x200 with 64 px
# tiles against one untiled pass: Compact (realesr-animevideov3) differs by at most 2/255 with 4
# px and 1/255 with 8 px; RRDBNet (x4plus) by 0.17/255 on average (p99.9 4/255) with 24 px and
# 0.06/255 (p99.9 2/255) with 32 px. On bench/upscale_gan.py's photo mosaic (sharp edges where
# the photos meet) Compact needs 8 px for 2/255; 6 px gives 6/255. The x2/x3 files add a bicubic
# resize (2 px).
_DEFAULT_CONTEXT = 32
_CONTEXT = {"Compact": 8, "ESRGAN": 32}


def _context(architecture: str, post_resize: float | None) -> int:
    return _CONTEXT.get(architecture, _DEFAULT_CONTEXT) + (2 if post_resize else 0)


def import_upscaler(
    store: ModelStore,
    path: Path,
    *,
    model_id: str | None = None,
    source: str | None = None,
    progress: Progress | None = None,
) -> ModelManifest:
    """Import an upscaler file into the store and return its manifest.

    Raises:
        InvalidInput: a bad id.
        UnsupportedFormat: a suffix other than .param/.safetensors/.pth, or a malformed file.
        ModelError: spandrel recognises no upscaler in the weights.
        Conflict: the id is taken.
    """
    import torch
    from safetensors.torch import load_file, save_file

    say = progress or (lambda message: None)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UnsupportedFormat(
            f"`path` must be an ncnn .param, a .safetensors or a .pth file but is {path.name!r}",
            field="path",
        )
    if not path.is_file():
        raise UnsupportedFormat(f"`path` {str(path)!r} is not a file", field="path")
    model_id = validate_model_id(model_id or default_id(path))
    post_resize: float | None = None
    network_scale_expected: int | None = None
    engines: list[Engine] = ["torch"]

    say(f"reading {path.name}")
    if suffix == ".param":
        conversion = ncnn.convert(path)
        state = {k: torch.from_numpy(v.copy()) for k, v in conversion.state_dict.items()}
        post_resize = conversion.post_resize
        network_scale_expected = conversion.network_scale
        engines = ["torch", "ncnn"]
    elif suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own untyped errors for bad headers
            raise UnsupportedFormat(
                f"{path.name} is not a readable safetensors file: {exc}", field="path"
            ) from exc
    else:
        state = _load_pth(path)

    descriptor = load_descriptor(state)
    if type(descriptor).__name__ != "ImageModelDescriptor":
        raise ModelError(
            f"{path.name} holds a {descriptor.architecture.name} model, which is not an upscaler"
        )
    if network_scale_expected is not None and descriptor.scale != network_scale_expected:
        raise ModelError(
            f"{path.name}: spandrel detects scale {descriptor.scale}, the ncnn graph says "
            f"{network_scale_expected}"
        )
    architecture = descriptor.architecture.id
    # spandrel may rename keys (old ESRGAN layouts); store what its model loads.
    state = {k: v.detach().contiguous().clone() for k, v in descriptor.model.state_dict().items()}
    network_scale = int(descriptor.scale)
    scale = round(network_scale * post_resize) if post_resize else network_scale

    with store.lock(), store.staging() as staged:
        say(f"converting {path.name} ({architecture}, x{scale}) into the store as {model_id}")
        save_file(state, str(staged / WEIGHTS_FILE), metadata={"architecture": architecture})
        if "ncnn" in engines:
            shutil.copyfile(path, staged / NCNN_PARAM_FILE)
            shutil.copyfile(path.with_suffix(".bin"), staged / NCNN_BIN_FILE)
        manifest = ModelManifest(
            id=model_id,
            kind="upscaler",
            architecture=architecture,
            scale=scale,
            network_scale=network_scale,
            post_resize=post_resize,
            context=_context(architecture, post_resize),
            engines=engines,
            source=source or f"import of {path.name}",
            sha256=sha256_file(staged / WEIGHTS_FILE),
            size=sum(p.stat().st_size for p in staged.iterdir()),
            added=now(),
        )
        return store.commit(staged, manifest)


def _load_pth(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsupportedFormat(
            f"{path.name} is not a plain weights file: the safe unpickler refused it "
            f"({str(exc).splitlines()[0]})",
            field="path",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UnsupportedFormat(
            f"{path.name} is not a readable .pth file: {exc}", field="path"
        ) from exc
    if not isinstance(loaded, dict):
        raise UnsupportedFormat(
            f"{path.name} holds a {type(loaded).__name__}, not a state dict", field="path"
        )
    return import_spandrel().canonicalize_state_dict(loaded)


def import_model(
    store: ModelStore,
    path: Path,
    *,
    model_id: str | None = None,
    source: str | None = None,
    progress: Progress | None = None,
    expected_kind: ModelKind | None = None,
) -> ModelManifest:
    """Import any model: diffusers folders, transformers captioner folders, IP-Adapters (with
    their image encoders), diffusion checkpoints and LoRAs (by their headers), else upscalers.
    Pickles other than weights-only ``.pth`` upscalers are refused. With `expected_kind`, a
    model of another kind is refused before anything is stored.

    Raises:
        UnsupportedFormat, ModelError, InvalidInput, Conflict: as the importers do.
    """
    from assetbox.models.captioner_import import import_captioner
    from assetbox.models.diffusion_import import import_diffusion
    from assetbox.models.families import detect, is_diffusion, read_header, refuse_pickle
    from assetbox.models.ip_adapter_import import detect_ip_adapter, import_ip_adapter

    def by_detection() -> ModelManifest:  # folders and diffusion files
        detected = detect(path)
        _expect(expected_kind, detected.kind)
        importer = import_captioner if detected.kind == "captioner" else import_diffusion
        return importer(
            store, path, model_id=model_id, source=source, progress=progress, detected=detected
        )

    path = Path(path)
    adapter = detect_ip_adapter(path)  # before the others: its keys are no diffusion model's
    if adapter is not None:
        _expect(expected_kind, "ip_adapter")
        return import_ip_adapter(
            store, path, model_id=model_id, source=source, progress=progress, found=adapter
        )
    if path.is_dir():
        return by_detection()
    if path.suffix.lower() == ".safetensors" and path.is_file():
        if is_diffusion(read_header(path)):
            return by_detection()
    elif path.suffix.lower() not in SUFFIXES:
        refuse_pickle(path)
    _expect(expected_kind, "upscaler")
    return import_upscaler(store, path, model_id=model_id, source=source, progress=progress)


def _expect(expected: ModelKind | None, found: ModelKind) -> None:
    if expected is not None and expected != found:
        raise InvalidInput(f"`kind` is {expected!r} but the file is a {found}", field="kind")
