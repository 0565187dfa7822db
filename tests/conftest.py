from __future__ import annotations

import pytest

from assetbox.config import get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Each test reads settings anew, with its own data directory."""
    monkeypatch.setenv("ASSETBOX_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def builtin_store(tmp_path_factory: pytest.TempPathFactory):
    """A model store with the five built-in upscalers converted (once per test session)."""
    from assetbox.models.builtin import ensure_builtin_upscalers
    from assetbox.models.store import ModelStore

    data_dir = tmp_path_factory.mktemp("builtin-data")
    store = ModelStore(data_dir / "models")
    ensure_builtin_upscalers(store)
    return store


@pytest.fixture
def builtin_data_dir(builtin_store, monkeypatch: pytest.MonkeyPatch):
    """Point ASSETBOX_DATA_DIR at the data directory that holds the built-in models."""
    monkeypatch.setenv("ASSETBOX_DATA_DIR", str(builtin_store.root.parent))
    get_settings.cache_clear()
    return builtin_store.root.parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Tiny random sd15, sdxl and flux1 models (checkpoint folders, single files, ControlNets,
    LoRAs `<family>-a` and `<family>-b`), written once per session."""
    from assetbox.testing.tiny_models import FAMILIES, write

    out = tmp_path_factory.mktemp("tiny-models")
    for family in FAMILIES:
        write(family, out, controlnet=True, loras=(f"{family}-a", f"{family}-b"))
    return out


@pytest.fixture(scope="session")
def tiny_captioners(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny random captioners by family (`tiny-qwen2_5_vl`, `tiny-qwen3_vl` transformers
    folders), written once per session."""
    from assetbox.testing.tiny_models import CAPTIONER_FAMILIES, write_captioner

    out = tmp_path_factory.mktemp("tiny-captioners")
    return {f: write_captioner(f, out / f"tiny-{f}") for f in CAPTIONER_FAMILIES}


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_ip_adapters(tmp_path_factory: pytest.TempPathFactory):
    """Tiny sd15 and sdxl checkpoint folders (`tiny-<family>/`) and an IP-Adapter for each
    (`ip-adapter-<family>/`: the adapter file and its `image_encoder/`), written once per
    session; apart from `tiny_models`, so the IP-Adapter tests need no other family."""
    from assetbox.testing.tiny_ip_adapter import write_ip_adapter
    from assetbox.testing.tiny_models import build_pipeline

    out = tmp_path_factory.mktemp("tiny-ip-adapters")
    for family in ("sd15", "sdxl"):
        pipe = build_pipeline(family)
        pipe.save_pretrained(out / f"tiny-{family}")
        write_ip_adapter(family, out / f"ip-adapter-{family}", unet=pipe.unet)
    return out
