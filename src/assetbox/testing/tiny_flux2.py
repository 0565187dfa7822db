"""Tiny random FLUX.2 pipelines, built from configs, laid out as the real ones are saved.

`build_flux2_klein` gives a `Flux2KleinPipeline` (FLUX.2 [klein]: distilled, or the base model
with CFG) whose components are the real classes at tiny widths: `Flux2Transformer2DModel` (one
double-stream and one single-stream block), `AutoencoderKLFlux2` (four levels: the real 8x
downsampling, so sizes and 2x2 latent packing behave as in production), a `Qwen3ForCausalLM` text
encoder deep enough for the pipeline's default ``text_encoder_out_layers`` (9, 18, 27), and the
byte-level Qwen tokenizer of `tiny_qwen.qwen_tokenizer` with a Qwen3-style chat template (the
pipeline calls ``apply_chat_template(..., enable_thinking=False)``). ``save_pretrained`` writes it
as the hub folders are: model_index.json (with ``is_distilled``), transformer/, vae/,
text_encoder/, tokenizer/, scheduler/.

`flux2_lora_state_dict` gives a random LoRA for its transformer in the diffusers/peft layout.

`build_flux2` gives a `Flux2Pipeline` (FLUX.2 [dev]) with a tiny
`Mistral3ForConditionalGeneration` (30 layers: the pipeline stacks hidden states 10, 20, 30) and
a guidance-embedding transformer. The real model's tokenizer folder is a `PixtralProcessor`,
which transformers refuses to build without torchvision ("PixtralProcessor requires the
Torchvision library but it was not found in your environment"); the tiny one saves the same
byte-level tokenizer with a Mistral-style chat template instead (the pipeline renders only text
chat turns with it). A real FLUX.2 [dev] folder therefore loads only where torchvision is.

Weights are random with fixed seeds: the same every time.
"""

from __future__ import annotations

import os
from typing import Any

from assetbox.testing.tiny_parts import random_lora_pairs
from assetbox.testing.tiny_qwen import QWEN3_CHAT_TEMPLATE

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The text encoder's hidden states the pipeline stacks by default (9, 18, 27): 27 layers at least.
TEXT_LAYERS = 27
TEXT_HIDDEN = 16


def _vae():
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=8,  # x (2x2 patches) = the transformer's 32 input channels
        norm_num_groups=4,
        sample_size=64,
    )


def _transformer(guidance_embeds: bool = False):
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=32,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,  # = sum(axes_dims_rope)
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_HIDDEN,  # three stacked text-encoder layers
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,  # klein: none; dev: guidance-distilled
    )


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # FLUX.2's settings: the pipeline always passes `mu`, so dynamic shifting is on.
    return FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _tokenizer():
    from assetbox.testing.tiny_qwen import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def build_flux2_klein(distilled: bool = True):
    """A tiny random `Flux2KleinPipeline`: distilled (no CFG, no negative prompt) or the base
    model (CFG above guidance 1)."""
    import torch
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from assetbox.testing.tiny_qwen import CAPTIONER_VOCAB

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=CAPTIONER_VOCAB,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=32,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )
    )
    transformer = _transformer()
    # Wide random weights (std 0.3, not 0.02): at diffusers' default init the reference tokens
    # move the output by under 1/255, too little to tell reference weights apart in tests.
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in transformer.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, 0.3)
    return Flux2KleinPipeline(
        scheduler=_scheduler(),
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )


def flux2_lora_state_dict(pipe, name: str) -> dict[str, Any]:
    """A random LoRA (diffusers/peft layout, ``transformer.`` prefix) on the attention
    projections of the double-stream blocks and the fused projections of the single-stream
    ones; its weights are seeded from `name` (different names differ)."""
    pattern = r"attn\.(to_q|to_k|to_v|to_out\.0|to_qkv_mlp_proj|to_out)$"
    state = {}
    for module_name, down, up in random_lora_pairs(pipe.transformer, pattern, name):
        state[f"transformer.{module_name}.lora_A.weight"] = down
        state[f"transformer.{module_name}.lora_B.weight"] = up
    return state


# Mistral's chat template reduced to what `Flux2Pipeline` renders: a system turn and a user turn,
# each a list of text parts (the Qwen special tokens stand in for Mistral's).
MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}<|im_end|>\n"
    "{% endfor %}"
)


def build_flux2():
    """A tiny random `Flux2Pipeline` (FLUX.2 [dev]: guidance-embedded, a Mistral 3 text encoder).

    Its tokenizer is the byte-level Qwen tokenizer with a Mistral-style chat template, not a
    `PixtralProcessor` as the real model's: transformers refuses to build one without
    torchvision. The pipeline only renders text chat templates with it."""
    import torch
    from diffusers import Flux2Pipeline
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
    )

    from assetbox.testing.tiny_qwen import CAPTIONER_VOCAB

    tokenizer = _tokenizer()
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    torch.manual_seed(0)
    text_encoder = Mistral3ForConditionalGeneration(
        Mistral3Config(
            text_config=MistralConfig(
                vocab_size=CAPTIONER_VOCAB,
                hidden_size=TEXT_HIDDEN,
                intermediate_size=32,
                num_hidden_layers=30,  # the pipeline stacks hidden states 10, 20, 30
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=8,
                max_position_embeddings=1024,
                pad_token_id=tokenizer.pad_token_id,
            ),
            vision_config=PixtralVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=64,
                patch_size=16,
            ),
            image_token_index=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        )
    )
    transformer = _transformer(guidance_embeds=True)
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in transformer.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, 0.3)
    return Flux2Pipeline(
        scheduler=_scheduler(),
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
