"""Adapters for foreign interfaces: the RunPod worker and the HTTP shapes of the services this
product replaces, one module per interface. Each only translates shapes to and from our jobs (the
same engine, kinds and store); none has logic of its own. The layer sits above `server | client`
(the server never imports it) and below `ui`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from assetbox.config import Settings


def mount(app: FastAPI, settings: Settings) -> None:
    """Serve the foreign HTTP shapes that ``ASSETBOX_COMPAT`` names beside our API in `app`
    (the service `create_app` built). Their routes sit behind the same auth middleware."""
    from importlib import import_module

    from assetbox.config import compat_names

    for name in compat_names(settings.compat):
        module = import_module(SHAPES[name])
        if hasattr(module, "mount"):  # flux's /health must answer before ours: it places it
            module.mount(app)
        else:
            app.include_router(module.router)


# The module of each shape (config.COMPAT_SHAPES); each has a `router`.
SHAPES = {
    "flux": "assetbox.compat.flux_service",
    "qwen_edit": "assetbox.compat.qwen_edit_service",
    "generation_api": "assetbox.compat.generation_api",
}
