"""Captions of real photos by a real Qwen2.5-VL (3B or 7B Instruct).

Skipped unless ``ASSETBOX_REAL_WEIGHTS`` names a folder holding a complete Qwen2.5-VL
transformers folder (the hub's ``Qwen/Qwen2.5-VL-3B-Instruct`` or ``-7B-Instruct`` as
downloaded), at most two levels down, e.g. ``$ASSETBOX_REAL_WEIGHTS/Qwen2.5-VL-3B-Instruct/``.
The folder goes through the real import and the real loader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from assetbox.errors import InvalidInput
from assetbox.models.captioner_import import TRANSFORMERS_DIR, captioner_files
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from tests.utils.images import photo


def qwen2_5_vl_folder() -> Path | None:
    """The first complete Qwen2.5-VL folder under ASSETBOX_REAL_WEIGHTS (None: none there).
    Qwen-Image's text encoder has a qwen2_5_vl config too, but no tokenizer or processor beside
    it: `captioner_files` tells them apart."""
    root = os.environ.get("ASSETBOX_REAL_WEIGHTS")
    if not root:
        return None
    for pattern in ("config.json", "*/config.json", "*/*/config.json"):
        for config in sorted(Path(root).glob(pattern)):
            try:
                if json.loads(config.read_text()).get("model_type") != "qwen2_5_vl":
                    continue
                captioner_files(config.parent)
            except (OSError, ValueError, InvalidInput):
                continue
            return config.parent
    return None


FOLDER = qwen2_5_vl_folder()
pytestmark = [
    pytest.mark.weights,
    pytest.mark.skipif(
        FOLDER is None, reason="needs a Qwen2.5-VL folder under ASSETBOX_REAL_WEIGHTS"
    ),
]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory):
    from assetbox.pipelines.caption import load_captioner

    assert FOLDER is not None
    store = ModelStore(tmp_path_factory.mktemp("real-captioner") / "models")
    manifest = import_model(store, FOLDER, model_id="qwen2.5-vl")
    assert (manifest.kind, manifest.family) == ("captioner", "qwen2_5_vl")
    return load_captioner(store.path(manifest.id, "captioner") / TRANSFORMERS_DIR)


def test_the_astronaut_is_captioned_as_a_diffusion_prompt(captioner) -> None:
    from assetbox.pipelines.caption import caption

    (result,) = caption(captioner, [photo("astronaut")])
    text = result.text.lower()
    assert any(word in text for word in ("astronaut", "space suit", "spacesuit")), result.raw
    assert "\n" not in result.text
    assert not text.startswith(("the image", "this image", "in this image", "this is")), result.raw
    assert 3 <= len(text.split()) <= 80
    assert "," in text  # comma-separated phrases, as the system prompt asks


def test_a_batch_of_photos_gets_a_caption_each(captioner) -> None:
    from assetbox.pipelines.caption import caption

    names = ["chelsea", "coffee", "astronaut"]
    captions = caption(captioner, [photo(name) for name in names])
    texts = [c.text.lower() for c in captions]
    assert any(word in texts[0] for word in ("cat", "kitten")), captions[0].raw
    assert any(word in texts[1] for word in ("coffee", "cup", "mug")), captions[1].raw
    assert any(word in texts[2] for word in ("astronaut", "space suit", "spacesuit"))
    assert all(c.tokens <= 77 and c.text for c in captions)
