"""Structured (JSON) logs: one object per line, with request and job fields as keys."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

LOGGER = "assetbox"


def configure_json_logs(level: int = logging.INFO) -> None:
    """Send the ``assetbox`` loggers to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger(LOGGER)
    if any(getattr(h, "_assetbox_json", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler._assetbox_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER}.{name}")
