"""Settings: the one place that reads the environment (prefix ``ASSETBOX_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Embedded defaults that run on a laptop; every field can be set as ``ASSETBOX_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="ASSETBOX_", env_file=None, extra="ignore")

    data_dir: Path = Field(
        default=Path("./data"),
        description="Where the job database, results and the model store live.",
    )
    max_image_pixels: int = Field(
        default=16384 * 16384,
        gt=0,
        description=(
            "Largest image (width x height) accepted for decoding; larger ones are refused from "
            "their header, before any pixel is decoded (decompression-bomb guard)."
        ),
    )
    max_image_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Largest encoded image accepted, in bytes.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
