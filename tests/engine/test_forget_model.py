"""A model deleted from the store leaves every worker's cache, whichever kind loaded it."""

from __future__ import annotations

from assetbox.engine.executors import forget_model
from assetbox.models.cache import ModelCache


def test_forget_model_drops_every_key_of_that_id_and_nothing_else() -> None:
    cache = ModelCache(1 << 30)
    keys = [
        "realesrgan-x4plus:0123456789ab:torch",  # an upscaler (the upscale kind)
        "checkpoint:sd:0123456789ab",
        "controlnet:sd:0123456789ab",  # same id as the checkpoint: both go
        "captioner:qwen:0123456789ab",
        "captioner:qwen-7b:0123456789ab",  # an id that starts like another one stays
    ]
    for key in keys:
        with cache.lease(key, object, estimate=1):
            pass
    forget_model(cache, "qwen")
    forget_model(cache, "sd")
    assert cache.keys() == [keys[0], keys[4]]
    forget_model(cache, "realesrgan-x4plus")
    assert cache.keys() == [keys[4]]
