"""IP-Adapters (SD 1.5, SDXL): what one is, and importing it with its image encoder.

As published (h94/IP-Adapter: ``models/ip-adapter_sd15.safetensors`` beside
``models/image_encoder/``, ``sdxl_models/ip-adapter_sdxl.safetensors`` beside
``sdxl_models/image_encoder/``), an IP-Adapter is one ``.safetensors`` file (keys
``image_proj.*``, the image projection, and ``ip_adapter.<n>.to_k_ip/to_v_ip.*``, one pair per
cross-attention layer) and a transformers ``CLIPVisionModelWithProjection`` folder it was
trained with. An import takes the file (its encoder is the ``image_encoder/`` folder beside it)
or a folder holding exactly one adapter file and ``image_encoder/``. The store keeps
``model.safetensors`` and ``image_encoder/`` (``config.json`` and ``.safetensors`` weights).

The family comes from ``modelspec.architecture`` metadata when the file has it, else from the
cross-attention width of ``to_k_ip``: 768 is SD 1.5's text encoder, 2048 SDXL's. Supported:
the plain adapter (``image_proj.proj``: 4 tokens from the image embedding), Plus (a resampler,
``image_proj.latents``) and Full (``image_proj.proj.0`` ... ``proj.3``). FaceID adapters are
refused: they take face embeddings from insightface, not an image.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from assetbox.errors import UnsupportedFormat
from assetbox.models.families import PICKLE_SUFFIXES, Header, read_header
from assetbox.models.store import (
    WEIGHTS_FILE,
    Family,
    ModelManifest,
    ModelStore,
    default_id,
    now,
    sha256_files,
    validate_model_id,
)

Progress = Callable[[str], None]
ENCODER_DIR = "image_encoder"
_MODELSPEC: dict[str, Family] = {"stable-diffusion-v1": "sd15", "stable-diffusion-xl-v1": "sdxl"}
_WIDTHS: dict[int, Family] = {768: "sd15", 2048: "sdxl"}


@dataclass(frozen=True)
class IPAdapterFiles:
    """An IP-Adapter found on disk: its weights file, encoder folder, family and variant."""

    weights: Path
    encoder: Path
    family: Family
    architecture: str  # IPAdapter, IPAdapterPlus or IPAdapterFull


def is_ip_adapter(header: Header) -> bool:
    return header.has_prefix("image_proj.") and header.has_prefix("ip_adapter.")


def detect_ip_adapter(path: Path, *, field: str = "path") -> IPAdapterFiles | None:
    """The IP-Adapter at `path` (a file, or a folder with one adapter file and its encoder);
    None when `path` is no IP-Adapter at all.

    Raises:
        UnsupportedFormat: an IP-Adapter that cannot be used (no image encoder beside it, a
            FaceID adapter, an encoder of another width, an unknown family), with the reason.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "model_index.json").exists() or (path / "config.json").exists():
            return None
        candidates = [
            p
            for p in sorted(path.glob("*.safetensors"))
            if is_ip_adapter(read_header(p, field=field))
        ]
        if not candidates:
            return None
        if len(candidates) > 1:
            raise UnsupportedFormat(
                f"{path.name} holds {len(candidates)} IP-Adapters "
                f"({', '.join(p.name for p in candidates[:4])}); import one file (its "
                f"{ENCODER_DIR}/ is found beside it)",
                field=field,
            )
        weights = candidates[0]
    elif path.suffix.lower() == ".safetensors" and path.is_file():
        weights = path
    else:
        return None
    header = read_header(weights, field=field)
    if not is_ip_adapter(header):
        return None
    architecture = _architecture(header, weights, field)
    family = _family(header, weights, field)
    encoder = weights.parent / ENCODER_DIR
    _check_encoder(encoder, header, architecture, weights, field)
    return IPAdapterFiles(weights, encoder, family, architecture)


def _architecture(header: Header, path: Path, field: str) -> str:
    if header.has_prefix("image_proj.perceiver_resampler.") or any(
        "_lora." in key for key in header.shapes
    ):
        raise UnsupportedFormat(
            f"{path.name} is a FaceID IP-Adapter: it takes insightface face embeddings, not an "
            "image; supported: IP-Adapter, Plus and Full",
            field=field,
        )
    if "image_proj.proj.weight" in header.shapes:
        return "IPAdapter"
    if "image_proj.latents" in header.shapes:
        return "IPAdapterPlus"
    if "image_proj.proj.3.weight" in header.shapes:
        return "IPAdapterFull"
    raise UnsupportedFormat(
        f"{path.name}: an image projection of no known IP-Adapter variant", field=field
    )


def _family(header: Header, path: Path, field: str) -> Family:
    spec = header.metadata.get("modelspec.architecture", "")
    for prefix, family in _MODELSPEC.items():
        if spec.startswith(prefix):
            return family
    widths = {shape[-1] for key, shape in header.shapes.items() if key.endswith(".to_k_ip.weight")}
    if len(widths) == 1 and (family := _WIDTHS.get(widths.pop())) is not None:
        return family
    raise UnsupportedFormat(
        f"{path.name}: cannot tell whether this IP-Adapter is for SD 1.5 or SDXL (no "
        "modelspec.architecture metadata, cross-attention width not 768 or 2048)",
        field=field,
    )


def _check_encoder(
    encoder: Path, header: Header, architecture: str, path: Path, field: str
) -> None:
    """The encoder folder is a safetensors CLIP vision model of the width the adapter takes."""
    config_path = encoder / "config.json"
    if not config_path.is_file():
        raise UnsupportedFormat(
            f"{path.name} needs its image encoder: a {ENCODER_DIR}/ folder beside it (a "
            "transformers CLIPVisionModelWithProjection with config.json), as published",
            field=field,
        )
    pickles = [p.name for p in encoder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if not any(encoder.glob("*.safetensors")):
        why = f" (only pickles: {', '.join(sorted(pickles))})" if pickles else ""
        raise UnsupportedFormat(
            f"{path.name}'s {ENCODER_DIR}/ has no .safetensors weights{why}", field=field
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedFormat(
            f"cannot read {ENCODER_DIR}/config.json: {exc}", field=field
        ) from exc
    if config.get("model_type") != "clip_vision_model":
        raise UnsupportedFormat(
            f"{path.name}'s {ENCODER_DIR}/ holds a {config.get('model_type')!r} model, not a "
            "CLIP vision model",
            field=field,
        )
    # Plain adapters project the image embedding; Plus and Full read the hidden states.
    if architecture == "IPAdapter":
        wanted, name = header.shapes["image_proj.proj.weight"][-1], "projection_dim"
    elif architecture == "IPAdapterPlus":
        wanted, name = header.shapes["image_proj.proj_in.weight"][-1], "hidden_size"
    else:
        wanted, name = header.shapes["image_proj.proj.0.weight"][-1], "hidden_size"
    if config.get(name) != wanted:
        raise UnsupportedFormat(
            f"{path.name} takes image features of width {wanted}, its {ENCODER_DIR}/ gives "
            f"{name} {config.get(name)}: not the encoder it was trained with",
            field=field,
        )


def import_ip_adapter(
    store: ModelStore,
    path: Path,
    *,
    model_id: str | None = None,
    source: str | None = None,
    progress: Progress | None = None,
    found: IPAdapterFiles | None = None,
) -> ModelManifest:
    """Import an IP-Adapter and its image encoder; returns its manifest.

    Raises:
        InvalidInput: a bad id.
        UnsupportedFormat: not a usable IP-Adapter (see `detect_ip_adapter`).
        Conflict: the id is taken.
    """
    say = progress or (lambda message: None)
    path = Path(path)
    found = found or detect_ip_adapter(path)
    if found is None:
        raise UnsupportedFormat(
            f"{path.name} is no IP-Adapter (no image_proj.* and ip_adapter.* weights)",
            field="path",
        )
    model_id = validate_model_id(model_id or default_id(path))
    with store.lock(), store.staging() as staged:
        say(f"importing {found.weights.name} ({found.family} {found.architecture}) as {model_id}")
        shutil.copyfile(found.weights, staged / WEIGHTS_FILE)
        target = staged / ENCODER_DIR
        target.mkdir()
        for item in sorted(found.encoder.iterdir()):
            if item.is_file() and item.suffix.lower() in (".json", ".safetensors"):
                shutil.copyfile(item, target / item.name)
        weights = [staged / WEIGHTS_FILE, *sorted(target.glob("*.safetensors"))]
        manifest = ModelManifest(
            id=model_id,
            kind="ip_adapter",
            architecture=found.architecture,
            family=found.family,
            source=source or f"import of {found.weights.name}",
            sha256=sha256_files(weights),
            size=sum(p.stat().st_size for p in staged.rglob("*") if p.is_file()),
            added=now(),
        )
        return store.commit(staged, manifest)
