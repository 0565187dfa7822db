"""Parts the tiny model builders (testing/tiny_models.py, tiny_flow.py, tiny_flux2.py) share.

Random LoRA weights: one rank-`LORA_RANK` pair per matching linear layer, seeded from the LoRA's
name, so different names give different LoRAs and the same name the same one; each caller names
the keys in the layout it writes (diffusers/peft, or a trainer's). FLUX.1's VAE in tiny form."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

LORA_RANK = 4


def random_lora_pairs(module: Any, pattern: str, name: str) -> Iterator[tuple[str, Any, Any]]:
    """``(module name, down, up)`` for every ``torch.nn.Linear`` of `module` whose name matches
    `pattern` (``re.search``), in `module`'s order; down is rank x in, up out x rank."""
    import torch

    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    generator = torch.Generator().manual_seed(seed)
    for module_name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and re.search(pattern, module_name):
            down = torch.randn(LORA_RANK, layer.in_features, generator=generator) * 0.3
            up = torch.randn(layer.out_features, LORA_RANK, generator=generator) * 0.3
            yield module_name, down.contiguous(), up.contiguous()


def flux_vae():
    """FLUX.1's VAE in tiny form (16 latent channels, 8x; Z-Image uses the same one)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
