"""The flow-transformer families in the store: folders and LoRAs detected, imports that keep what
the folders need, speed LoRAs; the pipeline settings they bring (Lightning's scheduler, the edit
pipelines' conditioning area)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from assetbox.models.families import detect
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore

R = 4  # LoRA rank


def fake(path: Path, shapes: dict[str, tuple[int, ...]], metadata=None) -> Path:
    """A safetensors file with real key names and tiny tensors (detection reads names/shapes)."""
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path), metadata=metadata)
    return path


def lora(key: str, width: int, out: int, *, down: str = "lora_A", up: str = "lora_B") -> dict:
    return {f"{key}.{down}.weight": (R, width), f"{key}.{up}.weight": (out, R)}


KOHYA = {"down": "lora_down", "up": "lora_up"}


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        # Qwen-Image: its blocks' image/text MLPs and modulations, in every trainer's layout.
        (lora("transformer.transformer_blocks.0.img_mlp.net.2", 64, 16), "qwen_image"),
        (lora("diffusion_model.transformer_blocks.3.txt_mod.1", 16, 96), "qwen_image"),
        (lora("lora_unet_transformer_blocks_0_img_mlp_net_0_proj", 16, 64, **KOHYA), "qwen_image"),
        # Z-Image: `layers.N.attention`, the refiners.
        (lora("diffusion_model.layers.0.attention.to_q", 32, 32, **KOHYA), "z_image"),
        (lora("lora_unet_layers_1_attention_to_out_0", 32, 32, **KOHYA), "z_image"),
        (lora("transformer.noise_refiner.0.feed_forward.w1", 32, 64), "z_image"),
        # FLUX.2: the fused single-stream projection; [dev] is 6144 wide, klein 3072/4096.
        (
            lora("transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj", 3072, 27648),
            "flux2_klein",
        ),
        (
            lora("transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj", 6144, 55296),
            "flux2",
        ),
        # FLUX.2 in BFL's layout shares Flux.1's block names; its gated MLPs (3x, 2 halves) do not.
        (lora("diffusion_model.double_blocks.0.img_mlp.0", 3072, 18432), "flux2_klein"),
        (lora("diffusion_model.single_blocks.0.linear1", 4096, 36864), "flux2_klein"),
        (lora("diffusion_model.double_blocks.0.img_mlp.0", 3072, 12288), "flux1"),
        (lora("transformer.single_transformer_blocks.0.attn.to_q", 3072, 3072), "flux1"),
    ],
)
def test_flow_lora_families_from_their_keys(tmp_path: Path, shapes: dict, family: str) -> None:
    detected = detect(fake(tmp_path / "style.safetensors", shapes))
    assert (detected.kind, detected.family, detected.speed_steps) == ("lora", family, None)


@pytest.mark.parametrize(
    ("name", "metadata", "steps"),
    [
        ("Qwen-Image-Lightning-8steps-V1.0.safetensors", None, 8),
        ("Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors", None, 4),
        ("style.safetensors", {"assetbox.speed_steps": "6"}, 6),
        ("Qwen-Image-style-v8.safetensors", None, None),
    ],
)
def test_speed_loras_by_name_or_metadata(
    tmp_path: Path, name: str, metadata: dict | None, steps: int | None
) -> None:
    shapes = lora("transformer.transformer_blocks.0.img_mlp.net.2", 64, 16)
    detected = detect(fake(tmp_path / name, shapes, metadata))
    assert (detected.family, detected.speed_steps) == ("qwen_image", steps)


@pytest.fixture(scope="module")
def flow_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from assetbox.testing.tiny_models import write

    out = tmp_path_factory.mktemp("flow")
    for family in ("qwen_image_edit_plus", "z_image", "flux2_klein"):
        write(family, out)
    return out


def test_folders_are_detected_and_imported_with_what_they_need(
    flow_folders: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "models")
    expected = {
        "qwen_image_edit_plus": ("QwenImageEditPlusPipeline", None),
        "z_image": ("ZImagePipeline", None),
        "flux2_klein": ("Flux2KleinPipeline", True),
    }
    for family, (architecture, distilled) in expected.items():
        manifest = import_model(store, flow_folders / f"tiny-{family}")
        assert (manifest.kind, manifest.family, manifest.layout) == (
            "checkpoint",
            family,
            "diffusers",
        )
        assert (manifest.architecture, manifest.distilled) == (architecture, distilled)
    folder = store.path("tiny-qwen_image_edit_plus", "checkpoint") / "diffusers"
    # The processor's chat template (.jinja) and configs come along: loading needs them.
    assert (folder / "processor" / "chat_template.jinja").is_file()
    assert (folder / "processor" / "processor_config.json").is_file()


def test_a_speed_lora_runs_lightnings_scheduler_on_qwen_only() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from assetbox.pipelines.diffusion import DiffusionModel, LoraUse, _scheduler

    config = dict(FlowMatchEulerDiscreteScheduler(shift=3.0, shift_terminal=0.02).config)
    speed = [LoraUse(Path("x.safetensors"), "x", 1.0, speed=True)]
    qwen = DiffusionModel("qwen_image", pipe=None, device="cpu", scheduler_config=config)
    lightning = _scheduler(qwen, "flow_euler", speed).config
    assert lightning.base_shift == pytest.approx(1.0986, abs=1e-4)  # log(3)
    assert (lightning.max_shift, lightning.shift) == (lightning.base_shift, 1.0)
    assert lightning.use_dynamic_shifting and lightning.shift_terminal is None
    assert _scheduler(qwen, "flow_euler").config.shift == 3.0  # without it: the model's own
    z_image = DiffusionModel("z_image", pipe=None, device="cpu", scheduler_config=config)
    assert _scheduler(z_image, "flow_euler", speed).config.shift == 3.0


def test_the_conditioning_area_is_set_for_one_call_and_restored() -> None:
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    from assetbox.pipelines.diffusion import _condition_area

    edit = importlib.import_module(QwenImageEditPipeline.__module__)
    plus = importlib.import_module(QwenImageEditPlusPipeline.__module__)
    original = edit.calculate_dimensions
    pipe_edit = object.__new__(QwenImageEditPipeline)
    pipe_plus = object.__new__(QwenImageEditPlusPipeline)
    with _condition_area(pipe_edit, 64 * 64):
        assert edit.calculate_dimensions(1024 * 1024, 2.0)[:2] == (96, 32)  # 2:1 at ~64x64
    assert edit.calculate_dimensions is original
    assert edit.calculate_dimensions(1024 * 1024, 1.0)[:2] == (1024, 1024)
    with _condition_area(pipe_plus, 128 * 128):
        assert (plus.VAE_IMAGE_SIZE, plus.CONDITION_IMAGE_SIZE) == (128 * 128, 48 * 48)
    assert (plus.VAE_IMAGE_SIZE, plus.CONDITION_IMAGE_SIZE) == (1024 * 1024, 384 * 384)


def test_klein_defaults_and_guidance_follow_is_distilled(tmp_path: Path) -> None:
    from assetbox.errors import InvalidInput
    from assetbox.kinds.diffusion import GenerateOptions, defaults_for, fill_guidance
    from assetbox.models.store import ModelManifest, now

    def klein(distilled: bool) -> ModelManifest:
        return ModelManifest(
            id="klein",
            kind="checkpoint",
            architecture="Flux2KleinPipeline",
            family="flux2_klein",
            distilled=distilled,
            source="test",
            sha256="0" * 64,
            size=1,
            added=now(),
        )

    store = ModelStore(tmp_path / "models")
    assert (defaults_for(klein(True))["steps"], defaults_for(klein(False))["steps"]) == (4, 50)
    request = GenerateOptions(model="klein", prompts=["a"], guidance=3.5)
    fill_guidance(store, klein(False), request)  # base klein runs CFG
    with pytest.raises(InvalidInput) as refused:
        fill_guidance(store, klein(True), request)
    assert refused.value.field == "guidance"
