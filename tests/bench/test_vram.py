"""bench/vram.py: skipped without CUDA; its table's logic on a tiny klein with CUDA faked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "vram.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_vram", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_is_skipped(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_module().main(["any-model"]) == 0
    assert capsys.readouterr().out == "skipped: no CUDA\n"


def test_rows_against_the_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, one_thread
) -> None:
    """CUDA faked (the runs stay on the CPU, memory reads a constant): every size gets a row
    per reference count, each row's ratios against that size's 0-reference row."""
    import torch

    import assetbox.pipelines.diffusion as diffusion
    from assetbox.testing.tiny_flux2 import build_flux2_klein

    build_flux2_klein().save_pretrained(tmp_path / "klein")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args, **kwargs: 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "fake")
    monkeypatch.setattr(diffusion, "device_and_dtype", lambda family: ("cpu", torch.float32))
    args = [str(tmp_path / "klein"), "--sizes", "64", "96", "--refs", "0", "2"]
    assert bench_module().main([*args, "--steps", "1", "--repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["family"] == "flux2_klein"
    rows = report["rows"]
    assert [(r["size"], r["refs"]) for r in rows] == [(64, 0), (64, 2), (96, 0), (96, 2)]
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"] and r["refs"] == 0)
        assert row["x_s"] == pytest.approx(row["s"] / base["s"], abs=0.01)
        assert row["peak_mib"] == 1024 and row["x_peak"] == 1.0
        assert row["first_s"] > 0 and row["weighted_s"] > 0
