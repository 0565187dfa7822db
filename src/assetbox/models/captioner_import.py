"""Importing captioners (vision-language models, transformers folders) into the store.

A captioner folder is what ``save_pretrained`` writes and what the hub holds for Qwen2.5-VL and
Qwen3-VL. Only the files that loading needs are copied into the store's ``transformers/``:

- ``config.json`` (its ``model_type`` says the family);
- the weights: ``model.safetensors``, or the shards listed by ``model.safetensors.index.json``;
- the tokenizer: ``tokenizer.json``, or ``vocab.json`` with ``merges.txt`` (plus
  ``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json`` when present);
- the image processor: ``preprocessor_config.json``, or the ``processor_config.json`` that
  transformers 5 writes (an ``image_processor`` entry inside);
- the chat template: ``chat_template.jinja``, ``chat_template.json``, or ``chat_template`` in
  ``tokenizer_config.json``;
- when present: ``generation_config.json`` (the model's sampling defaults) and
  ``video_preprocessor_config.json`` (unused; kept so the folder loads with AutoProcessor).

Pickled weights are refused (`assetbox.models.families.detect`); a folder that lacks one of the
required parts is refused with a message naming every missing part; a refused import leaves the
store as it was (the folder is built under ``.staging`` and renamed into place).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from assetbox.errors import UnsupportedFormat
from assetbox.models.families import Detected, detect
from assetbox.models.store import (
    ModelManifest,
    ModelStore,
    default_id,
    now,
    sha256_files,
    validate_model_id,
)

Progress = Callable[[str], None]
TRANSFORMERS_DIR = "transformers"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
_TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_OPTIONAL = ("generation_config.json", "video_preprocessor_config.json")


def captioner_files(folder: Path, *, field: str = "path") -> tuple[list[str], list[str]]:
    """The files of a captioner folder to copy (relative names) and, of those, the weights.

    Raises:
        UnsupportedFormat: a required part is missing (all missing parts are named) or the
            weight index is malformed.
    """
    missing: list[str] = []
    files = ["config.json"]

    weights: list[str] = []
    if (folder / WEIGHTS_INDEX).is_file():
        weights = _shards(folder, field)
        absent = [name for name in weights if not (folder / name).is_file()]
        if absent:
            missing.append(f"the weight shards {', '.join(absent[:3])} (named in {WEIGHTS_INDEX})")
        files.append(WEIGHTS_INDEX)
    elif (folder / WEIGHTS_FILE).is_file():
        weights = [WEIGHTS_FILE]
    else:
        missing.append(f"weights ({WEIGHTS_FILE}, or {WEIGHTS_INDEX} with its shards)")
    files += weights

    if (folder / "tokenizer.json").is_file():
        files.append("tokenizer.json")
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        files += ["vocab.json", "merges.txt"]
    elif "tokenizer.json" not in files:
        missing.append("a tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    files += [name for name in _TOKENIZER_EXTRAS if (folder / name).is_file()]

    if (folder / "preprocessor_config.json").is_file():
        files.append("preprocessor_config.json")
    if _has_image_processor(folder / "processor_config.json"):
        files.append("processor_config.json")
    elif "preprocessor_config.json" not in files:
        missing.append(
            "an image processor config (preprocessor_config.json, or processor_config.json "
            "with an image_processor entry)"
        )

    templates = [n for n in ("chat_template.jinja", "chat_template.json") if (folder / n).is_file()]
    files += templates
    if not templates and not _tokenizer_has_template(folder / "tokenizer_config.json"):
        missing.append(
            "a chat template (chat_template.jinja, chat_template.json, or chat_template in "
            "tokenizer_config.json)"
        )

    files += [name for name in _OPTIONAL if (folder / name).is_file()]
    if missing:
        raise UnsupportedFormat(
            f"{folder.name} is not a complete captioner folder; missing: {'; '.join(missing)}",
            field=field,
        )
    return files, weights


def _shards(folder: Path, field: str) -> list[str]:
    try:
        index = json.loads((folder / WEIGHTS_INDEX).read_text())
        names = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnsupportedFormat(
            f"{WEIGHTS_INDEX} of {folder.name} is not a weight index: {exc}", field=field
        ) from exc
    for name in names:
        if not (isinstance(name, str) and name.endswith(".safetensors") and "/" not in name):
            raise UnsupportedFormat(
                f"{WEIGHTS_INDEX} of {folder.name} names {name!r}, not a .safetensors file "
                "beside it",
                field=field,
            )
    return names


def _read_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _has_image_processor(path: Path) -> bool:
    return path.is_file() and isinstance(_read_object(path).get("image_processor"), dict)


def _tokenizer_has_template(path: Path) -> bool:
    return path.is_file() and bool(_read_object(path).get("chat_template"))


def import_captioner(
    store: ModelStore,
    path: Path,
    *,
    model_id: str | None = None,
    source: str | None = None,
    progress: Progress | None = None,
    detected: Detected | None = None,
) -> ModelManifest:
    """Import a captioner folder (see the module doc); returns its manifest.

    Raises:
        InvalidInput: a bad id.
        UnsupportedFormat: not a supported captioner, pickled weights, or missing parts.
        Conflict: the id is taken.
    """
    say = progress or (lambda message: None)
    path = Path(path)
    detected = detected or detect(path)
    if detected.kind != "captioner":
        raise UnsupportedFormat(f"{path.name} is a {detected.kind}, not a captioner", field="path")
    files, weights = captioner_files(path)
    model_id = validate_model_id(model_id or default_id(path))
    with store.lock(), store.staging() as staged:
        say(f"importing {path.name} ({detected.family} captioner) as {model_id}")
        target = staged / TRANSFORMERS_DIR
        target.mkdir()
        for name in files:
            shutil.copyfile(path / name, target / name)
        manifest = ModelManifest(
            id=model_id,
            kind="captioner",
            architecture=detected.architecture,
            family=detected.family,
            layout="transformers",
            source=source or f"import of {path.name}",
            sha256=sha256_files([target / name for name in sorted(weights)]),
            size=sum(p.stat().st_size for p in staged.rglob("*") if p.is_file()),
            added=now(),
        )
        return store.commit(staged, manifest)
