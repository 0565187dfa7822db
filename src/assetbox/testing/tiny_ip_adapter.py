"""Tiny random IP-Adapters for the tiny SD 1.5 and SDXL UNets of `tiny_models.build_pipeline`,
written as the real ones are published (h94/IP-Adapter's ``models/`` and ``sdxl_models/``):

- ``ip-adapter_tiny_<family>.safetensors``: keys ``image_proj.proj.weight`` / ``.bias``,
  ``image_proj.norm.weight`` / ``.bias`` (4 image tokens) and ``ip_adapter.<n>.to_k_ip.weight`` /
  ``.to_v_ip.weight`` for the n-th cross-attention layer (n = 1, 3, 5, ... in the UNet's
  processor order, as the original IP-Adapter numbers them), with ``modelspec.architecture``
  metadata (``stable-diffusion-v1/ip-adapter``; the width of the tiny cross-attention does not
  say the family the way 768 and 2048 do);
- ``image_encoder/`` beside it: a transformers ``CLIPVisionModelWithProjection`` folder
  (``config.json``, ``model.safetensors``) of 32 px images, width 32, projection 32.

``python -m assetbox.testing.tiny_ip_adapter --family {sd15,sdxl} --out DIR`` writes
``DIR/ip-adapter-<family>/`` holding both; `assetbox models import` takes that folder or the
``.safetensors`` file in it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = ("sd15", "sdxl")
IMAGE_TOKENS = 4  # the plain IP-Adapter's image tokens
EMBED_DIM = 32  # the tiny image encoder's projection (ViT-H's 1024, ViT-bigG's 1280 for real)
_MODELSPEC = {"sd15": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}


def build_image_encoder():
    """A tiny random CLIP vision encoder with projection (fixed seed)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(1)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=EMBED_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
    )
    return CLIPVisionModelWithProjection(config).eval()


def adapter_state_dict(unet: Any, seed: int = 2) -> dict[str, Any]:
    """Random IP-Adapter weights that fit `unet` (a diffusers UNet2DConditionModel), in the
    original key layout. The weights are large enough that scale 0.6 visibly changes a tiny
    model's output."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)

    def rand(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    state = {
        "image_proj.proj.weight": rand(cross * IMAGE_TOKENS, EMBED_DIM, std=0.2),
        "image_proj.proj.bias": rand(cross * IMAGE_TOKENS, std=0.2),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name, processor in unet.attn_processors.items():
        del processor
        if name.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        hidden = attention.to_k.out_features
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = rand(hidden, cross, std=0.3)
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = rand(hidden, cross, std=0.3)
        key_id += 2
    return {k: v.contiguous() for k, v in state.items()}


def write_ip_adapter(family: str, folder: Path, *, unet: Any = None) -> Path:
    """``folder/ip-adapter_tiny_<family>.safetensors`` and ``folder/image_encoder/``, for
    `unet` (default: the tiny pipeline's of `family`); returns `folder`.

    Raises:
        ValueError: a family without IP-Adapters here.
    """
    from safetensors.torch import save_file

    from assetbox.testing.tiny_models import build_pipeline

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    folder.mkdir(parents=True, exist_ok=True)
    unet = unet if unet is not None else build_pipeline(family).unet
    metadata = {
        "modelspec.architecture": f"{_MODELSPEC[family]}/ip-adapter",
        "modelspec.sai_model_spec": "1.0.0",
    }
    save_file(
        adapter_state_dict(unet),
        str(folder / f"ip-adapter_tiny_{family}.safetensors"),
        metadata=metadata,
    )
    build_image_encoder().save_pretrained(folder / "image_encoder", safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(write_ip_adapter(args.family, args.out / f"ip-adapter-{args.family}"))


if __name__ == "__main__":
    main()
