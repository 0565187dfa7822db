"""Tiny random models, built from configs, saved exactly as real models are laid out.

``python -m assetbox.testing.tiny_models --family {sd15,sdxl,flux1} --out DIR [--controlnet]
[--lora NAME ...]`` writes diffusion models into DIR:

- ``tiny-<family>/``: a diffusers checkpoint folder (model_index.json, unet|transformer/, vae/,
  text_encoder(_2)/, tokenizer(_2)/, scheduler/), as ``save_pretrained`` writes real ones;
- ``tiny-<family>-single.safetensors`` (sd15, sdxl): the same weights as one checkpoint in the
  original Stability key layout (``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.*`` or ``conditioner.embedders.*``) with ``modelspec.architecture``
  metadata and its diffusers config folder in ``assetbox.diffusers_config`` metadata (real
  checkpoints use the shipped configs);
- ``tiny-<family>-controlnet/`` (``--controlnet``): a diffusers ControlNet folder;
- ``NAME.safetensors`` per ``--lora NAME``: a LoRA in the diffusers/peft layout with
  ``modelspec.architecture`` metadata, its weights seeded from NAME (different names differ).

Every entry imports with ``assetbox models import DIR/ENTRY`` and accepts 64x64 requests with 2
steps. The architectures are the real ones (same block types and key names) with tiny widths,
following diffusers' own pipeline tests; tokenizers come from small vocabularies (CLIP: the first
486 of CLIP's real merges; T5: a few words), so no hub is needed.

Writing the single file needs diffusers→original key conversion, which diffusers ships only as
scripts fixed to the real block counts; the generic version is here.

``--family {flux2_klein,flux2,qwen_image,qwen_image_edit,qwen_image_edit_plus,z_image}`` writes
``tiny-<family>/`` (a diffusers folder as the hub's: ``processor/`` for the Qwen edit pipelines,
``is_distilled`` in klein's model_index.json) and ``NAME.safetensors`` per ``--lora NAME`` for
its transformer, without metadata (Z-Image's in the trainers' ``diffusion_model.*``/``lora_down``
layout); see `assetbox.testing.tiny_flow` and `assetbox.testing.tiny_flux2`. A LoRA whose NAME
says ``lightning-4steps`` imports as a 4-step speed LoRA.

``python -m assetbox.testing.tiny_models --family {qwen2_5_vl,qwen3_vl} --out DIR`` writes a
captioner, ``tiny-<family>/``, as ``save_pretrained`` writes the real Qwen2.5-VL / Qwen3-VL
folders: config.json, model.safetensors, generation_config.json, tokenizer.json and
tokenizer_config.json, preprocessor_config.json (the PIL image processor; Qwen3-VL's patch 16 and
mean/std 0.5) and chat_template.jinja. The architecture is the real one at widths of 16 (2 text
layers, 2 vision blocks). The tokenizer is byte-level BPE built here: 256 byte symbols, the 14
Qwen special tokens (``<|endoftext|>`` = 256, ``<|im_start|>`` = 257, ``<|im_end|>`` = 258, ...,
``<|image_pad|>`` = 268), then merges that spell a few words (`CAPTION_WORDS`). Its weights are
random with a fixed seed, so its captions are the same every time; its generation config lets it
say only those words, ',' and '.', and end its turn (as a real model's generation config carries
its sampling defaults), so captions read as short word lists of varying length.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

# The Qwen tokenizer is shared with the flow models (tiny_flow, tiny_flux2), which tiny_models
# writes: it lives in its own module so that they do not import each other.
from assetbox.models import store
from assetbox.testing.tiny_parts import flux_vae, random_lora_pairs
from assetbox.testing.tiny_qwen import (
    CAPTION_WORDS,
    CAPTIONER_VOCAB,
    QWEN2_5_VL_CHAT_TEMPLATE,
    qwen_tokenizer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = ("sd15", "sdxl", "flux1")
# The flow-transformer families (testing/tiny_flow.py, testing/tiny_flux2.py): kept apart from
# FAMILIES, which the test session writes for every run.
FLOW_FAMILIES = tuple(f for f in store.FAMILIES if f not in FAMILIES)
CAPTIONER_FAMILIES = ("qwen2_5_vl", "qwen3_vl")
TINY_MERGES = 486  # CLIP vocabulary of 256 + 256 + 486 + 2 = 1000 tokens
_MODELSPEC = {
    "sd15": "stable-diffusion-v1",
    "sdxl": "stable-diffusion-xl-v1-base",
    "flux1": "flux-1-dev",
}
_T5_WORDS = [
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "red",
    "blue",
    "painting",
    "squirrel",
    "eating",
    "burger",
    "the",
    "on",
]


# -- components ---------------------------------------------------------------------------------


def _clip_tokenizer(pad_token: str | None = None):
    from transformers import CLIPTokenizer

    from assetbox.models.tokenizers import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder), merges=TINY_MERGES, pad_token=pad_token)
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def _clip_config(hidden: int, layers: int, projection: int = 32):
    from transformers import CLIPTextConfig

    vocab = 512 + TINY_MERGES + 2
    return CLIPTextConfig(
        vocab_size=vocab,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_attention_heads=4,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=projection,
        layer_norm_eps=1e-5,
    )


def _vae(scaling_factor: float, *, levels: int = 2):
    """A tiny KL VAE that downsamples by ``2 ** (levels - 1)``: SD 1.5's by 2, SDXL's by 8 as
    the real one does, so an SDXL tile has the real latent size (a 1024 px tile: 128 x 128, not
    512 x 512, whose full self-attention in the VAE takes minutes a tile on a CPU)."""
    from diffusers import AutoencoderKL

    if levels == 2:
        return AutoencoderKL(
            block_out_channels=[32, 64],
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4,
            layers_per_block=1,
            sample_size=64,
            scaling_factor=scaling_factor,
            force_upcast=False,
        )
    return AutoencoderKL(
        block_out_channels=[16] * levels,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=False,
    )


def _unet(sdxl: bool):
    from diffusers import UNet2DConditionModel

    common: dict[str, Any] = {
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "sample_size": 32,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    }
    if not sdxl:
        return UNet2DConditionModel(**common, cross_attention_dim=32, attention_head_dim=8)
    return UNet2DConditionModel(
        **common,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + pooled text (32)
        cross_attention_dim=32 + 64,  # both text encoders' widths, as 768 + 1280 = 2048
        norm_num_groups=1,
    )


def build_pipeline(family: str):
    """A tiny random pipeline of `family` (fixed seeds: the same weights every time)."""
    import torch

    torch.manual_seed(0)
    if family == "sd15":
        from diffusers import PNDMScheduler, StableDiffusionPipeline
        from transformers import CLIPTextModel

        return StableDiffusionPipeline(
            vae=_vae(0.18215),
            text_encoder=CLIPTextModel(_clip_config(32, 5)),
            tokenizer=_clip_tokenizer(),
            unet=_unet(sdxl=False),
            scheduler=PNDMScheduler(  # SD 1.5's own scheduler settings
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                set_alpha_to_one=False,
                skip_prk_steps=True,
                steps_offset=1,
            ),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    if family == "sdxl":
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return StableDiffusionXLPipeline(
            vae=_vae(0.13025, levels=4),
            # Different widths (as 768 and 1280): single-file loading tells the two encoders
            # apart by width; 10 layers so that the key diffusers recognises SDXL by exists.
            text_encoder=CLIPTextModel(_clip_config(32, 3)),
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(64, 10)),
            tokenizer=_clip_tokenizer(),
            tokenizer_2=_clip_tokenizer(pad_token="!"),
            unet=_unet(sdxl=True),
            scheduler=EulerDiscreteScheduler(  # SDXL base's own scheduler settings
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                steps_offset=1,
                timestep_spacing="leading",
            ),
        )
    if family == "flux1":
        return _flux()
    if family == "flux2_klein":
        from assetbox.testing.tiny_flux2 import build_flux2_klein

        return build_flux2_klein(distilled=True)
    if family == "flux2":
        from assetbox.testing.tiny_flux2 import build_flux2

        return build_flux2()
    if family in FLOW_FAMILIES:
        from assetbox.testing import tiny_flow

        return tiny_flow.build_pipeline(family)
    raise ValueError(f"family must be one of {FAMILIES + FLOW_FAMILIES}, not {family!r}")


def _flux():
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel, T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -3.0) for w in _T5_WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?-'"]
    vocab += [("▁" + c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    # 32 tokens, not T5's 512: the text length Flux pads to, and 512 is 20x slower here.
    t5_tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=32)
    torch.manual_seed(0)
    return FluxPipeline(
        # 16 latent channels and a 4-level VAE (scale factor 8) as the real FLUX.1, so size rules
        # and latent packing behave as in production; in_channels = 16 x (2x2 packing).
        transformer=FluxTransformer2DModel(**_flux_dims(), num_layers=1, num_single_layers=1),
        text_encoder=CLIPTextModel(_clip_config(32, 2)),
        text_encoder_2=T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer),
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                feed_forward_proj="gated-gelu",
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        ),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=t5_tokenizer,
        vae=flux_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's settings
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        image_encoder=None,
        feature_extractor=None,
    )


def _flux_dims() -> dict[str, Any]:
    return {
        "patch_size": 1,
        "in_channels": 64,
        "attention_head_dim": 16,  # = sum(axes_dims_rope)
        "num_attention_heads": 2,
        "joint_attention_dim": 32,  # T5 width
        "pooled_projection_dim": 32,  # CLIP width
        "guidance_embeds": True,
        "axes_dims_rope": [4, 4, 8],
    }


def build_controlnet(pipe, family: str):
    """A ControlNet for `pipe`; its zero-initialised output layers get random weights so that it
    changes the output (a fresh ControlNet has no effect at any scale)."""
    import torch

    torch.manual_seed(1)
    if family == "flux1":
        from diffusers import FluxControlNetModel

        net = FluxControlNetModel(**_flux_dims(), num_layers=1, num_single_layers=1)
    else:
        from diffusers import ControlNetModel

        # The control image is embedded down to the latent size: one halving per step after
        # the first, as many as the VAE's (2x for the tiny SD 1.5, 8x for SDXL).
        halvings = int(pipe.vae_scale_factor).bit_length() - 1
        channels = (16,) * halvings + (32,)
        net = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=channels)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if re.search(
                r"controlnet_(x_embedder|blocks|single_blocks|down_blocks|mid_block)", name
            ):
                parameter.normal_(0, 0.2)
    return net


def denoiser(pipe):
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet


def lora_state_dict(pipe, name: str) -> dict[str, Any]:
    """A random LoRA (diffusers/peft layout) on the denoiser's attention projections."""
    prefix = "transformer" if hasattr(pipe, "transformer") else "unet"
    state = {}
    pattern = r"attn[12]?\.(to_q|to_k|to_v|to_out\.0)$"
    for module_name, down, up in random_lora_pairs(denoiser(pipe), pattern, name):
        state[f"{prefix}.{module_name}.lora_A.weight"] = down
        state[f"{prefix}.{module_name}.lora_B.weight"] = up
    return state


# -- single file ---------------------------------------------------------------------------------

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}


def _unet_prefixes(config) -> dict[str, str]:
    levels = len(config["block_out_channels"])
    per_level = config["layers_per_block"]
    per_level = [per_level] * levels if isinstance(per_level, int) else list(per_level)
    prefixes, index = {}, 1
    for i in range(levels):
        for j in range(per_level[i]):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{index}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{index}.1."
            index += 1
        if i < levels - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{index}.0.op."
            index += 1
    prefixes["mid_block.resnets.0."] = "middle_block.0."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    prefixes["mid_block.resnets.1."] = "middle_block.2."
    index = 0
    for i, count in enumerate(reversed(per_level)):
        attention = "CrossAttn" in config["up_block_types"][i]
        for j in range(count + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{index}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{index}.1."
            if j == count and i < levels - 1:
                prefixes[f"up_blocks.{i}.upsamplers.0."] = (
                    f"output_blocks.{index}.{2 if attention else 1}."
                )
            index += 1
    return prefixes


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def _original_unet(state, config) -> dict[str, Any]:
    prefixes = _unet_prefixes(config)
    out = {}
    for key, value in state.items():
        name = _rename(key, _UNET_TOP)
        if name is None:
            for old, new in prefixes.items():
                if key.startswith(old):
                    rest = key[len(old) :]
                    if ".resnets." in old:
                        rest = _rename(rest, _RESNET) or rest
                    name = new + rest
                    break
        if name is None:
            raise KeyError(f"no original name for UNet key {key}")
        out["model.diffusion_model." + name] = value
    return out


def _original_vae(state, config) -> dict[str, Any]:
    levels = len(config["block_out_channels"])
    table = {
        "encoder.mid_block.attentions.0.": "encoder.mid.attn_1.",
        "decoder.mid_block.attentions.0.": "decoder.mid.attn_1.",
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
    }
    for part in ("encoder", "decoder"):
        for r in range(2):
            table[f"{part}.mid_block.resnets.{r}."] = f"{part}.mid.block_{r + 1}."
    for i in range(levels):
        table[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        table[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        table[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{levels - 1 - i}.block."
        table[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    attention = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v."}
    attention["to_out.0."] = "proj_out."
    out = {}
    for key, value in state.items():
        name = (_rename(key, table) or key).replace("conv_shortcut", "nin_shortcut")
        if ".attn_1." in name:
            head, tail = name.split(".attn_1.")
            name = f"{head}.attn_1.{_rename(tail, attention) or tail}"
            if value.ndim == 2:  # the original VAE's attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + name] = value
    return out


def _original_clip(state, prefix: str) -> dict[str, Any]:
    # transformers 5 saves CLIPTextModel without its `text_model.` level; the original has it.
    return {
        prefix + (key if key.startswith("text_model.") else "text_model." + key): value
        for key, value in state.items()
    }


def _original_open_clip(state, prefix: str = "conditioner.embedders.1.model.") -> dict[str, Any]:
    import torch

    simple = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    out, fused = {}, {}
    for key, value in state.items():
        if key in simple:
            out[prefix + simple[key]] = value
        elif key == "text_projection.weight":  # a Linear's weight; OpenCLIP keeps x @ P
            out[prefix + "text_projection"] = value.T.contiguous()
        elif match := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", key):
            layer, rest = match.groups()
            base = f"{prefix}transformer.resblocks.{layer}."
            if qkv := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                fused.setdefault((base, qkv.group(2)), {})[qkv.group(1)] = value
                continue
            for old, new in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                rest = rest.replace(old, new)
            out[base + rest] = value
    for (base, kind), parts in fused.items():
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def original_state_dict(pipe) -> dict[str, Any]:
    """A whole SD 1.5 or SDXL pipeline as one original-layout state dict."""
    state = {
        **_original_unet(pipe.unet.state_dict(), pipe.unet.config),
        **_original_vae(pipe.vae.state_dict(), pipe.vae.config),
    }
    if getattr(pipe, "text_encoder_2", None) is not None:
        state |= _original_clip(
            pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."
        )
        state |= _original_open_clip(pipe.text_encoder_2.state_dict())
    else:
        state |= _original_clip(pipe.text_encoder.state_dict(), "cond_stage_model.transformer.")
    return {key: value.contiguous() for key, value in state.items()}


def _config_files(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): path.read_text()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix in (".json", ".txt")
    }


# -- captioners ----------------------------------------------------------------------------------


# Per family: the torch seed of the weights and a scale of the output layer's <|im_end|> row (how
# soon captions end), chosen by trying a few on 16 photo crops of 48-160 px with 20 tokens: 13
# (qwen2_5_vl) and 16 (qwen3_vl) different captions, none empty, 5-6 ending before the limit.
# Other seeds gave one caption for every image, or only empty ones.
_CAPTIONER_SEED_AND_END_SCALE = {"qwen2_5_vl": (5, 1.0), "qwen3_vl": (0, 1.6)}
# Qwen3-VL-Instruct's, without its tool calling: no default system turn.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _token_ids(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(token) for token in tokens]


def build_captioner(family: str):
    """A tiny random captioner of `family`: (model, tokenizer, image processor, chat template).
    Fixed seed: the same weights every time."""
    import torch
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    tokenizer = qwen_tokenizer()
    end, pad, image, video, start, stop = _token_ids(
        tokenizer,
        *("<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<|video_pad|>"),
        *("<|vision_start|>", "<|vision_end|>"),
    )
    # Wide random weights (std 0.5, not 0.02): the output then depends on the image, so
    # different tiles get different captions.
    text = {
        "vocab_size": CAPTIONER_VOCAB,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "initializer_range": 0.5,
        "bos_token_id": pad,
        "eos_token_id": end,
        "pad_token_id": pad,
    }
    vision = {
        "depth": 2,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_heads": 2,
        "out_hidden_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "initializer_range": 0.5,
    }
    tokens = {
        "image_token_id": image,
        "video_token_id": video,
        "vision_start_token_id": start,
        "vision_end_token_id": stop,
        "initializer_range": 0.5,
    }
    if family not in CAPTIONER_FAMILIES:
        raise ValueError(f"family must be one of {CAPTIONER_FAMILIES}, not {family!r}")
    seed, end_scale = _CAPTIONER_SEED_AND_END_SCALE[family]
    torch.manual_seed(seed)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}
        config = Qwen2_5_VLConfig(
            text_config=text | {"rope_parameters": rope},
            vision_config=vision | {"patch_size": 14, "window_size": 112},
            **tokens,
        )
        config.vision_config.fullatt_block_indexes = [1]
        model = Qwen2_5_VLForConditionalGeneration(config)
        processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
        )
        template = QWEN2_5_VL_CHAT_TEMPLATE
        sampling = {"do_sample": True, "temperature": 0.1, "top_p": 0.001, "top_k": 1}
        sampling["repetition_penalty"] = 1.05
    else:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 1, 1]}
        rope["mrope_interleaved"] = True
        config = Qwen3VLConfig(
            text_config=text | {"head_dim": 8, "rope_parameters": rope},
            vision_config=vision | {"patch_size": 16, "num_position_embeddings": 64},
            **tokens,
        )
        config.vision_config.deepstack_visual_indexes = [1]
        model = Qwen3VLForConditionalGeneration(config)
        processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": 64 * 64, "longest_edge": 32 * 32 * 1280},
            patch_size=16,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
        template = QWEN3_VL_CHAT_TEMPLATE
        sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}
    model.eval()
    with torch.no_grad():
        model.lm_head.weight[end] *= end_scale
    speakable = {*_token_ids(tokenizer, *(f"Ġ{w}" for w in CAPTION_WORDS), ",", ".", "<|im_end|>")}
    model.generation_config = GenerationConfig(
        bos_token_id=pad,
        eos_token_id=[end, pad],
        pad_token_id=pad,
        suppress_tokens=[i for i in range(CAPTIONER_VOCAB) if i not in speakable],
        **sampling,
    )
    return model, tokenizer, processor, template


def write_captioner(family: str, folder: Path) -> Path:
    """Write the tiny captioner of `family` into `folder` (replacing it)."""
    model, tokenizer, processor, template = build_captioner(family)
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)  # config.json, generation_config.json, model.safetensors
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(template)
    return folder


# -- writing -------------------------------------------------------------------------------------


def write(family: str, out: Path, *, controlnet: bool = False, loras: tuple[str, ...] = ()):
    """Write the tiny models of `family` into `out`; returns the paths written.

    Raises:
        ValueError: an unknown family, or a ControlNet or LoRA asked of a captioner family.
    """
    from safetensors.torch import save_file

    from assetbox.models.families import CONFIG_METADATA_KEY

    out.mkdir(parents=True, exist_ok=True)
    if family in CAPTIONER_FAMILIES:
        if controlnet or loras:
            raise ValueError(f"{family} is a captioner: it has no ControlNets or LoRAs")
        return [write_captioner(family, out / f"tiny-{family}")]
    if family in FLOW_FAMILIES:
        if controlnet:
            raise ValueError(f"no tiny ControlNet for {family}")
        return _write_flow(family, out, loras)
    pipe = build_pipeline(family)
    written = []
    folder = out / f"tiny-{family}"
    shutil.rmtree(folder, ignore_errors=True)
    pipe.save_pretrained(folder)
    written.append(folder)
    spec = _MODELSPEC[family]
    if family != "flux1":
        single = out / f"tiny-{family}-single.safetensors"
        metadata = {
            "modelspec.architecture": spec,
            "modelspec.sai_model_spec": "1.0.0",
            CONFIG_METADATA_KEY: json.dumps(_config_files(folder)),
        }
        save_file(original_state_dict(pipe), str(single), metadata=metadata)
        written.append(single)
    if controlnet:
        net_folder = out / f"tiny-{family}-controlnet"
        shutil.rmtree(net_folder, ignore_errors=True)
        build_controlnet(pipe, family).save_pretrained(net_folder)
        written.append(net_folder)
    for name in loras:
        path = out / f"{name}.safetensors"
        metadata = {"modelspec.architecture": f"{spec}/lora", "modelspec.sai_model_spec": "1.0.0"}
        save_file(lora_state_dict(pipe, name), str(path), metadata=metadata)
        written.append(path)
    return written


def _write_flow(family: str, out: Path, loras: tuple[str, ...]) -> list[Path]:
    """A flow-transformer family: its diffusers folder and LoRAs without metadata (real ones
    mostly have none: the store tells their family by their keys), but for FLUX.2 [dev]'s: the
    store tells [dev] from klein by the transformer's width, which the tiny ones share, so its
    LoRAs say ``modelspec.architecture`` flux-2-dev/lora."""
    from safetensors.torch import save_file

    pipe = build_pipeline(family)
    folder = out / f"tiny-{family}"
    shutil.rmtree(folder, ignore_errors=True)
    pipe.save_pretrained(folder)
    written = [folder]
    for name in loras:
        metadata = None
        if family in ("flux2_klein", "flux2"):
            from assetbox.testing.tiny_flux2 import flux2_lora_state_dict

            state = flux2_lora_state_dict(pipe, name)
            if family == "flux2":
                metadata = {"modelspec.architecture": "flux-2-dev/lora"}
        else:
            from assetbox.testing import tiny_flow

            state = tiny_flow.lora_state_dict(pipe, family, name)
        path = out / f"{name}.safetensors"
        save_file(state, str(path), metadata=metadata)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--family", choices=FAMILIES + FLOW_FAMILIES + CAPTIONER_FAMILIES, required=True
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--controlnet", action="store_true", help="also write a ControlNet")
    parser.add_argument("--lora", action="append", default=[], help="write a LoRA of this name")
    args = parser.parse_args(argv)
    for path in write(args.family, args.out, controlnet=args.controlnet, loras=tuple(args.lora)):
        print(path)


if __name__ == "__main__":
    main()
