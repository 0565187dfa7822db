"""Where a diffusion model's weights live on a CUDA device, and how much memory a unit peaked at.

Placement (`choose_placement`, applied by `place`): a model whose modules fit the memory budget
goes onto the GPU whole. One that does not, but whose largest component (the UNet or
transformer, usually) fits, runs with diffusers' model CPU offload: each component moves onto
the GPU while it runs, so the GPU holds one component at a time. Below that second threshold,
when even the largest component does not fit, only group offload can run it: diffusers' hooks
move one block of layers at a time onto the GPU (``enable_group_offload``, block level, one
block per group, with a CUDA stream so the next block's copy overlaps the current block's
compute); a pipeline without group offload falls back to sequential offload (one layer at a
time, the slowest). On a CPU every placement is "cpu": there is nothing to offload to.

Peak memory (`PeakMemory`): the process's peak resident set while the unit ran, from the
kernel's high-water mark: writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` to the
current RSS, and ``VmHWM`` in ``/proc/self/status`` at the end is the peak since (exact, at no
cost, unlike sampling, which misses short spikes such as a VAE decode). Where the file cannot
be written (not Linux, or a kernel that refuses), a thread samples ``VmRSS`` every 10 ms instead.
On CUDA, ``torch.cuda`` peak statistics give the peak of allocated GPU memory. Both are the
process's: units running at once in one process share them (a second unit's reset lowers the
first's baseline), so each unit reports at least its own peak since the later reset.

No file or network I/O here beyond ``/proc/self``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

Placement = Literal["cpu", "gpu", "model_offload", "group_offload", "sequential_offload"]
MIB = 1 << 20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def choose_placement(
    device: str, sizes: Mapping[str, int], budget_bytes: int | None, *, group_offload: bool = True
) -> Placement:
    """Where a model with components of `sizes` (bytes each) runs under `budget_bytes`.

    ``gpu``: all of it fits (or no budget is set); ``model_offload``: the largest component
    fits; else ``group_offload`` (``sequential_offload`` when the pipeline has no group offload).
    """
    if not device.startswith("cuda"):
        return "cpu"
    if budget_bytes is None or sum(sizes.values()) <= budget_bytes:
        return "gpu"
    if max(sizes.values(), default=0) <= budget_bytes:
        return "model_offload"
    return "group_offload" if group_offload else "sequential_offload"


def component_sizes(pipe: Any) -> dict[str, int]:
    """Bytes of each torch module of a diffusers pipeline (parameters and buffers)."""
    import torch

    from assetbox.models.cache import estimate_bytes

    return {
        name: estimate_bytes(component)
        for name, component in pipe.components.items()
        if isinstance(component, torch.nn.Module)
    }


def place(pipe: Any, device: str, budget_bytes: int | None) -> Placement:
    """Put `pipe` where `choose_placement` says; returns the placement."""
    import torch

    placement = choose_placement(
        device,
        component_sizes(pipe),
        budget_bytes,
        group_offload=hasattr(pipe, "enable_group_offload"),
    )
    if placement == "gpu":
        pipe.to(device)
    elif placement == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif placement == "group_offload":
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
    elif placement == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    return placement


# -- peak memory --------------------------------------------------------------------------------


def _status_kib(name: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise OSError(f"no {name} in {_STATUS}")


def reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; False where it cannot."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then `peak.report()`: ``peak_rss_mb`` and, on
    CUDA, ``peak_vram_mb`` (see the module doc for how each is measured)."""

    def __init__(self, device: str = "cpu", *, sample_s: float = 0.01) -> None:
        self.device = device
        self.sample_s = sample_s
        self.rss_peak_kib = 0
        self.vram_peak_bytes: int | None = None
        self._sampler: threading.Thread | None = None
        self._done = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        if not reset_rss_peak():
            self.rss_peak_kib = _status_kib("VmRSS")
            self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(self.sample_s):
            self.rss_peak_kib = max(self.rss_peak_kib, _status_kib("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._done.set()
            self._sampler.join()
            self.rss_peak_kib = max(self.rss_peak_kib, _status_kib("VmRSS"))
        else:
            self.rss_peak_kib = _status_kib("VmHWM")
        if self.device.startswith("cuda"):
            import torch

            self.vram_peak_bytes = int(torch.cuda.max_memory_allocated(self.device))

    def report(self) -> dict[str, float]:
        """``{"peak_rss_mb": ..., "peak_vram_mb": ...}`` in MiB (VRAM on CUDA only)."""
        return peak_report(self.as_array())

    def as_array(self) -> np.ndarray:
        """[peak RSS, peak VRAM (NaN off CUDA)] in MiB, as a unit's result carries it."""
        vram = np.nan if self.vram_peak_bytes is None else self.vram_peak_bytes / MIB
        return np.array([self.rss_peak_kib / 1024, vram], dtype=np.float64)


def peak_report(peaks: np.ndarray) -> dict[str, float]:
    """`PeakMemory.as_array`'s values as timings carry them: ``peak_rss_mb``, and
    ``peak_vram_mb`` where it was measured."""
    rss, vram = (float(v) for v in peaks)
    return {"peak_rss_mb": round(rss, 1)} | (
        {} if np.isnan(vram) else {"peak_vram_mb": round(vram, 1)}
    )
