"""The flow every job route shares: read images, store them, submit, wait as asked, answer."""

from __future__ import annotations

import json
import types
from typing import Any, TypeVar, Union, get_args, get_origin

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from assetbox.engine.blobs import with_images
from assetbox.engine.engine import Engine
from assetbox.engine.inputs import fetch_url
from assetbox.errors import InvalidInput
from assetbox.imaging import decode_base64, probe_image
from assetbox.server.auth import CALLER
from assetbox.server.present import prefer_wait, present
from assetbox.server.schemas import JobCreate, JobPublic

_Body = TypeVar("_Body", bound=BaseModel)


_LOCATION = {
    "Location": {
        "description": "the job's URL, `/v1/jobs/{id}`",
        "schema": {"type": "string"},
    }
}
# A form part that is not a file: the placeholder an image field holds until its blob is stored.
_FILE_PLACEHOLDER = "-"


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its ``$defs`` written in place: a schema placed by hand in
    the OpenAPI (``openapi_extra``) cannot refer to ``#/$defs/...`` (ReDoc fails on it, Swagger
    shows "string" for such fields), and FastAPI only moves the defs of models it sees itself
    into ``components``. Our request models nest no model in itself, so this ends."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return resolve(defs[ref.removeprefix("#/$defs/")]) | rest
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def job_route(schema: type[BaseModel], **extra_content: Any) -> dict[str, Any]:
    """The route options of a job-creating POST: 202 with the job, 200 when it finished within
    ``Prefer: wait=N`` (both with `Location`), and the request body's schema in the OpenAPI (the
    body is read by hand, so that base64, URLs and multipart all reach one validation)."""
    return {
        "status_code": 202,
        "response_model": JobPublic,
        "response_model_exclude_none": True,
        "responses": {
            200: {
                "model": JobPublic,
                "description": "finished within `Prefer: wait=N`",
                "headers": _LOCATION,
            },
            202: {"description": "queued (or running)", "headers": _LOCATION},
        },
        "openapi_extra": {
            "requestBody": {
                "content": {
                    "application/json": {"schema": inline_schema(schema)},
                    **extra_content,
                },
                "required": True,
            }
        },
    }


async def image_bytes(request: Request, value: str, field: str) -> bytes:
    """An image field's bytes: fetched when it is an http(s) URL, else decoded base64."""
    if "://" in value[:16]:
        settings = request.app.state.settings
        return await run_in_threadpool(fetch_url, value, settings, field=field)
    return decode_base64(value, field=field)


def parse_json(model: type[_Body], raw: bytes) -> _Body:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, default_field="body") from exc


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


def _shape(annotation: Any) -> tuple[str, Any]:
    """``("list", item)``, ``("object", None)`` or ``("scalar", None)`` for a field's type."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _shape(args[0])
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (Any,)
        return "list", item
    if get_origin(annotation) is dict or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    ):
        return "object", None
    return "scalar", None


def _json_part(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"`{name}` must be JSON text but is {text[:40]!r}", field=name) from exc


def _form_value(model: type[BaseModel], name: str, values: list[str]) -> Any:
    field = model.model_fields.get(name)
    shape, item = _shape(field.annotation) if field is not None else ("scalar", None)
    if shape == "list":
        if len(values) == 1 and values[0].lstrip().startswith("["):
            return _json_part(name, values[0])
        # Repeated parts, one item each (a plain single string is a list of one).
        return [_json_part(name, v) if _shape(item)[0] == "object" else v for v in values]
    if len(values) > 1:
        raise InvalidInput(f"`{name}` must be given once but is {len(values)} times", field=name)
    return _json_part(name, values[0]) if shape == "object" else values[0]


async def read_form(
    request: Request, model: type[_Body], files: dict[str, tuple[str, ...]]
) -> tuple[_Body, dict[str, bytes]]:
    """A multipart body: file parts for the image fields, every other field a text part.

    `files` maps an image field (``controlnet.image``) to the part names it may come as. Scalar
    fields are plain text; list and object fields (``prompts``, ``loras``, ``controlnet``) are
    JSON text, and a list may also come as repeated parts, one item each. An image field may also
    be a text part (base64 or a URL), as in JSON. A list of images (``images``) comes as repeated
    parts, each a file or text, in order; a field of list items (``references.N.image``, N for
    the index) as a file part per item, beside its list as JSON text. Returns the validated body,
    whose file-borne image fields hold a placeholder, and the files' bytes by field
    (``images.1``, ``references.0.image``).

    Raises:
        InvalidInput: a file where text belongs, bad JSON text, or an invalid field (naming it).
    """
    form = await request.form()
    names = {part: field for field, parts in files.items() for part in parts}
    data: dict[str, Any] = {}
    uploads: dict[str, bytes] = {}
    placed: set[str] = set()  # uploads already in `data` (items of an image list)
    for key in dict.fromkeys(form.keys()):
        values = form.getlist(key)
        field = _image_field(key, names)
        if field is not None and _shape(_annotation(model, field))[0] == "list":
            if any(isinstance(v, UploadFile) for v in values):
                items = []
                for n, value in enumerate(values):
                    if isinstance(value, UploadFile):
                        uploads[f"{field}.{n}"] = await value.read()
                        placed.add(f"{field}.{n}")
                        value = _FILE_PLACEHOLDER
                    items.append(value)
                data[field] = items
                continue
        elif field is not None and isinstance(values[0], UploadFile):
            if len(values) > 1 or field in uploads:
                raise InvalidInput(f"`{field}` must be one file", field=field)
            uploads[field] = await values[0].read()
            continue
        if any(isinstance(v, UploadFile) for v in values):
            raise InvalidInput(f"`{key}` must be a text part, not a file", field=key)
        texts = [v for v in values if isinstance(v, str) and v != ""]  # empty: not given
        if texts:
            data[field or key] = _form_value(model, field or key, texts)
    for field in uploads.keys() - placed:
        _place(data, field, _FILE_PLACEHOLDER)
    try:
        body = model.model_validate(_nest(data))
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, default_field="body") from exc
    return body, uploads


def _annotation(model: type[BaseModel], name: str) -> Any:
    field = model.model_fields.get(name)
    return field.annotation if field is not None else None


def _image_field(key: str, names: dict[str, str]) -> str | None:
    """The image field a part named `key` fills: its own field, or for an item's part
    (``references.3.image``, listed as ``references.N.image``) the part's own name."""
    if key in names:
        return names[key]
    template = ".".join("N" if part.isdigit() else part for part in key.split("."))
    return key if template != key and template in names else None


def _place(data: dict[str, Any], field: str, value: Any) -> None:
    """Put `value` at the dotted `field` of `data`: into an object (``controlnet.image``) or an
    item of a list (``references.0.image``) that its JSON text part gave."""
    *parents, name = field.split(".")
    target: Any = data
    for depth, parent in enumerate(parents):
        if isinstance(target, list) and parent.isdigit() and int(parent) < len(target):
            target = target[int(parent)]
        elif isinstance(target, dict):
            target = target.get(parent)
        else:
            target = None
        if not isinstance(target, dict | list):
            missing = ".".join(parents[: depth + 1])
            raise InvalidInput(
                f"`{field}` was sent without `{missing}` (JSON text "
                + ("naming its model)" if depth == 0 else "with that item)"),
                field=missing,
            )
    if not isinstance(target, dict):
        raise InvalidInput(f"`{field}` names no object field", field=field)
    target[name] = value


def _nest(data: dict[str, Any]) -> dict[str, Any]:
    # A text part named "controlnet.image" (base64 or a URL) goes into the controlnet object.
    nested = {k: v for k, v in data.items() if "." not in k}
    for key, value in data.items():
        if "." in key:
            _place(nested, key, value)
    return nested


async def image_inputs(
    request: Request, body: BaseModel, uploads: dict[str, bytes], fields: tuple[str, ...]
) -> dict[str, bytes]:
    """The bytes of each image field that is set: an uploaded file's, or the field's base64
    or URL resolved."""
    images = {}
    for field in fields:
        if field in uploads:
            images[field] = uploads[field]
            continue
        value: Any = body
        for name in field.split("."):
            value = getattr(value, name, None) if value is not None else None
        if value is not None:
            images[field] = await image_bytes(request, value, field)
    return images


def multipart_schema(model: type[BaseModel], files: dict[str, tuple[str, ...]]) -> dict:
    """The OpenAPI ``multipart/form-data`` body that `read_form` reads for `model`."""
    source = model.model_json_schema()
    properties: dict[str, Any] = {}
    for name, prop in source.get("properties", {}).items():
        field = model.model_fields[name]
        shape, item = _shape(field.annotation)
        text = {"type": "string", "title": prop.get("title", name)}
        if name in files:
            continue
        if shape == "list" and _shape(item)[0] == "scalar":
            properties[name] = {
                "type": "array",
                "items": {"type": "string"},
                "description": f"{prop.get('description', '')} Repeated parts, one item each, "
                "or one part of JSON text (a JSON array).".strip(),
            }
        elif shape != "scalar" or "$ref" in json.dumps(prop):
            properties[name] = text | {
                "description": f"{prop.get('description', '')} JSON text, as in the JSON "
                "body.".strip()
            }
        else:
            properties[name] = prop
    required = []
    for field, parts in files.items():
        binary = {"type": "string", "format": "binary"}
        if ".N." in field:  # an item's image: told in its list's description, no fixed name
            parent, _, name = field.partition(".N.")
            properties[parent]["description"] += (
                f" Each item's `{name}` may instead be a file part named `{parent}.N.{name}` (N: "
                f"the item's index), left out of the JSON text."
            )
            continue
        for part in parts:
            if field in model.model_fields and _shape(_annotation(model, field))[0] == "list":
                properties[part] = {
                    "type": "array",
                    "items": binary,
                    "description": f"`{field}`: repeated parts, one image each, in order: a "
                    "file (or base64/URL text)",
                }
                continue
            properties[part] = binary | {
                "description": f"`{field}` as a file (or give it as base64/URL text)",
            }
        if field in source.get("required", []):
            required.append(parts[0])
    required += [r for r in source.get("required", []) if r not in files]
    return {"schema": {"type": "object", "properties": properties, "required": required}}


async def submit_job(
    engine: Engine,
    kind: str,
    body: JobCreate,
    request: dict,
    images: dict[str, bytes],
    prefer: str | None,
    idempotency_key: str | None,
) -> JSONResponse:
    """Store the images as blobs (checked first: bombs and bad files are refused before
    anything is queued), submit, wait as `Prefer: wait=N` asks, answer 200 or 202."""
    for field, data in images.items():
        probe_image(data, field=field)

    caller = CALLER.get()

    def submit():
        blobs = {field: engine.put_blob(data) for field, data in images.items()}
        return engine.submit(
            kind,
            with_images(request, blobs),
            idempotency_key=idempotency_key,
            delivery=body.delivery(),
            priority=body.priority,
            api_key=caller,
        )

    job = await run_in_threadpool(submit)
    wait_s = prefer_wait(prefer)
    if wait_s:
        job = await run_in_threadpool(engine.wait, job.id, wait_s)
    public = present(job, engine, b64=body.response_format == "b64")
    status = 200 if job.status.is_terminal() else 202
    return JSONResponse(
        public.model_dump(mode="json", exclude_none=True),
        status_code=status,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )
