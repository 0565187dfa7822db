"""Diffusion models in the store: detection from headers, import, shipped configs, tokenizers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from assetbox.errors import UnsupportedFormat
from assetbox.models.families import detect
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore

ATTN2_K = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"


def fake(path: Path, shapes: dict[str, tuple[int, ...]], metadata=None) -> Path:
    """A safetensors file with real key names and tiny tensors (detection reads names/shapes)."""
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("shapes", "kind", "family"),
    [
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                "cond_stage_model.transformer.text_model.final_layer_norm.weight": (8,),
            },
            "checkpoint",
            "sd15",
        ),
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (8,),
                "conditioner.embedders.1.model.positional_embedding": (77, 8),
            },
            "checkpoint",
            "sdxl",
        ),
        ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8)}, "lora", "sdxl"),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8)}, "lora", "sd15"),
        (
            {
                ATTN2_K: (
                    4,
                    2048,
                )
            },
            "lora",
            "sdxl",
        ),
        (
            {
                ATTN2_K: (
                    4,
                    768,
                )
            },
            "lora",
            "sd15",
        ),
        (
            {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 8)},
            "lora",
            "flux1",
        ),
    ],
)
def test_family_from_key_names(tmp_path: Path, shapes, kind: str, family: str) -> None:
    detected = detect(fake(tmp_path / "m.safetensors", shapes))
    assert (detected.kind, detected.family) == (kind, family)


@pytest.mark.parametrize(
    ("shapes", "reason"),
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)}, "inpainting"),
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                "cond_stage_model.model.token_embedding.weight": (8, 8),
            },
            "2.x",
        ),
        ({"double_blocks.0.img_attn.norm.key_norm.scale": (8,)}, "Flux"),
        ({"unet.conv_in.lora_A.weight": (4, 8)}, "cannot tell"),
    ],
)
def test_unsupported_models_are_refused_with_the_reason(tmp_path: Path, shapes, reason) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        detect(fake(tmp_path / "m.safetensors", shapes))
    assert reason in info.value.message and info.value.field == "path"


def test_pickles_are_refused_and_the_store_is_unchanged(tmp_path: Path, tiny_models: Path) -> None:
    store = ModelStore(tmp_path / "models")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(UnsupportedFormat, match="pickles"):
        import_model(store, ckpt)
    folder = tmp_path / "pickled"
    import shutil

    shutil.copytree(tiny_models / "tiny-sd15", folder)
    torch.save({}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsupportedFormat, match="pickled"):
        import_model(store, folder)
    assert store.list() == []


def test_clip_tokenizer_files_derived_from_the_merge_list(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from assetbox.models.tokenizers import write_clip_tokenizer

    assert write_clip_tokenizer(tmp_path) == 49408
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    # Ids published for openai/clip-vit-large-patch14 (e.g. in Apple's ml-stable-diffusion tests).
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("a photo of an astronaut riding a horse on mars").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("sd15", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
        (
            "sdxl",
            {
                "unet": 2_567_463_684,
                "vae": 83_653_863,
                "text_encoder": 123_060_480,
                "text_encoder_2": 694_659_840,
            },
        ),
    ],
)
def test_shipped_configs_build_the_real_models(family: str, expected: dict[str, int]) -> None:
    """The configs single files load with describe the real models (parameter counts of the
    published weights), built on the meta device."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    from assetbox.models.diffusion_import import write_config

    root = Path(__file__).parents[2] / "src/assetbox/models/configs" / family
    index = json.loads((root / "model_index.json").read_text())
    for component, count in expected.items():
        library, name = index[component]
        cls = getattr(diffusers if library == "diffusers" else transformers, name)
        with init_empty_weights():
            if library == "diffusers":
                model = cls.from_config(cls.load_config(root / component))
            else:
                model = cls(cls.config_class.from_pretrained(root / component))
        assert sum(p.numel() for p in model.parameters()) == count, component
    assert callable(write_config)


def test_single_file_sdxl_imports_and_generates_offline(tiny_models: Path, tmp_path: Path) -> None:
    """The CLI in a fresh process with HF_HUB_OFFLINE=1 and no proxy to anywhere."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "ASSETBOX_DATA_DIR": str(tmp_path / "data"),
        "HF_HOME": str(tmp_path / "hf-home"),  # an empty cache: nothing to fall back on
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "OMP_NUM_THREADS": "1",
    }
    cli = [sys.executable, "-m", "assetbox.cli"]
    imported = subprocess.run(
        [*cli, "models", "import", str(tiny_models / "tiny-sdxl-single.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, imported.stderr
    assert "sdxl checkpoint" in imported.stdout
    out = tmp_path / "out.png"
    generated = subprocess.run(
        [
            *(*cli, "generate", "a photo of a cat", "-o", str(out), "--model", "tiny-sdxl-single"),
            *("--width", "64", "--height", "64", "--steps", "2", "--seed", "1", "--count", "2"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stderr
    first, second = tmp_path / "out-0.png", tmp_path / "out-1.png"
    assert Image.open(first).size == (64, 64) and Image.open(second).size == (64, 64)
    assert first.read_bytes() != second.read_bytes()


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"model_index.json": '{"unet": ["os", "system"]}'}, "not diffusers or transformers"),
        ({"model_index.json": "{}", "../escape.json": "{}"}, "may not be written"),
        ({"model_index.json": "{}", "a.json": "{}", "a.json/b.json": "{}"}, "cannot be written"),
        ({"unet/config.json": "{}"}, "model_index.json"),
    ],
)
def test_embedded_configs_are_checked(tmp_path: Path, files: dict, why: str) -> None:
    from assetbox.models.families import CONFIG_METADATA_KEY

    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "conditioner.embedders.1.model.positional_embedding": (77, 8),
    }
    path = fake(tmp_path / "x.safetensors", shapes, {CONFIG_METADATA_KEY: json.dumps(files)})
    store = ModelStore(tmp_path / "models")
    with pytest.raises(UnsupportedFormat, match=why):
        import_model(store, path)
    assert store.list() == [] and not (tmp_path / "escape.json").exists()
