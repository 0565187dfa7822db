"""IP-Adapters: detection and import with their image encoders, and applying one to tiny SDXL
and SD 1.5 pipelines (scale 0 is the bytes of no adapter, 0.6 changes them, nothing stays)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from assetbox.errors import ModelError, UnsupportedFormat
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.pipelines.diffusion import RunParams, device_and_dtype, load_checkpoint, run
from assetbox.pipelines.ip_adapter import IPAdapterUse, load_ip_adapter_weights
from assetbox.pipelines.upscale_tiled import TiledParams, TileInput, diffuse_tiles

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE = (np.random.default_rng(5).random((48, 40, 3)) * 255).astype(np.uint8)


def params(**changes) -> RunParams:
    base = {
        "prompt": "a photo of a cat",
        "negative_prompt": None,
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 5.0,
        "seeds": [3],
        "sampler": "euler",
    }
    return RunParams(**(base | changes))


@pytest.fixture(scope="module")
def stored(tiny_ip_adapters: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """Both tiny adapters imported (`ip-adapter-sd15`, `ip-adapter-sdxl`)."""
    store = ModelStore(tmp_path_factory.mktemp("ip-store") / "models")
    for family in ("sd15", "sdxl"):
        import_model(store, tiny_ip_adapters / f"ip-adapter-{family}")
    return store


def weights_of(store: ModelStore, family: str):
    device, dtype = device_and_dtype(family)  # type: ignore[arg-type]
    return load_ip_adapter_weights(store.path(f"ip-adapter-{family}", "ip_adapter"), device, dtype)


def test_import_finds_the_encoder_and_the_family(tiny_ip_adapters: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    folder = tiny_ip_adapters / "ip-adapter-sdxl"
    manifest = import_model(store, folder)  # a folder: its one adapter file and image_encoder/
    assert (manifest.kind, manifest.family, manifest.architecture) == (
        "ip_adapter",
        "sdxl",
        "IPAdapter",
    )
    stored = store.path(manifest.id, "ip_adapter")
    assert (stored / "model.safetensors").is_file()
    assert (stored / "image_encoder" / "config.json").is_file()
    # The file itself, as published beside its image_encoder/ folder.
    by_file = import_model(
        store, folder / "ip-adapter_tiny_sdxl.safetensors", expected_kind="ip_adapter"
    )
    assert by_file.id == "ip-adapter_tiny_sdxl" and by_file.sha256 == manifest.sha256


def test_unusable_adapters_are_refused(tiny_ip_adapters: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    source = tiny_ip_adapters / "ip-adapter-sd15" / "ip-adapter_tiny_sd15.safetensors"
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copyfile(source, lonely / source.name)
    with pytest.raises(UnsupportedFormat, match="image_encoder/ folder beside it"):
        import_model(store, lonely / source.name)

    # An encoder of another width than the adapter's projection takes.
    wrong = tmp_path / "wrong"
    shutil.copytree(source.parent, wrong)
    config = json.loads((wrong / "image_encoder" / "config.json").read_text())
    (wrong / "image_encoder" / "config.json").write_text(
        json.dumps(config | {"projection_dim": 16})
    )
    with pytest.raises(UnsupportedFormat, match="not the encoder it was trained with"):
        import_model(store, wrong)

    # FaceID takes face embeddings, not an image.
    faceid = tmp_path / "faceid"
    shutil.copytree(source.parent, faceid)
    state = load_file(str(source))
    state["image_proj.perceiver_resampler.proj_in.weight"] = state["image_proj.norm.weight"].clone()
    save_file(state, str(faceid / source.name), metadata={})
    with pytest.raises(UnsupportedFormat, match="FaceID"):
        import_model(store, faceid)
    assert store.list() == []


def test_sdxl_scale_zero_is_no_adapter_and_nothing_stays(
    tiny_ip_adapters: Path, stored: ModelStore
) -> None:
    model = load_checkpoint("sdxl", folder=tiny_ip_adapters / "tiny-sdxl")
    weights = weights_of(stored, "sdxl")
    plain = run(model, params())[0]
    zero = run(model, params(ip_adapter=IPAdapterUse(weights, IMAGE, 0.0)))[0]
    assert np.array_equal(zero, plain)
    steered = run(model, params(ip_adapter=IPAdapterUse(weights, IMAGE, 0.6)))[0]
    assert np.abs(steered.astype(int) - plain).max() > 8
    other = IMAGE[::-1].copy()
    assert not np.array_equal(
        run(model, params(ip_adapter=IPAdapterUse(weights, other, 0.6)))[0], steered
    )
    assert np.array_equal(run(model, params())[0], plain)  # unloaded: the bytes of before
    assert model.pipe.image_encoder is None
    # img2img (edit) and the tiled pipeline take it too, and leave nothing behind either.
    edit = params(image=plain, strength=0.75)
    edited = run(model, edit)[0]
    steered_edit = params(image=plain, strength=0.75, ip_adapter=IPAdapterUse(weights, IMAGE, 0.6))
    assert not np.array_equal(run(model, steered_edit)[0], edited)
    tile = TileInput(pixels=plain, prompt="a cat", x=0, y=0, seed=1)
    tiled = TiledParams(canvas=(64, 64), steps=4, strength=0.5, sampler="euler", noise_seed=2)
    before = diffuse_tiles(model, [tile], tiled)[0]
    with_adapter = TiledParams(**vars(tiled) | {"ip_adapter": IPAdapterUse(weights, IMAGE, 0.6)})
    assert not np.array_equal(diffuse_tiles(model, [tile], with_adapter)[0], before)
    assert np.array_equal(diffuse_tiles(model, [tile], tiled)[0], before)
    assert np.array_equal(run(model, edit)[0], edited)


def test_an_adapter_of_another_family_fails_and_leaves_the_model_as_it_was(
    tiny_ip_adapters: Path, stored: ModelStore
) -> None:
    model = load_checkpoint("sd15", folder=tiny_ip_adapters / "tiny-sd15")
    sdxl = weights_of(stored, "sdxl")
    plain = run(model, params())[0]
    with pytest.raises(ModelError, match="IP-Adapter"):
        run(model, params(ip_adapter=IPAdapterUse(sdxl, IMAGE, 0.6)))
    assert np.array_equal(run(model, params())[0], plain)
