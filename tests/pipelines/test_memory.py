"""pipelines/memory.py: the placement policy (fake sizes and a fake pipeline; no GPU needed) and
the peak RSS meter (for real); pipelines/nunchaku.py: why Nunchaku cannot run, reason by reason."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from assetbox.errors import InvalidInput
from assetbox.pipelines import memory, nunchaku
from assetbox.pipelines.memory import PeakMemory, choose_placement, peak_report, place

GIB = 1 << 30


def test_placement_thresholds() -> None:
    sizes = {"unet": 5 * GIB, "text_encoder": 2 * GIB, "vae": GIB // 4}
    assert choose_placement("cpu", sizes, GIB) == "cpu"
    assert choose_placement("cuda", sizes, None) == "gpu"
    assert choose_placement("cuda", sizes, 8 * GIB) == "gpu"
    assert choose_placement("cuda", sizes, 7 * GIB) == "model_offload"  # 7.25 GiB in all
    assert choose_placement("cuda", sizes, 5 * GIB) == "model_offload"  # the UNet just fits
    assert choose_placement("cuda", sizes, 5 * GIB - 1) == "group_offload"
    assert choose_placement("cuda:1", sizes, GIB, group_offload=False) == "sequential_offload"


class FakePipe:
    """What `place` calls on a diffusers pipeline, recorded."""

    def __init__(self) -> None:
        self.components = {
            "unet": torch.nn.Linear(256, 256),  # 257 KiB
            "vae": torch.nn.Linear(64, 64),  # 16.3 KiB
            "scheduler": object(),
        }
        self.calls: list[str] = []

    def to(self, device):
        self.calls.append(f"to {device}")

    def enable_model_cpu_offload(self, device=None):
        self.calls.append(f"model offload {device}")

    def enable_group_offload(self, onload_device, **options):
        self.calls.append(f"group offload {onload_device} {options['offload_type']}")


def test_place_applies_the_policy() -> None:
    sizes = memory.component_sizes(FakePipe())
    assert sizes == {"unet": (256 * 256 + 256) * 4, "vae": (64 * 64 + 64) * 4}
    cases = [
        ("cpu", None, [], "cpu"),
        ("cuda", 1 << 20, ["to cuda"], "gpu"),
        ("cuda", 270_000, ["model offload cuda"], "model_offload"),
        ("cuda", 100_000, ["group offload cuda block_level"], "group_offload"),
    ]
    for device, budget, calls, placement in cases:
        pipe = FakePipe()
        assert place(pipe, device, budget) == placement
        assert pipe.calls == calls


def test_peak_rss_sees_a_short_lived_allocation() -> None:
    with PeakMemory() as baseline:
        pass
    with PeakMemory() as peak:
        block = np.ones(300 << 20, dtype=np.uint8)  # 300 MiB, touched, then freed
        del block
    report = peak.report()
    assert set(report) == {"peak_rss_mb"}  # no CUDA: no VRAM figure
    assert report["peak_rss_mb"] >= baseline.report()["peak_rss_mb"] + 250
    with PeakMemory() as after:  # the mark was reset: the freed block is not counted again
        pass
    assert after.report()["peak_rss_mb"] < report["peak_rss_mb"] - 250


def test_peak_rss_sampled_where_the_mark_cannot_be_reset(monkeypatch) -> None:
    monkeypatch.setattr(memory, "reset_rss_peak", lambda: False)
    with PeakMemory(sample_s=0.001) as peak:
        block = np.ones(200 << 20, dtype=np.uint8)
        block[::4096] = 2  # keep it resident while a sample or two is taken
        time.sleep(0.05)
        del block
    assert peak._sampler is not None
    assert peak.report()["peak_rss_mb"] > 200
    assert peak_report(np.array([10.04, np.nan])) == {"peak_rss_mb": 10.0}
    assert peak_report(np.array([1.0, 2.0])) == {"peak_rss_mb": 1.0, "peak_vram_mb": 2.0}


def test_nunchaku_reasons(monkeypatch, tmp_path) -> None:
    assert "not sdxl" in nunchaku.unavailable("sdxl")
    assert "CUDA" in nunchaku.unavailable("qwen_image")  # this machine has no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert "Hopper" in nunchaku.unavailable("qwen_image_edit")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 9))
    # PyPI's `nunchaku` (or none at all) is not the real package.
    assert "not installed" in nunchaku.unavailable("qwen_image_edit_plus")
    monkeypatch.setattr(nunchaku, "_package_installed", lambda: True)
    # The installed diffusers' QwenEmbedRope.forward has no txt_seq_lens.
    assert "txt_seq_lens" in nunchaku.unavailable("qwen_image")
    monkeypatch.setattr(nunchaku, "_diffusers_compatible", lambda: True)
    assert "svdq-int4_r32" in nunchaku.unavailable("qwen_image", tmp_path, 32)
    (tmp_path / "nunchaku").mkdir()
    (tmp_path / "nunchaku" / "svdq-int4_r32-qwen-image.safetensors").write_bytes(b"")
    assert nunchaku.unavailable("qwen_image", tmp_path, 32) is None
    assert nunchaku.resolve("qwen_image", "auto", None, tmp_path) == "nunchaku"
    assert nunchaku.resolve("qwen_image", "diffusers", None, tmp_path) == "diffusers"
    with pytest.raises(InvalidInput) as info:
        nunchaku.resolve("qwen_image", "nunchaku", 128, tmp_path)  # no rank-128 weights
    assert info.value.field == "backend"


def test_backend_refusals_here() -> None:
    assert nunchaku.resolve("qwen_image", "auto", None) == "diffusers"
    with pytest.raises(InvalidInput) as info:
        nunchaku.resolve("qwen_image", "nunchaku", None)
    assert info.value.field == "backend" and "CUDA" in str(info.value)
    for backend in ("auto", "diffusers"):
        with pytest.raises(InvalidInput) as info:
            nunchaku.resolve("qwen_image", backend, 32)  # type: ignore[arg-type]
        assert info.value.field == "rank"
