"""Tiny random Qwen-Image, Qwen-Image-Edit, Qwen-Image-Edit-Plus and Z-Image pipelines.

The architectures are the real ones (same classes, key names and component layout as the hub
folders: ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``processor/`` for the
edit pipelines, ``scheduler/``) at widths of 16, following the configs proven in research
(shared RESEARCH.md, "Model families"); `assetbox.testing.tiny_models.write` saves them. The
tokenizer is `tiny_qwen.qwen_tokenizer` (byte-level, Qwen's special tokens), so no hub is
needed. Z-Image's tokenizer carries a Qwen3-style chat template (its pipeline renders prompts
with ``enable_thinking``).

Each family also has a LoRA for its transformer (`lora_state_dict`): Qwen-Image's in the
diffusers/peft layout (``transformer.<module>.lora_A.weight``), Z-Image's in the layout the
community trainers write (``diffusion_model.<module>.lora_down.weight`` with ``.alpha``), which
diffusers converts on load (``_convert_non_diffusers_z_image_lora_to_diffusers``).
"""

from __future__ import annotations

from typing import Any

from assetbox.testing.tiny_parts import LORA_RANK, flux_vae, random_lora_pairs
from assetbox.testing.tiny_qwen import QWEN3_CHAT_TEMPLATE

FLOW_FAMILIES = ("qwen_image", "qwen_image_edit", "qwen_image_edit_plus", "z_image")
_WIDTH = 16  # the text encoders' hidden size = the transformers' text input width


def _qwen2_5_vl_text_encoder():
    """A tiny Qwen2.5-VL (the text encoder of every Qwen-Image pipeline; the edit pipelines also
    run its vision tower on the input images)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from assetbox.testing.tiny_qwen import CAPTIONER_VOCAB, qwen_tokenizer

    tokenizer = qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
    ids |= {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": CAPTIONER_VOCAB,
            "hidden_size": _WIDTH,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": rope,
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": _WIDTH,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": _WIDTH,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "patch_size": 14,
            "window_size": 112,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    config.vision_config.fullatt_block_indexes = [1]
    return Qwen2_5_VLForConditionalGeneration(config).eval(), tokenizer


def _qwen_processor(tokenizer):
    """Qwen2VLProcessor with the PIL image processor and no video processor: transformers builds
    its video processor with torchvision, which CPU installs here lack, and the edit pipelines
    pass only images. It saves as the real one does (``processor/``: preprocessor_config.json,
    the tokenizer files, the chat template)."""
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    from assetbox.pipelines.caption import _image_only
    from assetbox.testing.tiny_qwen import QWEN2_5_VL_CHAT_TEMPLATE

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    )
    cls = _image_only(transformers.Qwen2VLProcessor)
    # diffusers names a component's library by its class's module in model_index.json.
    cls.__module__ = transformers.Qwen2VLProcessor.__module__
    return cls(image_processor, tokenizer, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


def _qwen_image(family: str):
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,  # z_dim 4 x (2x2 packing)
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,  # = sum(axes_dims_rope)
        num_attention_heads=2,
        joint_attention_dim=_WIDTH,
        axes_dims_rope=(8, 4, 4),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    text_encoder, tokenizer = _qwen2_5_vl_text_encoder()
    # Qwen-Image's own scheduler config, but for `shift_terminal` 0.02, with which one step gives
    # NaN (research); tests run 1-2 steps.
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )
    parts: dict[str, Any] = {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }
    if family == "qwen_image":
        return QwenImagePipeline(**parts)
    cls = QwenImageEditPipeline if family == "qwen_image_edit" else QwenImageEditPlusPipeline
    return cls(**parts, processor=_qwen_processor(tokenizer))


def _z_image():
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    from assetbox.testing.tiny_qwen import CAPTIONER_VOCAB, qwen_tokenizer

    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=_WIDTH,
        axes_dims=[8, 4, 4],  # sum = dim / n_heads
        axes_lens=[256, 32, 32],
    )
    with torch.no_grad():  # created with torch.empty: random memory would be saved otherwise
        transformer.x_pad_token.normal_(0, 0.02)
        transformer.cap_pad_token.normal_(0, 0.02)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=CAPTIONER_VOCAB,
            hidden_size=_WIDTH,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        )
    ).eval()
    vae = flux_vae()  # 16 latent channels and a scale factor of 8, as Z-Image's (FLUX.1's)
    return ZImagePipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # Z-Image-Turbo's
    )


def build_pipeline(family: str):
    """A tiny random pipeline of `family` (fixed seeds: the same weights every time).

    Raises:
        ValueError: a family not in `FLOW_FAMILIES`.
    """
    if family in ("qwen_image", "qwen_image_edit", "qwen_image_edit_plus"):
        return _qwen_image(family)
    if family == "z_image":
        return _z_image()
    raise ValueError(f"family must be one of {FLOW_FAMILIES}, not {family!r}")


def lora_state_dict(pipe, family: str, name: str) -> dict[str, Any]:
    """A random LoRA on the transformer's attention projections (and Qwen-Image's image MLP
    output, as real Qwen-Image LoRAs train it), weights seeded from `name`.

    Qwen-Image: diffusers/peft keys (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``).
    Z-Image: the community trainers' keys (``diffusion_model.layers.0.attention.to_q.lora_down
    .weight`` and ``.alpha``), converted by diffusers when loaded.
    """
    import torch

    pattern = r"((attn|attention)\.(to_q|to_k|to_v|to_out\.0)|img_mlp\.net\.2)$"
    state = {}
    for module_name, down, up in random_lora_pairs(pipe.transformer, pattern, name):
        if family == "z_image":
            state[f"diffusion_model.{module_name}.lora_down.weight"] = down
            state[f"diffusion_model.{module_name}.lora_up.weight"] = up
            state[f"diffusion_model.{module_name}.alpha"] = torch.tensor(float(LORA_RANK))
        else:
            state[f"transformer.{module_name}.lora_A.weight"] = down
            state[f"transformer.{module_name}.lora_B.weight"] = up
    return state
