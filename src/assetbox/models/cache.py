"""The cache of loaded models: least recently used first out, under a memory budget.

A worker asks for a model with `lease(key, load)`; while the lease is open the model is in use and
is never evicted. Loading a model that does not fit evicts the least recently used idle models
first (their memory is released: references dropped, `torch.cuda.empty_cache()` when CUDA is
loaded). A model larger than the budget on its own still loads (the caller decides how to run
it, e.g. with CPU offload; see `fits`); the cache then holds it alone.

Sizes come from the caller's estimate before loading (e.g. weight file sizes) and are replaced by
the measured size after (`estimate_bytes`: parameters and buffers times their dtype sizes).

Not `functools.lru_cache`/`cachetools`: those bound the entry count or evict on insert regardless
of use, and a model in use must stay, and eviction must be counted and must free memory.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assetbox.errors import InvalidInput


@dataclass
class _Entry:
    value: Any
    size: int
    users: int = 0
    # Exclusive entries (diffusers pipelines: schedulers and adapters are state) serve one lease
    # at a time; shared ones (GAN upscalers) serve every thread at once.
    lock: threading.Lock | None = None


@dataclass
class CacheStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0
    resident_bytes: int = 0
    budget_bytes: int = 0
    models: list[str] = field(default_factory=list)

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(
            loads=self.loads + other.loads,
            hits=self.hits + other.hits,
            evictions=self.evictions + other.evictions,
            resident_bytes=self.resident_bytes + other.resident_bytes,
            budget_bytes=self.budget_bytes + other.budget_bytes,
            models=sorted(set(self.models) | set(other.models)),
        )


def estimate_bytes(value: Any) -> int:
    """Memory a loaded model holds: parameters and buffers times their dtype sizes.

    Understands torch modules, diffusers pipelines (their module components), objects that
    report `nbytes` (our ncnn backend) and objects that wrap one of these as `.model`/`.module`.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.nn.Module):
        tensors = [*value.parameters(), *value.buffers()]
        unique = {id(t): t for t in tensors}.values()  # tied weights count once
        return sum(_tensor_bytes(t) for t in unique)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    components = getattr(value, "components", None)
    if isinstance(components, dict):
        return sum(estimate_bytes(c) for c in components.values() if c is not None)
    for name in ("model", "module"):
        inner = getattr(value, name, None)
        if inner is not None and inner is not value:
            return estimate_bytes(inner)
    return 0


def _tensor_bytes(tensor: Any) -> int:
    """Bytes of a tensor; quantized tensor subclasses (torchao) count their inner tensors."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = flatten()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def files_bytes(path: Path, suffixes: tuple[str, ...] = (".safetensors", ".bin", ".pth")) -> int:
    """Total size of the weight files under `path` (a file or a folder): a pre-load estimate."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.suffix in suffixes and p.is_file())


def default_budget(device: str = "cpu") -> int:
    """Budget when none is set: 85% of a CUDA device's memory, half of this machine's RAM."""
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        return int(torch.cuda.get_device_properties(index).total_memory * 0.85)
    import psutil

    return psutil.virtual_memory().total // 2


class ModelCache:
    """Loaded models by key, least recently used first out, under `budget_bytes`."""

    def __init__(
        self,
        budget_bytes: int,
        *,
        on_evict: Callable[[str, Any], None] | None = None,
    ) -> None:
        if budget_bytes <= 0:
            raise InvalidInput(
                f"`model_cache_bytes` must be positive but is {budget_bytes}",
                field="model_cache_bytes",
            )
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest use first
        self._lock = threading.Condition()
        self._loading: dict[str, int] = {}  # key → estimated bytes, while it loads
        self._on_evict = on_evict
        self._loads = self._hits = self._evictions = 0

    # -- reading ---------------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                loads=self._loads,
                hits=self._hits,
                evictions=self._evictions,
                resident_bytes=self._resident(),
                budget_bytes=self.budget_bytes,
                models=list(self._entries),
            )

    def keys(self) -> list[str]:
        """Resident keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def fits(self, size: int) -> bool:
        """Whether a model of `size` bytes fits the budget at all (evicting everything idle)."""
        return size <= self.budget_bytes

    def _resident(self) -> int:
        return sum(e.size for e in self._entries.values())

    # -- using -----------------------------------------------------------------------------------

    @contextmanager
    def lease(
        self,
        key: str,
        load: Callable[[], Any],
        *,
        estimate: int | None = None,
        exclusive: bool = False,
    ) -> Iterator[Any]:
        """The model under `key`, loaded with `load()` if absent; in use until the block ends."""
        entry = self._acquire(key, load, estimate, exclusive)
        if entry.lock is not None:
            entry.lock.acquire()
        try:
            yield entry.value
        finally:
            if entry.lock is not None:
                entry.lock.release()
            with self._lock:
                entry.users -= 1
                self._lock.notify_all()

    def _acquire(self, key: str, load: Callable[[], Any], estimate: int | None, exclusive: bool):
        evicted: list[tuple[str, Any]] = []
        try:
            with self._lock:
                while key in self._loading:  # another thread is loading it: wait, then share
                    self._lock.wait()
                entry = self._entries.get(key)
                if entry is not None:
                    self._hits += 1
                    entry.users += 1
                    self._entries.move_to_end(key)
                    return entry
                evicted = self._make_room(estimate or 0, keep=key)
                self._loading[key] = estimate or 0  # counted while it loads
        finally:
            self._release(evicted)  # outside the lock: freeing may take a while
        try:
            value = load()
            size = estimate_bytes(value) or (estimate or 0)
        except BaseException:
            with self._lock:
                del self._loading[key]
                self._lock.notify_all()
            raise
        with self._lock:
            del self._loading[key]
            entry = _Entry(value, size, users=1, lock=threading.Lock() if exclusive else None)
            self._entries[key] = entry
            self._loads += 1
            evicted = self._make_room(0, keep=key)  # the measured size may exceed the estimate
            self._lock.notify_all()
        del value
        self._release(evicted)
        return entry

    def _make_room(self, incoming: int, *, keep: str) -> list[tuple[str, Any]]:
        """Take idle models out, oldest use first, until `incoming` more bytes fit beside the
        resident and loading ones (lock held). Returns them, to be released without the lock."""
        evicted: list[tuple[str, Any]] = []
        loading = sum(self._loading.values())
        for key in list(self._entries):
            if self._resident() + loading + incoming <= self.budget_bytes:
                break
            entry = self._entries[key]
            if key == keep or entry.users > 0:
                continue  # in use: never evicted
            del self._entries[key]
            self._evictions += 1
            evicted.append((key, entry.value))
            entry.value = None
        return evicted

    def _release(self, evicted: list[tuple[str, Any]]) -> None:
        """Tell `on_evict`, then drop the last references so the memory really goes."""
        if not evicted:
            return
        if self._on_evict is not None:
            for key, value in evicted:
                self._on_evict(key, value)
            del value
        evicted.clear()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def remeasure(self, key: str) -> None:
        """Measure a resident model again (it grew, e.g. LoRA adapters loaded into it) and make
        room for the difference."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            value = entry.value
        size = estimate_bytes(value)  # outside the lock: walks every tensor
        del value
        with self._lock:
            if self._entries.get(key) is not entry or not size:
                return
            entry.size = size
            evicted = self._make_room(0, keep=key)
        self._release(evicted)

    def evict(self, key: str) -> bool:
        """Drop an idle model now (e.g. deleted from the store). False when absent or in use."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.users > 0:
                return False
            del self._entries[key]
            self._evictions += 1
            evicted = [(key, entry.value)]
            entry.value = None
            del entry
        self._release(evicted)
        return True

    def clear(self) -> None:
        """Drop every idle model."""
        for key in self.keys():
            self.evict(key)
