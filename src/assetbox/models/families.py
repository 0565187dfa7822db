"""What a model file or folder is, from headers and configs alone (no weights loaded).

A checkpoint is a diffusers folder (``model_index.json``) or one ``.safetensors`` file in the
original Stability layout; a ControlNet is a diffusers folder (``config.json`` with a diffusers
``_class_name``); a LoRA is one ``.safetensors`` file in the kohya or the diffusers/peft layout; a
captioner is a transformers folder whose ``config.json`` has a supported ``model_type``
(qwen2_5_vl, qwen3_vl), its family. A diffusion model's family (sd15, sdxl, flux1) comes from
metadata when the file has it (``modelspec.architecture``, kohya's ``ss_base_model_version``),
else from key names and shapes:

- sd15: single file ``cond_stage_model.transformer.*`` (CLIP-L); LoRA ``lora_te_*``, or only
  ``text_encoder.*``, or a cross-attention width of 768.
- sdxl: single file ``conditioner.embedders.1.model.*`` (OpenCLIP-G); LoRA ``lora_te1_*`` /
  ``lora_te2_*``, ``text_encoder_2.*``, or a cross-attention width of 2048.
- flux1: single file ``double_blocks.*`` (transformer only, refused: import the diffusers folder);
  LoRA ``transformer.*``, ``lora_transformer_*`` or ``double_blocks``.

The flow-transformer families (flux2_klein, flux2, qwen_image, qwen_image_edit,
qwen_image_edit_plus, z_image) are diffusers folders, told apart by ``model_index.json``'s
pipeline class (klein's ``is_distilled`` is recorded: the distilled model takes no CFG). Their
LoRAs are told apart by module names (see `_flow_lora_family`); a Qwen-Image LoRA is recorded as
qwen_image and serves all three Qwen-Image families (one transformer architecture). A LoRA whose
metadata or file name says it is a speed LoRA (Lightning 4/8-step ...) records its steps
(`speed_lora_steps`).

Pickles (``.ckpt``, ``.pt``, ``.bin``) are refused: loading them runs arbitrary code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from assetbox.errors import UnsupportedFormat
from assetbox.models.store import CAPTIONER_FAMILIES, Family, ModelKind

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")

# diffusers pipeline / model class → family
PIPELINE_FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionImg2ImgPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "FluxPipeline": "flux1",
    "FluxImg2ImgPipeline": "flux1",
    "Flux2KleinPipeline": "flux2_klein",
    "Flux2Pipeline": "flux2",
    "QwenImagePipeline": "qwen_image",
    "QwenImageEditPipeline": "qwen_image_edit",
    "QwenImageEditPlusPipeline": "qwen_image_edit_plus",
    "ZImagePipeline": "z_image",
}
FAMILY_PIPELINES: dict[Family, str] = {
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux1": "FluxPipeline",
    "flux2_klein": "Flux2KleinPipeline",
    "flux2": "Flux2Pipeline",
    "qwen_image": "QwenImagePipeline",
    "qwen_image_edit": "QwenImageEditPipeline",
    "qwen_image_edit_plus": "QwenImageEditPlusPipeline",
    "z_image": "ZImagePipeline",
}
_MODELSPEC = {  # modelspec.architecture prefixes (Stability's model metadata standard)
    "stable-diffusion-v1": "sd15",
    "stable-diffusion-xl-v1-base": "sdxl",
    "flux-1": "flux1",
    # FLUX.2 after kohya's FLUX.1 names (flux-1-dev): flux-2-dev, flux-2-klein-4b ...
    "flux-2-dev": "flux2",
    "flux-2-klein": "flux2_klein",
}
_KOHYA_BASE = {"sd_v1": "sd15", "sdxl_base_v1-0": "sdxl", "sdxl_base_v0-9": "sdxl"}
CONFIG_METADATA_KEY = "assetbox.diffusers_config"


# A captioner's class when its config.json names none (configs saved by transformers do).
CAPTIONER_ARCHITECTURES: dict[Family, str] = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}


@dataclass(frozen=True)
class Detected:
    kind: ModelKind
    family: Family
    layout: str  # "diffusers", "single_file" (every LoRA) or "transformers" (captioners)
    architecture: str  # the diffusers or transformers class, or "lora"
    distilled: bool | None = None  # flux2_klein: model_index.json's is_distilled
    speed_steps: int | None = None  # LoRAs: the steps a speed (step-distilled) LoRA runs at


@dataclass(frozen=True)
class Header:
    """A safetensors file's tensor names, shapes and metadata (read without the tensors)."""

    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]

    def has_prefix(self, *prefixes: str) -> bool:
        return any(key.startswith(prefixes) for key in self.shapes)


def read_header(path: Path, *, field: str = "path") -> Header:
    """Raises UnsupportedFormat for anything that is not a readable safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises untyped errors for bad headers
        raise UnsupportedFormat(
            f"{path.name} is not a readable safetensors file: {exc}", field=field
        ) from exc
    return Header(shapes, metadata)


def refuse_pickle(path: Path, *, field: str = "path") -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsupportedFormat(
            f"{path.name} is refused: {path.suffix} files are pickles, and loading one could "
            "run code. Import a .safetensors file, a diffusers folder, an ncnn .param (beside "
            "its .bin) or a weights-only .pth upscaler",
            field=field,
        )


def _family_from_metadata(metadata: dict[str, str]) -> Family | None:
    spec = metadata.get("modelspec.architecture", "")
    for prefix, family in _MODELSPEC.items():
        if spec.startswith(prefix):
            return family  # type: ignore[return-value]
    base = metadata.get("ss_base_model_version", "")
    return _KOHYA_BASE.get(base)  # type: ignore[return-value]


def detect(path: Path, *, field: str = "path") -> Detected:
    """What `path` is: a checkpoint, ControlNet or LoRA, of which family.

    Raises:
        UnsupportedFormat: pickles, unreadable files, and models of another kind or family
            (SD 2.x, SDXL refiner, inpainting, single-file Flux), with the reason.
    """
    path = Path(path)
    if path.is_dir():
        return _detect_folder(path, field)
    if not path.is_file():
        raise UnsupportedFormat(f"`{field}` {str(path)!r} does not exist", field=field)
    refuse_pickle(path, field=field)
    if path.suffix.lower() != ".safetensors":
        raise UnsupportedFormat(
            f"`{field}` must be a diffusers folder or a .safetensors file, not {path.name!r}",
            field=field,
        )
    header = read_header(path, field=field)
    if _is_lora(header):
        family = _lora_family(header, path, field)
        steps = speed_lora_steps(header.metadata, path.name)
        return Detected("lora", family, "single_file", "lora", speed_steps=steps)
    family = _checkpoint_family(header, path, field)
    return Detected("checkpoint", family, "single_file", FAMILY_PIPELINES[family])


def _detect_folder(path: Path, field: str) -> Detected:
    pickles = [p.name for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    distilled: bool | None = None
    index = path / "model_index.json"
    config = path / "config.json"
    if index.is_file():
        data = _json(index, field)
        name = str(data.get("_class_name", ""))
        family = PIPELINE_FAMILIES.get(name)
        if family is None:
            raise UnsupportedFormat(
                f"{path.name} is a {name or 'unknown'} folder; supported: "
                f"{', '.join(sorted(set(PIPELINE_FAMILIES)))}",
                field=field,
            )
        if family == "sd15":
            text = _json(path / "text_encoder" / "config.json", field)
            if text.get("hidden_size") == 1024:
                raise UnsupportedFormat(
                    f"{path.name} is Stable Diffusion 2.x, which is not supported yet", field=field
                )
        kind: ModelKind = "checkpoint"
        if family == "flux2_klein":
            distilled = bool(data.get("is_distilled", False))
    elif config.is_file():
        data = _json(config, field)
        name = str(data.get("_class_name", ""))
        if not name and "model_type" in data:  # transformers writes model_type, never _class_name
            detected = _captioner(path, data, field)
            _refuse_pickles(path, pickles, field)
            return detected
        if name == "FluxControlNetModel":
            family = "flux1"
        elif name == "ControlNetModel":
            family = "sdxl" if data.get("addition_embed_type") == "text_time" else "sd15"
        else:
            raise UnsupportedFormat(
                f"{path.name} holds a {name or 'unknown'} model, not a checkpoint or ControlNet",
                field=field,
            )
        kind = "controlnet"
    else:
        raise UnsupportedFormat(
            f"{path.name} has neither model_index.json (a diffusers checkpoint) nor config.json "
            "(a diffusers ControlNet)",
            field=field,
        )
    _refuse_pickles(path, pickles, field)
    if not any(path.rglob("*.safetensors")):
        raise UnsupportedFormat(f"{path.name} has no .safetensors weights", field=field)
    return Detected(kind, family, "diffusers", name, distilled=distilled)


def _refuse_pickles(path: Path, pickles: list[str], field: str) -> None:
    if pickles:
        raise UnsupportedFormat(
            f"{path.name} holds pickled weights ({', '.join(sorted(pickles)[:3])}): loading "
            "them could run code; save the model with safe_serialization (safetensors)",
            field=field,
        )


def _captioner(path: Path, config: dict, field: str) -> Detected:
    """A transformers folder: a captioner when its model_type is a supported family."""
    model_type = str(config["model_type"])
    if model_type not in CAPTIONER_FAMILIES:
        raise UnsupportedFormat(
            f"{path.name} holds a transformers {model_type!r} model; supported captioners: "
            f"{', '.join(CAPTIONER_FAMILIES)}",
            field=field,
        )
    family: Family = model_type  # type: ignore[assignment]  (checked just above)
    architectures = config.get("architectures") or [CAPTIONER_ARCHITECTURES[family]]
    return Detected("captioner", family, "transformers", str(architectures[0]))


def _json(path: Path, field: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedFormat(f"cannot read {path.name}: {exc}", field=field) from exc
    if not isinstance(data, dict):
        raise UnsupportedFormat(f"{path.name} is not a JSON object", field=field)
    return data


# -- single files ------------------------------------------------------------------------------

_LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", "lora.down.", "lora.up.")


def is_diffusion(header: Header) -> bool:
    """Whether a safetensors file holds a diffusion model or LoRA (else: try it as an upscaler)."""
    return _is_lora(header) or header.has_prefix(
        "model.diffusion_model.", "double_blocks.", "unet.", "transformer.", "lora_unet_"
    )


def _is_lora(header: Header) -> bool:
    return any(marker in key for key in header.shapes for marker in _LORA_MARKERS)


def _checkpoint_family(header: Header, path: Path, field: str) -> Family:
    if header.has_prefix("double_blocks.", "model.diffusion_model.double_blocks."):
        raise UnsupportedFormat(
            f"{path.name} is a single-file Flux transformer; import a Flux diffusers folder "
            "(it has the text encoders and VAE too)",
            field=field,
        )
    if not header.has_prefix("model.diffusion_model."):
        raise UnsupportedFormat(
            f"{path.name} is no Stable Diffusion checkpoint (no model.diffusion_model.* weights)",
            field=field,
        )
    first = header.shapes.get("model.diffusion_model.input_blocks.0.0.weight", ())
    if len(first) == 4 and first[1] != 4:
        raise UnsupportedFormat(
            f"{path.name} takes {first[1]} input channels (an inpainting or instruct model); "
            "only text-to-image checkpoints are supported",
            field=field,
        )
    if header.has_prefix("conditioner.embedders.1.model."):
        return "sdxl"
    if header.has_prefix("conditioner.embedders.0.model."):
        raise UnsupportedFormat(
            f"{path.name} is an SDXL refiner, which is not supported", field=field
        )
    if header.has_prefix("cond_stage_model.model."):
        raise UnsupportedFormat(
            f"{path.name} is Stable Diffusion 2.x, which is not supported yet", field=field
        )
    if header.has_prefix("cond_stage_model.transformer."):
        return "sd15"
    raise UnsupportedFormat(
        f"{path.name}: no text encoder weights tell which Stable Diffusion it is", field=field
    )


_CROSS_ATTN_K = re.compile(r"attn2[._]to_k.*(lora_down|lora_A|lora\.down)\.weight$")


# What LoRA keys say of the flow transformers, on keys without their trainer's prefix
# (``transformer.``, ``diffusion_model.``, ``lora_unet_``) and with "_" for ".", as kohya writes
# them: the module names of diffusers' converters (loaders/lora_conversion_utils.py).
_QWEN_IMAGE_KEY = re.compile(r"^transformer_blocks_\d+_(img_mlp|txt_mlp|img_mod|txt_mod)")
_Z_IMAGE_KEY = re.compile(
    r"^(layers_\d+_(attention|feed_forward|adaLN_modulation)|noise_refiner|context_refiner)"
)
_FLUX2_KEY = re.compile(r"(to_qkv_mlp_proj|double_stream_modulation|single_stream_modulation)")
_TRAINER_PREFIXES = ("transformer.", "diffusion_model.", "lora_unet_", "base_model.model.")
# FLUX.2 [dev]'s transformer width; klein's are 3072 (4B) and 4096 (9B).
_FLUX2_DEV_WIDTH = 6144


def _flow_lora_family(header: Header) -> Family | None:
    """qwen_image, z_image, flux2 or flux2_klein from key names and widths, else None.

    FLUX.2 in the original (BFL/ai-toolkit) layout shares Flux.1's block names
    (``double_blocks.N.img_attn.qkv``, ``single_blocks.N.linear1``); its MLPs tell them apart:
    FLUX.2's are gated with ratio 3 (``img_mlp.0`` out = 6 x width, ``linear1`` out = 9 x width),
    Flux.1's plain with ratio 4 (4 x, 7 x).
    """
    keys = {}
    for key, shape in header.shapes.items():
        for prefix in _TRAINER_PREFIXES:
            key = key.removeprefix(prefix)
        keys[key.replace(".", "_")] = shape
    if any(_QWEN_IMAGE_KEY.match(k) for k in keys):
        return "qwen_image"
    if any(_Z_IMAGE_KEY.match(k) for k in keys):
        return "z_image"
    width = 0
    flux2 = any(_FLUX2_KEY.search(k) for k in keys)
    for key, shape in keys.items():
        if not key.endswith(("lora_A_weight", "lora_down_weight")) or len(shape) != 2:
            continue
        width = max(width, shape[1])
        up = keys.get(key.replace("lora_A", "lora_B").replace("lora_down", "lora_up"))
        if up is None or not shape[1]:
            continue
        ratio = up[0] / shape[1]
        if (re.search(r"img_mlp_0_", key) and ratio == 6) or (
            re.search(r"single_blocks_\d+_linear1_", key) and ratio == 9
        ):
            flux2 = True
    if flux2:
        return "flux2" if width >= _FLUX2_DEV_WIDTH else "flux2_klein"
    return None


def speed_lora_steps(metadata: dict[str, str], name: str) -> int | None:
    """The steps a speed LoRA (step-distilled: Lightning, Hyper, Turbo ...) is made for: the
    metadata key ``assetbox.speed_steps``, else a file name that says so, such as
    ``Qwen-Image-Lightning-8steps-V1.0.safetensors`` or ``hyper_4_step.safetensors``."""
    value = metadata.get("assetbox.speed_steps", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    match = _SPEED_NAME.search(name)
    return int(match.group(2)) if match else None


_SPEED_NAME = re.compile(r"(lightning|hyper|turbo|lcm|fast)\D{0,24}?(\d{1,2})[-_ ]?steps?", re.I)


def _lora_family(header: Header, path: Path, field: str) -> Family:
    family = _family_from_metadata(header.metadata)
    if family is not None:
        return family
    family = _flow_lora_family(header)
    if family is not None:
        return family
    keys = list(header.shapes)
    if any(
        k.startswith(("transformer.", "lora_transformer_", "diffusion_model.double_blocks"))
        or "double_blocks" in k
        or "single_transformer_blocks" in k
        for k in keys
    ):
        return "flux1"
    if header.has_prefix("lora_te1_", "lora_te2_", "text_encoder_2."):
        return "sdxl"
    if header.has_prefix("lora_te_", "text_encoder."):
        return "sd15"
    # UNet only: the cross-attention width says which text encoder it was trained against.
    widths = {header.shapes[k][-1] for k in keys if _CROSS_ATTN_K.search(k)}
    if widths == {768}:
        return "sd15"
    if widths == {2048}:
        return "sdxl"
    raise UnsupportedFormat(
        f"{path.name}: cannot tell which base model this LoRA is for (no metadata, no text "
        "encoder keys, no known cross-attention width)",
        field=field,
    )
