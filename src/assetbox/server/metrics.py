"""Prometheus metrics: jobs by kind and status, queue depth, unit durations, request latency,
model cache loads/hits/evictions and resident bytes, device memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import psutil
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus

__all__ = ["CONTENT_TYPE", "Metrics"]


def device_memory() -> list[tuple[str, int, int]]:
    """(device, used bytes, total bytes) for each CUDA device torch has loaded, else the host."""
    torch = sys.modules.get("torch")  # never import torch for a scrape
    if torch is not None and torch.cuda.is_available():
        out = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            out.append((f"cuda:{index}", total - free, total))
        return out
    memory = psutil.virtual_memory()
    return [("cpu", memory.total - memory.available, memory.total)]


class _EngineCollector(Collector):
    """Numbers read at scrape time from the executor's model caches and the device."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        engine = self._metrics.engine
        if engine is None:
            return
        executor = engine.executor
        workers = GaugeMetricFamily("assetbox_workers", "Workers ready to take units")
        workers.add_metric([], executor.workers)
        yield workers
        by_node = getattr(executor, "units_by_node", None)  # a fleet's (Ray) executor
        if by_node is not None:
            started = CounterMetricFamily(
                "assetbox_units_started", "Units started, by Ray node", labels=["node"]
            )
            for node, count in sorted(by_node.items()):
                started.add_metric([node], count)
            yield started
            lost = CounterMetricFamily(
                "assetbox_workers_lost", "Ray workers lost running a unit (node gone, crash)"
            )
            lost.add_metric([], executor.workers_lost)
            yield lost
        stats = executor.cache_stats()
        for name, value, text in (
            ("assetbox_model_loads", stats.loads, "Models loaded into a worker's cache"),
            ("assetbox_model_cache_hits", stats.hits, "Units that found their model loaded"),
            ("assetbox_model_evictions", stats.evictions, "Models evicted to fit the budget"),
        ):
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], value)
            yield counter
        resident = GaugeMetricFamily(
            "assetbox_model_cache_bytes", "Estimated bytes of the loaded models"
        )
        resident.add_metric([], stats.resident_bytes)
        yield resident
        budget = GaugeMetricFamily("assetbox_model_cache_budget_bytes", "Model cache budget")
        budget.add_metric([], stats.budget_bytes)
        yield budget
        loaded = GaugeMetricFamily("assetbox_models_loaded", "Models resident in caches")
        loaded.add_metric([], len(stats.models))
        yield loaded
        used = GaugeMetricFamily(
            "assetbox_device_memory_used_bytes", "Memory in use on the device", labels=["device"]
        )
        total = GaugeMetricFamily(
            "assetbox_device_memory_total_bytes", "Memory of the device", labels=["device"]
        )
        for device, used_bytes, total_bytes in device_memory():
            used.add_metric([device], used_bytes)
            total.add_metric([device], total_bytes)
        yield used
        yield total


class Metrics:
    """One registry per app, so that several apps (tests) do not share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.engine: Engine | None = None
        self.registry.register(_EngineCollector(self))
        self.jobs = Gauge(
            "assetbox_jobs", "Jobs by kind and status", ["kind", "status"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "assetbox_queue_depth", "Jobs waiting to run", registry=self.registry
        )
        self.unit_seconds = Histogram(
            "assetbox_unit_seconds",
            "Time from sending a unit to a worker to its result",
            ["kind", "outcome"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "assetbox_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def observe_unit(self, kind: str, seconds: float, succeeded: bool) -> None:
        self.unit_seconds.labels(kind, "ok" if succeeded else "error").observe(seconds)

    def render(self, engine: Engine) -> bytes:
        # Job gauges are read from the store at scrape time: the store is the truth, and the
        # numbers survive restarts.
        self.engine = engine
        self.jobs.clear()
        for kind, status, count in engine.store.counts_by_kind_status():
            self.jobs.labels(kind=kind, status=status).set(count)
        self.queue_depth.set(engine.store.count(JobStatus.QUEUED))
        return generate_latest(self.registry)
