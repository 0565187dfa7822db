"""Upscaler architectures: spandrel's registry, importable on CPU-only machines.

spandrel imports torchvision when it is imported, for two architectures only (LaMa inpainting and
RestoreFormer face restoration, which this project does not use). On a CPU-only machine the torch
build is ``torch==2.13.0+cpu`` and PyPI's torchvision wheels are CUDA builds that fail to import
beside it ("operator torchvision::nms does not exist"), so torchvision is not installed there.
`import_spandrel` then registers a stand-in ``torchvision`` module whose functions raise a
`ModelError` naming the missing package, so every other architecture loads and a LaMa or
RestoreFormer model fails with a clear message instead of an import error at start-up.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from assetbox.errors import ModelError

if TYPE_CHECKING:
    import spandrel
    import torch

# What spandrel 0.4 takes from torchvision, all inside functions of LaMa and RestoreFormer.
_TORCHVISION_NAMES = {"transforms.functional": ("InterpolationMode", "rotate", "normalize")}


def _needs_torchvision(name: str) -> Callable[..., Any]:
    def missing(*args: object, **kwargs: object) -> Any:
        raise ModelError(
            f"this model needs torchvision ({name}), which is not installed: it has no CPU "
            "build for this torch; install a torchvision that matches torch to use it"
        )

    return missing


class _InterpolationMode:
    # Only read as a default argument value; any use goes through a function that raises.
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _install_torchvision_stand_in() -> None:
    root = types.ModuleType("torchvision")
    root.__path__ = []  # a package, so that submodules resolve
    transforms = types.ModuleType("torchvision.transforms")
    transforms.__path__ = []
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = _InterpolationMode  # type: ignore[attr-defined]
    functional.rotate = _needs_torchvision("rotate")  # type: ignore[attr-defined]
    functional.normalize = _needs_torchvision("normalize")  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    root.__assetbox_stand_in__ = True  # type: ignore[attr-defined]
    sys.modules.update(
        {
            "torchvision": root,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )


def import_spandrel() -> spandrel:  # type: ignore[valid-type]
    """The spandrel module, with a torchvision stand-in when torchvision is not installed.

    Raises:
        ModelError: spandrel itself is not installed.
    """
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]  # type: ignore[return-value]
    stand_in = importlib.util.find_spec("torchvision") is None
    if stand_in:
        _install_torchvision_stand_in()
    try:
        return importlib.import_module("spandrel")
    except ImportError as exc:
        raise ModelError(
            f"spandrel is needed to load upscalers but cannot be imported: {exc}"
        ) from exc
    finally:
        # spandrel has bound what it uses at import. Out of sys.modules again, so that other
        # libraries (diffusers, transformers) still see that torchvision is not installed.
        if stand_in:
            for name in ("torchvision.transforms.functional", "torchvision.transforms"):
                sys.modules.pop(name, None)
            sys.modules.pop("torchvision", None)


def load_descriptor(state_dict: dict[str, torch.Tensor]) -> Any:
    """spandrel's model descriptor for a state dict (architecture detected from its keys).

    Raises:
        ModelError: spandrel recognises no architecture in the state dict, or the weights do
            not fit the detected architecture.
    """
    spandrel = import_spandrel()
    try:
        return spandrel.ModelLoader().load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError as exc:
        raise ModelError("spandrel recognises no upscaler architecture in these weights") from exc
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelError(f"the weights do not fit the detected architecture: {exc}") from exc
