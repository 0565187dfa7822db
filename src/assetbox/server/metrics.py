"""Prometheus metrics: jobs by kind and status, queue depth, request latency."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    """One registry per app, so that several apps (tests) do not share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.jobs.clear()
        for kind, status, count in engine.store.counts_by_kind_status():
            self.jobs.labels(kind=kind, status=status).set(count)
        self.queue_depth.set(engine.store.count(JobStatus.QUEUED))
        return generate_latest(self.registry)
