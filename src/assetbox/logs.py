"""Structured (JSON) logs: one object per line, with request and job fields as keys.

With JSON logs on (`assetbox serve`), stdout carries JSON lines only: our loggers, uvicorn's,
Python warnings and the loggers of the libraries we run (diffusers, transformers,
huggingface_hub, torch) all go through one JSON handler, and progress bars are off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LOGGER = "assetbox"

# Read by tqdm and huggingface_hub when they are imported, so they must be set before that;
# worker processes inherit them.
_QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

_lock = threading.Lock()
_handler: logging.Handler | None = None


def configure_json_logs(level: int = logging.INFO) -> None:
    """Send logs to stdout as JSON lines (idempotent).

    The ``assetbox`` loggers log at `level`; every other logger that reaches the root logger
    (uvicorn's, ``py.warnings``, the libraries' once they are imported) shares the handler.
    """
    global _handler
    with _lock:
        if _handler is not None:
            return
        for name, value in _QUIET_ENV.items():
            os.environ.setdefault(name, value)
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                # uvicorn's records repeat their message with terminal colour codes.
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            )
        )
        handler._assetbox_json = True  # type: ignore[attr-defined]
        handler.addFilter(_no_torchvision_advice)
        # Ours do not propagate: their records and level then do not depend on how the root
        # logger is set up (a test runner adds its own handlers there).
        logger = logging.getLogger(LOGGER)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
        logging.getLogger().addHandler(handler)
        # Warnings would otherwise be printed as plain text on stderr.
        logging.captureWarnings(True)
        _handler = handler
    _adopt_library_loggers()


def _no_torchvision_advice(record: logging.LogRecord) -> bool:
    """Drop transformers' "requires torchvision ... Install torchvision" notes: on CPU machines
    torchvision is left out on purpose (PyPI's builds replace the CPU torch; see
    docs/DESIGN-NOTES.md) and its image processors' fallbacks are the ones meant."""
    return not (
        record.name.startswith("transformers") and "requires torchvision" in record.getMessage()
    )


def json_logs_configured() -> bool:
    """Whether `configure_json_logs` ran in this process (worker processes then run it too)."""
    return _handler is not None


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER}.{name}")


def _propagate_hf(module: ModuleType) -> None:
    # diffusers.utils.logging and transformers.utils.logging add a stderr handler to their root
    # logger on first use and stop propagation; these calls keep them from doing either.
    module.disable_default_handler()
    module.enable_propagation()
    module.disable_progress_bar()


def _propagate_tree(*roots: str) -> Callable[[ModuleType], None]:
    """Drop the stream handlers a library put on its loggers (torch adds stderr handlers to
    dozens of them) and let their records propagate to the root logger."""

    def adopt(_module: ModuleType) -> None:
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger):
                continue
            if not any(name == root or name.startswith(f"{root}.") for root in roots):
                continue
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:  # not ours: we never add one there
                    logger.removeHandler(handler)
            logger.propagate = True

    return adopt


# The module whose import (ends with) a library's logging set-up, and what to do after it.
_LIBRARIES: dict[str, Callable[[ModuleType], None]] = {
    "diffusers.utils.logging": _propagate_hf,
    "transformers.utils.logging": _propagate_hf,
    "huggingface_hub.utils.logging": _propagate_tree("huggingface_hub"),
    "torch": _propagate_tree("torch"),
}


def _adopt_library_loggers() -> None:
    """Route the libraries' loggers into ours now if they are imported, else when they are:
    the service imports torch and diffusers lazily, on the first job."""
    pending = {}
    for name, adopt in _LIBRARIES.items():
        module = sys.modules.get(name)
        if module is not None:
            _run(adopt, module)
        else:
            pending[name] = adopt
    if pending and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(pending))


def _run(adopt: Callable[[ModuleType], None], module: ModuleType) -> None:
    try:
        adopt(module)
    except Exception:  # a library's changed internals must not stop it from importing
        get_logger("logs").warning("cannot route %s's logs", module.__name__, exc_info=True)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback once a module has been executed (imported), whoever imports it."""

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]]) -> None:
        self._callbacks = dict(callbacks)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        callback = self._callbacks.pop(fullname, None)
        if callback is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_adopt(module: ModuleType) -> None:
            exec_module(module)
            _run(callback, module)

        loader.exec_module = exec_then_adopt  # type: ignore[method-assign]
        return spec
