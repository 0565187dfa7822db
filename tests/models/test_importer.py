from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from assetbox.errors import ModelError, UnsupportedFormat
from assetbox.models.importer import import_upscaler
from assetbox.models.store import ModelStore
from tests.utils.models import write_tiny_compact


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def assert_unchanged(store: ModelStore, before: list) -> None:
    assert store.list() == before
    staging = store.root / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_import_ncnn_param(store: ModelStore, tmp_path: Path) -> None:
    param, _ = write_tiny_compact(tmp_path, fp16=True, name="My Tiny")
    manifest = import_upscaler(store, param)
    assert manifest.id == "my-tiny"
    assert (manifest.architecture, manifest.scale, manifest.engines) == (
        "Compact",
        2,
        ["torch", "ncnn"],
    )
    assert (store.path("my-tiny") / "model.param").is_file()


def test_import_safetensors_and_pth(store: ModelStore, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    param, _ = write_tiny_compact(tmp_path, fp16=False)
    first = import_upscaler(store, param, model_id="tiny")
    weights = store.path("tiny") / "model.safetensors"
    copy = tmp_path / "Tiny_Copy.safetensors"
    shutil.copyfile(weights, copy)
    second = import_upscaler(store, copy)
    assert (second.id, second.architecture, second.scale) == ("tiny_copy", "Compact", 2)
    assert second.engines == ["torch"]
    pth = tmp_path / "tiny.pth"
    torch.save({"params_ema": load_file(str(weights))}, pth)  # Real-ESRGAN's own wrapping
    third = import_upscaler(store, pth, model_id="tiny-pth")
    assert third.sha256 == first.sha256  # the same weights, whichever way they came


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/assetbox-pwned",))


def test_pickle_with_code_is_refused_and_store_unchanged(store: ModelStore, tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"body.0.weight": _Exploit()}))
    before = store.list()
    with pytest.raises(UnsupportedFormat, match="safe unpickler refused"):
        import_upscaler(store, path)
    assert not Path("/tmp/assetbox-pwned").exists()
    assert_unchanged(store, before)


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("model.onnx", b"\x08\x07", UnsupportedFormat, "must be an ncnn .param"),
        ("notes.txt", b"hello", UnsupportedFormat, "must be an ncnn .param"),
        ("broken.safetensors", b"\xff" * 64, UnsupportedFormat, "not a readable safetensors"),
        ("broken.pth", b"not a zip", UnsupportedFormat, "pth"),
        ("broken.param", b"7767517\n1 1\nFoo x 0 1 y\n", UnsupportedFormat, "Foo"),
    ],
)
def test_unsafe_or_unknown_files_are_refused(
    store: ModelStore, tmp_path: Path, name: str, content: bytes, error: type, match: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    if name.endswith(".param"):
        path.with_suffix(".bin").write_bytes(b"")
    before = store.list()
    with pytest.raises(error, match=match):
        import_upscaler(store, path)
    assert_unchanged(store, before)


def test_weights_of_no_known_upscaler_are_refused(store: ModelStore, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "classifier.safetensors"
    save_file({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, str(path))
    before = store.list()
    with pytest.raises(ModelError, match="recognises no upscaler"):
        import_upscaler(store, path)
    assert_unchanged(store, before)


def test_import_with_a_taken_id_keeps_the_first(store: ModelStore, tmp_path: Path) -> None:
    from assetbox.errors import Conflict

    param, _ = write_tiny_compact(tmp_path, fp16=False)
    first = import_upscaler(store, param, model_id="taken")
    other, _ = write_tiny_compact(tmp_path, fp16=False, seed=3, name="other")
    with pytest.raises(Conflict):
        import_upscaler(store, other, model_id="taken")
    assert store.get("taken") == first
