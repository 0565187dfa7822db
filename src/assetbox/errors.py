"""The error hierarchy. Every error the library raises on purpose is an `AssetboxError`.

Errors carry no HTTP: the server maps each class to a status code in one place. `code` is the
stable, machine-readable name that ends up in a job's `{code, message}`.
"""

from __future__ import annotations


class AssetboxError(Exception):
    """Base of every deliberate error in assetbox."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # type: ignore[override]
        # Errors cross process boundaries (worker processes, Ray): keyword-only constructor
        # arguments (`field`, `retry_after_s`) would not survive Exception's default pickling.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[AssetboxError], message: str, state: dict) -> AssetboxError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidInput(AssetboxError):
    """The request or an input file is wrong; retrying the same input cannot succeed.

    `field` names what was wrong (a request field such as ``image`` or ``overlap``) when known.
    """

    code = "invalid_input"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @classmethod
    def from_validation(cls, exc: Exception, *, default_field: str = "request") -> InvalidInput:
        """The first problem of a pydantic ``ValidationError``, naming its field."""
        first = exc.errors()[0]  # type: ignore[attr-defined]
        field = ".".join(str(p) for p in first["loc"]) or default_field
        return cls(f"`{field}`: {first['msg']}", field=field)


class ImageTooLarge(InvalidInput):
    """An image's pixel count exceeds the configured limit (decompression-bomb guard)."""

    code = "image_too_large"


class UnsupportedFormat(InvalidInput):
    """An image or model file is in a format assetbox does not read."""

    code = "unsupported_format"


class NotFound(AssetboxError):
    """A job, model or output with that id does not exist; `field` names the request field that
    referred to it (e.g. ``model`` or ``loras.0.name``) when known."""

    code = "not_found"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Conflict(AssetboxError):
    """The request conflicts with the current state (e.g. an idempotency key reused differently)."""

    code = "conflict"


class QueueFull(AssetboxError):
    """Too many queued jobs; `retry_after_s` estimates when a slot frees up."""

    code = "queue_full"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Cancelled(AssetboxError):
    """The job was cancelled while this work ran."""

    code = "cancelled"


class ModelError(AssetboxError):
    """A model could not be detected, loaded or run."""

    code = "model_error"


class OutOfMemory(AssetboxError):
    """The device ran out of memory; the work may succeed with smaller tiles or batches."""

    code = "out_of_memory"


class ContentBlocked(AssetboxError):
    """An output was withheld by the content check (``ASSETBOX_NSFW=block``)."""

    code = "nsfw_blocked"


__all__ = [
    "AssetboxError",
    "Cancelled",
    "Conflict",
    "ContentBlocked",
    "ImageTooLarge",
    "InvalidInput",
    "ModelError",
    "NotFound",
    "OutOfMemory",
    "QueueFull",
    "UnsupportedFormat",
]
