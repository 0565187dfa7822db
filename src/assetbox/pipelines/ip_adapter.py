"""IP-Adapters on SD 1.5 and SDXL pipelines: an image as a prompt, beside the text.

The weights and the image encoder are loaded once (`load_ip_adapter_weights`, held by the
worker's model cache like a ControlNet) and applied per run (`applied`): diffusers'
``load_ip_adapter`` builds the image projection and the IP attention processors from the state
dict, ``set_ip_adapter_scale`` sets the scale, the pipeline takes ``ip_adapter_image``, and
``unload_ip_adapter`` puts the plain processors back afterwards, so a later run without an
adapter gives the bytes it gave before any (LoRAs are adapters on the linear layers, untouched).
Scale 0 runs the adapter too: diffusers' IP processors skip an adapter of scale 0, which leaves
the bytes of a run without one (tested).

No file or network I/O here beyond loading weights from the paths given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assetbox.errors import ModelError

WEIGHTS_FILE = "model.safetensors"
ENCODER_DIR = "image_encoder"


@dataclass
class IPAdapterWeights:
    """An IP-Adapter's state dict (``{"image_proj": ..., "ip_adapter": ...}``, as diffusers'
    loader takes it) and its loaded image encoder."""

    state: dict[str, dict[str, Any]]
    encoder: Any

    @property
    def nbytes(self) -> int:
        from assetbox.models.cache import estimate_bytes

        tensors = [t for part in self.state.values() for t in part.values()]
        return sum(t.numel() * t.element_size() for t in tensors) + estimate_bytes(self.encoder)


@dataclass(frozen=True)
class IPAdapterUse:
    """One run's adapter: its weights, the image (H x W x 3 uint8) and the scale."""

    weights: IPAdapterWeights
    image: np.ndarray
    scale: float


def load_ip_adapter_weights(folder: Path, device: str, dtype: Any) -> IPAdapterWeights:
    """A stored IP-Adapter (``model.safetensors`` and ``image_encoder/``), offline.

    Raises:
        ModelError: the weights or the encoder do not load.
    """
    from safetensors import safe_open
    from transformers import CLIPVisionModelWithProjection

    state: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    try:
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is no dict)
                part, _, name = key.partition(".")
                if part in state:
                    state[part][name] = handle.get_tensor(key).to(dtype)
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            str(folder / ENCODER_DIR), dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the IP-Adapter in {folder.name}: {exc}") from exc
    return IPAdapterWeights(state, encoder.to(device).eval())


@contextmanager
def applied(pipe: Any, use: IPAdapterUse | None) -> Iterator[dict[str, Any]]:
    """The adapter loaded into `pipe` for one run; yields the pipeline's extra arguments
    (``ip_adapter_image``). Afterwards the pipeline is as it was, also when the run failed.

    Raises:
        ModelError: the adapter does not fit the pipeline's UNet.
    """
    if use is None:
        yield {}
        return
    from PIL import Image

    before = {"image_encoder": pipe.image_encoder, "feature_extractor": pipe.feature_extractor}
    # A state dict brings no encoder: register the loaded one first, so that diffusers' loader
    # keeps it (and builds the CLIP image processor at the encoder's image size).
    pipe.register_modules(image_encoder=use.weights.encoder)
    try:
        try:
            pipe.load_ip_adapter(
                use.weights.state, subfolder="", weight_name="", image_encoder_folder=None
            )
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"cannot apply the IP-Adapter: {exc}") from exc
        pipe.set_ip_adapter_scale(use.scale)
        yield {"ip_adapter_image": Image.fromarray(use.image).convert("RGB")}
    finally:
        # Also after a load that failed halfway (processors set, projection not yet).
        pipe.unload_ip_adapter()
        pipe.register_modules(**before)
