"""Nunchaku (SVDQuant 4-bit transformers) for Qwen-Image and Qwen-Image-Edit(-Plus), where it can
run; the `backend` a request asks for, and why it cannot be Nunchaku.

Nunchaku runs only where all of these hold, each checked here and named in a refusal:

- the family is qwen_image, qwen_image_edit or qwen_image_edit_plus (its Qwen-Image kernels);
- a CUDA GPU that its kernels are built for: Turing, Ampere, Ada (int4) and Blackwell (fp4);
  Hopper (sm90) is not among them;
- the real package is installed. PyPI's ``nunchaku`` is an unrelated project, so the import name
  proves nothing; the real one has ``nunchaku.models.transformers``;
- the installed diffusers still has the argument Nunchaku calls with: its Qwen-Image transformer
  calls ``QwenEmbedRope.forward(..., txt_seq_lens=...)``, which diffusers 0.42 removed (it takes
  ``max_txt_seq_len``), so every call would fail with a TypeError;
- the checkpoint carries Nunchaku weights of the requested rank and the GPU's precision:
  ``nunchaku/svdq-{int4|fp4}_r{32|128}-*.safetensors`` in its diffusers folder.

``backend: "auto"`` takes Nunchaku where all of that holds, else the diffusers path (bf16, or
fp8/int8 through torchao as the service's `quantization` setting says). ``rank`` chooses the
SVD low-rank branch: 32 is faster, 128 closer to bf16.

No file or network I/O here beyond reading the paths given.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any, Literal

from assetbox.errors import InvalidInput

Backend = Literal["auto", "nunchaku", "diffusers"]
Rank = Literal[32, 128]
NUNCHAKU_FAMILIES = ("qwen_image", "qwen_image_edit", "qwen_image_edit_plus")
WEIGHTS_DIR = "nunchaku"
# Compute capabilities Nunchaku's kernels are built for: int4 on Turing (7.5), Ampere (8.0,
# 8.6), Ada (8.9); fp4 on Blackwell (10.0, 12.0). Hopper (9.0) has none.
_INT4 = {(7, 5), (8, 0), (8, 6), (8, 7), (8, 9)}
_FP4 = {(10, 0), (12, 0)}


def precision(capability: tuple[int, int]) -> str | None:
    """Nunchaku's weight precision on a GPU of this compute capability; None: unsupported."""
    if capability in _INT4:
        return "int4"
    if capability in _FP4:
        return "fp4"
    return None


def unavailable(family: str, checkpoint: Path | None = None, rank: int | None = None) -> str | None:
    """Why Nunchaku cannot run `family` here (the first reason found), or None when it can.

    `checkpoint` is the diffusers folder whose ``nunchaku/`` weights are looked for (of `rank`,
    either when None)."""
    if family not in NUNCHAKU_FAMILIES:
        return f"Nunchaku runs Qwen-Image and Qwen-Image-Edit(-Plus) only, not {family}"
    import torch

    if not torch.cuda.is_available():
        return "Nunchaku needs a CUDA GPU; this worker has none"
    capability = torch.cuda.get_device_capability()
    if precision(capability) is None:
        name = torch.cuda.get_device_name()
        hopper = " (Hopper)" if capability == (9, 0) else ""
        return (
            f"Nunchaku has no kernels for {name}{hopper}, compute capability "
            f"{capability[0]}.{capability[1]}; it supports Turing, Ampere, Ada and Blackwell"
        )
    if not _package_installed():
        return (
            "the Nunchaku package is not installed (PyPI's `nunchaku` is an unrelated project; "
            "install nunchaku-tech's wheel for this torch and CUDA)"
        )
    if not _diffusers_compatible():
        import diffusers

        return (
            f"the installed diffusers {diffusers.__version__} removed the `txt_seq_lens` argument "
            "of QwenEmbedRope.forward that Nunchaku's Qwen-Image transformer calls"
        )
    if checkpoint is not None and weights_file(checkpoint, capability, rank) is None:
        wanted = f"svdq-{precision(capability)}_r{rank or '{32,128}'}-*.safetensors"
        return f"the checkpoint has no Nunchaku weights {WEIGHTS_DIR}/{wanted}"
    return None


def _package_installed() -> bool:
    """The real Nunchaku (nunchaku-tech), told from PyPI's namesake by its modules."""
    try:
        return importlib.util.find_spec("nunchaku.models.transformers") is not None
    except (ImportError, ValueError):  # a `nunchaku` that is no package
        return False


def _diffusers_compatible() -> bool:
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

    return "txt_seq_lens" in inspect.signature(QwenEmbedRope.forward).parameters


def weights_file(checkpoint: Path, capability: tuple[int, int], rank: int | None) -> Path | None:
    """The checkpoint's Nunchaku transformer for this GPU and rank (128 before 32 when either)."""
    kind = precision(capability)
    for r in (rank,) if rank is not None else (128, 32):
        found = sorted((checkpoint / WEIGHTS_DIR).glob(f"svdq-{kind}_r{r}-*.safetensors"))
        if found:
            return found[0]
    return None


def resolve(
    family: str, backend: Backend, rank: int | None, checkpoint: Path | None = None
) -> Literal["nunchaku", "diffusers"]:
    """The backend a request runs on.

    Raises:
        InvalidInput: `backend` "nunchaku" where it cannot run (naming ``backend``, with the
            reason), or a `rank` for a request that runs on diffusers (naming ``rank``).
    """
    if backend == "diffusers":
        if rank is not None:
            raise InvalidInput(
                '`rank` is Nunchaku\'s; `backend` "diffusers" takes none', field="rank"
            )
        return "diffusers"
    reason = unavailable(family, checkpoint, rank)
    if reason is None:
        return "nunchaku"
    if backend == "nunchaku":
        raise InvalidInput(f'`backend` "nunchaku" cannot run here: {reason}', field="backend")
    if rank is not None:
        raise InvalidInput(
            f"`rank` is Nunchaku's, and this request runs on diffusers: {reason}", field="rank"
        )
    return "diffusers"


def load_transformer(checkpoint: Path, rank: int | None) -> Any:
    """Nunchaku's Qwen-Image transformer from the checkpoint's weights (call only after
    `unavailable` said None); it goes into the diffusers pipeline as ``transformer=``, in bf16,
    as Nunchaku's examples load it."""
    import torch
    from nunchaku.models.transformers.transformer_qwenimage import (  # type: ignore[import-not-found]
        NunchakuQwenImageTransformer2DModel,
    )

    path = weights_file(checkpoint, torch.cuda.get_device_capability(), rank)
    assert path is not None
    return NunchakuQwenImageTransformer2DModel.from_pretrained(str(path))
