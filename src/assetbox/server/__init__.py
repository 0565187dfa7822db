"""The HTTP API (FastAPI): validates, calls the engine, maps errors. No business logic here."""

from assetbox.server.app import create_app

__all__ = ["create_app"]
