"""AI Assets Toolbox: generate, edit, caption and upscale images on one GPU or a fleet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("assetbox")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
