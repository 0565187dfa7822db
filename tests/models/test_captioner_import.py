"""Captioners (transformers folders) into the store: detection, the files kept, refusals."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from assetbox.cli import app
from assetbox.errors import InvalidInput, UnsupportedFormat
from assetbox.models.captioner_import import TRANSFORMERS_DIR
from assetbox.models.families import detect
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore, model_store, sha256_file, sha256_files
from assetbox.pipelines.caption import load_captioner
from assetbox.testing.tiny_models import CAPTIONER_FAMILIES, write_captioner

WRITTEN = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny-captioners")
    return {
        family: write_captioner(family, out / f"tiny-{family}") for family in CAPTIONER_FAMILIES
    }


@pytest.fixture
def qwen(written: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the tiny Qwen2.5-VL folder that a test may change."""
    return Path(shutil.copytree(written["qwen2_5_vl"], tmp_path / "qwen"))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def stored_files(store: ModelStore, model_id: str) -> set[str]:
    folder = store.path(model_id, "captioner") / TRANSFORMERS_DIR
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def assert_store_untouched(store: ModelStore) -> None:
    assert store.list() == []
    staging = store.root / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


@pytest.mark.parametrize("family", CAPTIONER_FAMILIES)
def test_models_import_takes_a_captioner_folder(written: dict[str, Path], family: str) -> None:
    result = CliRunner().invoke(app, ["models", "import", str(written[family])])
    assert result.exit_code == 0, result.output
    assert f"imported tiny-{family}: {family} captioner" in result.output
    store = model_store()
    manifest = store.get(f"tiny-{family}", "captioner")
    architecture = {
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen3_vl": "Qwen3VLForConditionalGeneration",
    }[family]
    assert (manifest.kind, manifest.family, manifest.layout) == (
        "captioner",
        family,
        "transformers",
    )
    assert manifest.architecture == architecture
    assert stored_files(store, manifest.id) == WRITTEN
    weights = store.path(manifest.id, "captioner") / TRANSFORMERS_DIR / "model.safetensors"
    assert manifest.sha256 == sha256_file(weights)
    assert store.find(manifest.id).kind == "captioner"
    assert [m.id for m in store.list("captioner")] == [manifest.id]


def test_only_the_files_loading_needs_are_copied(qwen: Path, store: ModelStore) -> None:
    (qwen / "README.md").write_text("# a model card")
    (qwen / ".gitattributes").write_text("*.safetensors filter=lfs")
    (qwen / "notes.txt").write_text("notes")
    (qwen / "video_preprocessor_config.json").write_text("{}")
    (qwen / "extra").mkdir()
    (qwen / "extra" / "model.safetensors").write_bytes((qwen / "model.safetensors").read_bytes())
    manifest = import_model(store, qwen, model_id="qwen")
    assert stored_files(store, manifest.id) == WRITTEN | {"video_preprocessor_config.json"}


def test_sharded_weights_are_imported_with_their_index(
    qwen: Path, store: ModelStore, written: dict[str, Path]
) -> None:
    state = load_file(str(qwen / "model.safetensors"))
    keys = sorted(state)
    halves = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    for name, names in halves.items():
        save_file({k: state[k] for k in names}, str(qwen / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, names in halves.items() for k in names}}
    (qwen / "model.safetensors.index.json").write_text(json.dumps(index))
    (qwen / "model.safetensors").unlink()
    manifest = import_model(store, qwen, model_id="sharded")
    files = stored_files(store, "sharded")
    assert files == (WRITTEN - {"model.safetensors"}) | set(halves) | {
        "model.safetensors.index.json"
    }
    folder = store.path("sharded", "captioner") / TRANSFORMERS_DIR
    assert manifest.sha256 == sha256_files([folder / name for name in sorted(halves)])
    # Every weight loads from the shards (one left out would be initialised at random).
    sharded = load_captioner(folder).model.state_dict()
    whole = load_captioner(written["qwen2_5_vl"]).model.state_dict()
    assert sharded.keys() == whole.keys()
    assert all(torch.equal(sharded[key], whole[key]) for key in whole)


def test_an_index_naming_a_missing_shard_is_refused(qwen: Path, store: ModelStore) -> None:
    (qwen / "model.safetensors").rename(qwen / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (qwen / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedFormat, match=re.escape("model-00002-of-00002.safetensors")):
        import_model(store, qwen)
    assert_store_untouched(store)


@pytest.mark.parametrize(
    "pickle", ["pytorch_model.bin", "model.pt", "weights.pth", "model.ckpt", "training_args.bin"]
)
def test_pickles_are_refused(qwen: Path, store: ModelStore, pickle: str) -> None:
    (qwen / pickle).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(InvalidInput, match="pickled weights") as error:
        import_model(store, qwen)
    assert pickle in error.value.message
    assert_store_untouched(store)


def test_a_folder_with_only_pickled_weights_is_refused(qwen: Path, store: ModelStore) -> None:
    (qwen / "model.safetensors").rename(qwen / "pytorch_model.bin")
    with pytest.raises(InvalidInput, match=r"pickled weights \(pytorch_model.bin\)"):
        import_model(store, qwen)
    assert_store_untouched(store)


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        (["model.safetensors"], "weights (model.safetensors"),
        (["tokenizer.json"], "a tokenizer (tokenizer.json, or vocab.json and merges.txt)"),
        (["preprocessor_config.json"], "an image processor config"),
        (["chat_template.jinja"], "a chat template"),
        (
            ["model.safetensors", "tokenizer.json", "chat_template.jinja"],
            "missing: weights (model.safetensors, or model.safetensors.index.json with its "
            "shards); a tokenizer (tokenizer.json, or vocab.json and merges.txt); a chat template",
        ),
    ],
)
def test_a_folder_missing_a_part_is_refused_naming_it(
    qwen: Path, store: ModelStore, remove: list[str], named: str
) -> None:
    for name in remove:
        (qwen / name).unlink()
    with pytest.raises(InvalidInput) as error:
        import_model(store, qwen)
    assert named in error.value.message
    assert error.value.field == "path"
    assert_store_untouched(store)


def test_the_chat_template_may_come_as_json_or_inside_tokenizer_config(
    qwen: Path, store: ModelStore
) -> None:
    template = (qwen / "chat_template.jinja").read_text()
    (qwen / "chat_template.jinja").unlink()
    (qwen / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    import_model(store, qwen, model_id="as-json")
    assert "chat_template.json" in stored_files(store, "as-json")

    (qwen / "chat_template.json").unlink()
    config = json.loads((qwen / "tokenizer_config.json").read_text())
    (qwen / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": template}))
    import_model(store, qwen, model_id="in-tokenizer")
    for model_id in ("as-json", "in-tokenizer"):
        loaded = load_captioner(store.path(model_id, "captioner") / TRANSFORMERS_DIR)
        assert loaded.processor.chat_template == template


def test_a_transformers_5_processor_config_stands_for_preprocessor_config(
    qwen: Path, store: ModelStore
) -> None:
    """transformers 5's processor save_pretrained writes processor_config.json with the image
    processor inside, and no preprocessor_config.json."""
    image_processor = json.loads((qwen / "preprocessor_config.json").read_text())
    (qwen / "preprocessor_config.json").unlink()
    image_processor["size"]["longest_edge"] = 123456  # so we can tell it was read
    processor = {"image_processor": image_processor, "processor_class": "Qwen2_5_VLProcessor"}
    (qwen / "processor_config.json").write_text(json.dumps(processor))
    import_model(store, qwen, model_id="v5")
    assert "processor_config.json" in stored_files(store, "v5")
    loaded = load_captioner(store.path("v5", "captioner") / TRANSFORMERS_DIR)
    assert loaded.processor.image_processor.size.longest_edge == 123456


def test_other_transformers_models_are_refused(qwen: Path, store: ModelStore) -> None:
    config = json.loads((qwen / "config.json").read_text())
    (qwen / "config.json").write_text(json.dumps(config | {"model_type": "llava"}))
    with pytest.raises(
        UnsupportedFormat, match="'llava' model; supported captioners: qwen2_5_vl, qwen3_vl"
    ):
        import_model(store, qwen)
    assert_store_untouched(store)


def test_a_captioner_where_another_kind_is_expected_is_refused(
    qwen: Path, store: ModelStore
) -> None:
    with pytest.raises(InvalidInput, match="`kind` is 'checkpoint' but the file is a captioner"):
        import_model(store, qwen, expected_kind="checkpoint")
    assert_store_untouched(store)
    assert import_model(store, qwen, expected_kind="captioner").kind == "captioner"


def test_detection_reads_the_config_only(qwen: Path) -> None:
    detected = detect(qwen)
    assert (detected.kind, detected.family, detected.layout, detected.architecture) == (
        "captioner",
        "qwen2_5_vl",
        "transformers",
        "Qwen2_5_VLForConditionalGeneration",
    )
    config = json.loads((qwen / "config.json").read_text())
    del config["architectures"]
    (qwen / "config.json").write_text(json.dumps(config))
    assert detect(qwen).architecture == "Qwen2_5_VLForConditionalGeneration"
