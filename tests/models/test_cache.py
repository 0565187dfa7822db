"""The model cache: LRU under a byte budget, models in use stay, eviction frees memory."""

from __future__ import annotations

import threading
import weakref
from typing import ClassVar

import pytest
import torch

from assetbox.errors import InvalidInput
from assetbox.models.cache import ModelCache, estimate_bytes


class Fake:
    """A 'model' of a given size that counts how often it was loaded."""

    loads: ClassVar[dict[str, int]] = {}

    def __init__(self, name: str, nbytes: int) -> None:
        self.name = name
        self.nbytes = nbytes
        Fake.loads[name] = Fake.loads.get(name, 0) + 1


def loader(name: str, size: int = 100):
    return lambda: Fake(name, size)


@pytest.fixture(autouse=True)
def _reset_loads():
    Fake.loads = {}


def use(cache: ModelCache, name: str, size: int = 100) -> Fake:
    with cache.lease(name, loader(name, size), estimate=size) as model:
        return model


def test_least_recently_used_is_evicted_and_reload_happens_only_after_eviction() -> None:
    cache = ModelCache(300)
    for name in ("a", "b", "c"):
        use(cache, name)
    use(cache, "a")  # a is now the most recent; b the least
    assert cache.keys() == ["b", "c", "a"]
    use(cache, "d")
    assert cache.keys() == ["c", "a", "d"]  # b went, nothing else
    assert Fake.loads == {"a": 1, "b": 1, "c": 1, "d": 1}
    use(cache, "a")
    assert Fake.loads["a"] == 1  # still resident: a hit, no reload
    use(cache, "b")
    assert Fake.loads["b"] == 2  # evicted before, so loaded again
    stats = cache.stats()
    assert (stats.loads, stats.hits, stats.evictions) == (5, 2, 2)
    assert stats.resident_bytes == 300 and stats.budget_bytes == 300


def test_a_model_in_use_is_never_evicted() -> None:
    cache = ModelCache(250)
    with cache.lease("big", loader("big", 200), estimate=200) as big:
        use(cache, "small", 100)  # does not fit beside big, but big is in use
        assert "big" in cache
        assert big.name == "big"
    # Over budget while big was in use: the next load makes room, oldest idle first.
    assert cache.stats().resident_bytes == 300
    use(cache, "other", 100)
    assert "big" not in cache and cache.stats().evictions >= 1


def test_eviction_frees_the_model() -> None:
    cache = ModelCache(1000)
    with cache.lease("m", lambda: torch.nn.Linear(100, 100)) as module:
        ref = weakref.ref(module)
        del module
    assert cache.stats().resident_bytes == estimate_bytes(ref()) == (100 * 100 + 100) * 4
    use(cache, "n", 1000)  # pushes m out
    assert ref() is None  # nothing holds the evicted module any more


def test_a_model_bigger_than_the_budget_still_loads_alone() -> None:
    cache = ModelCache(100)
    use(cache, "a", 50)
    assert not cache.fits(500)
    use(cache, "huge", 500)
    assert cache.keys() == ["huge"]


def test_concurrent_leases_load_once_and_exclusive_ones_take_turns() -> None:
    cache = ModelCache(1000)
    seen = []
    active = [0, 0]  # now, most at once
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        with cache.lease("pipe", loader("pipe"), exclusive=True) as model:
            with lock:
                seen.append(model)
                active[0] += 1
                active[1] = max(active)
            threading.Event().wait(0.02)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Fake.loads == {"pipe": 1}
    assert active[1] == 1  # one holder at a time
    assert len(seen) == 4 and len({id(m) for m in seen}) == 1


def test_a_failed_load_leaves_nothing_behind() -> None:
    cache = ModelCache(1000)

    def broken():
        raise RuntimeError("bad weights")

    with pytest.raises(RuntimeError), cache.lease("x", broken):
        pass
    assert cache.keys() == [] and cache.stats().loads == 0
    use(cache, "x")  # a later good load works
    assert cache.keys() == ["x"]


def test_budget_must_be_positive() -> None:
    with pytest.raises(InvalidInput) as info:
        ModelCache(0)
    assert info.value.field == "model_cache_bytes"


def test_models_being_loaded_count_against_the_budget() -> None:
    cache = ModelCache(100)
    inside = threading.Event()
    release = threading.Event()

    def slow():
        inside.set()
        release.wait(10)
        return Fake("first", 60)

    first = threading.Thread(target=lambda: use_with(cache, "first", slow, 60))
    first.start()
    inside.wait(10)
    use(cache, "idle", 30)  # fits beside the 60 being loaded
    assert "idle" in cache
    with cache.lease("second", loader("second", 60), estimate=60):
        # 60 loading + 60 more does not fit: the idle model made room, nothing else could
        assert "idle" not in cache
        release.set()
        first.join()
    assert cache.stats().loads == 3


def use_with(cache: ModelCache, name: str, load, size: int) -> None:
    with cache.lease(name, load, estimate=size):
        pass


def test_a_failing_size_estimate_does_not_wedge_the_key() -> None:
    class Broken:
        @property
        def nbytes(self) -> int:
            raise RuntimeError("no size")

    cache = ModelCache(100)
    with pytest.raises(RuntimeError), cache.lease("x", Broken):
        pass
    use(cache, "x")  # would wait forever if "x" were still marked as loading
    assert "x" in cache


def test_evict_frees_the_model_at_once() -> None:
    cache = ModelCache(10**9)
    with cache.lease("m", lambda: torch.nn.Linear(10, 10)) as module:
        ref = weakref.ref(module)
        del module
    assert cache.evict("m") and ref() is None
    assert not cache.evict("m")


def test_a_model_that_grew_is_measured_again() -> None:
    cache = ModelCache(250)
    use(cache, "old", 100)
    with cache.lease("grows", loader("grows", 100), estimate=100) as model:
        model.nbytes = 200  # e.g. adapters loaded into it
    cache.remeasure("grows")
    assert cache.stats().resident_bytes == 200 and "old" not in cache
