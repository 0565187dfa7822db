"""Importing diffusion models into the store: checkpoints, ControlNets and LoRAs.

A diffusers folder is copied (its JSON configs, tokenizer files and ``.safetensors`` weights;
nothing else). A single-file checkpoint is copied with the diffusers config folder it loads with:
the one it carries in its metadata (``assetbox.diffusers_config``, as the tiny test models do),
else the family's config shipped with assetbox plus CLIP tokenizer files derived from CLIP's merge
list. So loading never reaches a hub. Pickles are refused; a refused import leaves the store as it
was.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path, PurePosixPath

from assetbox.errors import UnsupportedFormat
from assetbox.models.families import CONFIG_METADATA_KEY, Detected, detect, read_header
from assetbox.models.store import (
    Family,
    ModelManifest,
    ModelStore,
    default_id,
    now,
    sha256_files,
    validate_model_id,
)
from assetbox.models.tokenizers import write_clip_tokenizer

Progress = Callable[[str], None]
DIFFUSERS_DIR = "diffusers"
CONFIG_DIR = "config"
WEIGHTS_FILE = "model.safetensors"
# What a diffusers folder may bring into the store: configs, tokenizers (and the chat templates of
# the Qwen-based text encoders and processors), safe weights.
_KEEP = (".json", ".safetensors", ".txt", ".model", ".jinja")


def import_diffusion(
    store: ModelStore,
    path: Path,
    *,
    model_id: str | None = None,
    source: str | None = None,
    progress: Progress | None = None,
    detected: Detected | None = None,
) -> ModelManifest:
    """Import a checkpoint, ControlNet or LoRA; returns its manifest.

    Raises:
        InvalidInput: a bad id.
        UnsupportedFormat: not a supported diffusion model (the reason is in the message).
        Conflict: the id is taken.
    """
    say = progress or (lambda message: None)
    path = Path(path)
    detected = detected or detect(path)
    model_id = validate_model_id(model_id or default_id(path))
    with store.lock(), store.staging() as staged:
        say(f"importing {path.name} ({detected.family} {detected.kind}) as {model_id}")
        if detected.layout == "diffusers":
            target = staged / DIFFUSERS_DIR
            shutil.copytree(
                path,
                target,
                ignore=lambda folder, names: [
                    n
                    for n in names
                    if not (Path(folder, n).is_dir() or n.lower().endswith(_KEEP))
                    or n.startswith(".")
                ],
            )
            weights = sorted(target.rglob("*.safetensors"))
        else:
            shutil.copyfile(path, staged / WEIGHTS_FILE)
            weights = [staged / WEIGHTS_FILE]
            if detected.kind == "checkpoint":
                write_config(staged / CONFIG_DIR, staged / WEIGHTS_FILE, detected.family)
        manifest = ModelManifest(
            id=model_id,
            kind=detected.kind,
            architecture=detected.architecture,
            family=detected.family,
            layout=detected.layout if detected.kind != "lora" else None,
            distilled=detected.distilled,
            speed_steps=detected.speed_steps,
            source=source or f"import of {path.name}",
            sha256=sha256_files(weights),
            size=sum(p.stat().st_size for p in staged.rglob("*") if p.is_file()),
            added=now(),
        )
        return store.commit(staged, manifest)


def write_config(folder: Path, weights: Path, family: Family) -> None:
    """The diffusers config folder a single-file checkpoint loads with (see the module doc)."""
    embedded = read_header(weights).metadata.get(CONFIG_METADATA_KEY)
    if embedded is not None:
        _write_embedded(folder, embedded)
        return
    shipped = resources.files("assetbox.models") / "configs" / family
    if not shipped.is_dir():
        raise UnsupportedFormat(
            f"no shipped config for single-file {family} checkpoints", field="path"
        )
    with resources.as_file(shipped) as source:
        shutil.copytree(source, folder)
    write_clip_tokenizer(folder / "tokenizer")
    if (folder / "text_encoder_2").is_dir():
        write_clip_tokenizer(folder / "tokenizer_2", pad_token="!")


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_LIBRARIES = ("diffusers", "transformers")


def _write_embedded(folder: Path, embedded: str) -> None:
    """Write a config folder carried in metadata: {relative path: text}. Names are plain
    relative paths of .json/.txt files, and model_index.json may only name components of
    diffusers and transformers (diffusers imports the library a component names)."""

    def refuse(why: str) -> UnsupportedFormat:
        return UnsupportedFormat(f"the checkpoint's {CONFIG_METADATA_KEY} {why}", field="path")

    try:
        files = json.loads(embedded)
    except ValueError as exc:
        raise refuse("metadata is not JSON") from exc
    if not isinstance(files, dict) or "model_index.json" not in files:
        raise refuse("metadata is not an object with a model_index.json")
    for name, text in files.items():
        parts = name.split("/")
        if (
            not all(_NAME.match(part) for part in parts)
            or ".." in parts
            or not name.endswith((".json", ".txt"))
            or not isinstance(text, str)
        ):
            raise refuse(f"names a file {name!r} that may not be written")
    try:
        index = json.loads(files["model_index.json"])
        components = {k: v for k, v in index.items() if not k.startswith("_")}
    except (ValueError, AttributeError) as exc:
        raise refuse("has a model_index.json that is no JSON object") from exc
    for component, value in components.items():
        if isinstance(value, list) and value[:1] not in ([None], *([lib] for lib in _LIBRARIES)):
            raise refuse(f"names {component} from {value[0]!r}, not diffusers or transformers")
    try:
        for name, text in files.items():
            target = folder.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    except OSError as exc:  # e.g. a file and a folder of the same name
        raise refuse(f"cannot be written as files: {exc}") from exc
