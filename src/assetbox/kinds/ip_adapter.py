"""What generate, edit and the tiled upscale share for an IP-Adapter: the request field
``ip_adapter: {"model", "image", "scale"}``, its submit-time checks and its weights on a worker.

The adapter must be of the checkpoint's family (SD 1.5 or SDXL), and its image must decode
completely, checked at submit. Its image defaults to the request's input image (edit, upscale);
generate has none, so there it is required.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from assetbox.engine.blobs import blob_path
from assetbox.engine.planners import UnitContext
from assetbox.errors import InvalidInput
from assetbox.imaging import verify_image
from assetbox.models.cache import files_bytes
from assetbox.models.store import ModelManifest, ModelStore


class IPAdapterRef(BaseModel):
    """An image as a prompt, through an IP-Adapter (SD 1.5 and SDXL checkpoints)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="store id of the IP-Adapter (of the checkpoint's family)")
    image: str | None = Field(
        default=None,
        description="the image prompt (blob; base64 or an http(s) URL over HTTP); default: the "
        "input image (edit, upscale); generate needs one",
    )
    scale: float = Field(
        default=0.6,
        ge=0,
        le=2,
        description="how strongly the image steers (0: not at all, the bytes of no adapter; 1: "
        "the strength it was trained at; 0.5-0.7 leaves the text prompt its say)",
    )


def check_ip_adapter(
    store: ModelStore,
    checkpoint: ModelManifest,
    ref: IPAdapterRef,
    data_dir: Path,
    *,
    has_input_image: bool,
) -> None:
    """The adapter exists, is of the checkpoint's family, and its image decodes.

    Raises:
        NotFound: no such IP-Adapter (naming ``ip_adapter.model``).
        InvalidInput: another family (``ip_adapter.model``); no image where the request has no
            input image, or one that does not decode (``ip_adapter.image``).
    """
    adapter = store.get(ref.model, "ip_adapter", field="ip_adapter.model")
    if adapter.family != checkpoint.family:
        raise InvalidInput(
            f"IP-Adapter {adapter.id!r} is for {adapter.family}, the checkpoint "
            f"{checkpoint.id!r} is {checkpoint.family}",
            field="ip_adapter.model",
        )
    if ref.image is None:
        if not has_input_image:
            raise InvalidInput(
                "`ip_adapter.image` is needed: this request has no input image to default to",
                field="ip_adapter.image",
            )
        return
    data = blob_path(data_dir, ref.image, field="ip_adapter.image").read_bytes()
    verify_image(data, field="ip_adapter.image")


def ip_adapter_lease(
    ref: IPAdapterRef | None, family: str, ctx: UnitContext
) -> AbstractContextManager[Any]:
    """The adapter's weights and image encoder from the worker's model cache (loaded on first
    use), or None without an adapter."""
    if ref is None:
        return nullcontext(None)
    from assetbox.pipelines.diffusion import device_and_dtype
    from assetbox.pipelines.ip_adapter import load_ip_adapter_weights

    store = ModelStore(ctx.data_dir / "models")
    adapter = store.get(ref.model, "ip_adapter", field="ip_adapter.model")
    folder = store.path(adapter.id, "ip_adapter")
    device, dtype = device_and_dtype(family)  # type: ignore[arg-type]
    return ctx.models.lease(
        f"ip_adapter:{adapter.id}:{adapter.sha256[:12]}",
        lambda: load_ip_adapter_weights(folder, device, dtype),
        estimate=files_bytes(folder),
    )
