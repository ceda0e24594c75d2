"""Prometheus metrics, in a registry of the app's own (several apps may live in one process, as in tests)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
)
from starlette.types import Scope

from adaptformer_server.repository.split import current_caller

__all__ = ["ALL_TASKS", "CONTENT_TYPE_LATEST", "OTHER", "Metrics"]

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SCORES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Label values come from closed sets: a client must not be able to add series (any token is a valid method).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER = "other"
# Per-task latency: a task label is a task of the registry, `*` (every image task), or OTHER; never a name a
# client made up.
ALL_TASKS = "*"


class _Unsampled:
    """The server's metric families that no process has a sample of yet (the multiprocess collector only knows
    what some process wrote), as their HELP and TYPE lines, so that /metrics lists the same names either way."""

    def __init__(self, registry: CollectorRegistry, present: set[str]) -> None:
        self.registry = registry
        self.present = present

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if family.name.startswith("adaptformer_") and family.name not in self.present:
                yield Metric(family.name, family.documentation, family.type, family.unit)


class Metrics:
    """Every metric the server exports (prefix ``adaptformer_``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # The process (CPU, memory, open files: Linux only), Python and GC series of prometheus_client's default
        # registry, in this one.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.is_task: Callable[[str], bool] = lambda name: False  # the app points it at its registry
        # Whether (task, version) gets its own series: the current version or one in a split (the adapter manager's).
        self.version_label: Callable[[str, str], bool] = lambda task, version: False
        # The labelled series of every request, by label values (closed sets): `labels()` checks and locks per call.
        self._http_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._task_series: dict[tuple[str, str], Any] = {}

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=r)

        def histogram(
            name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = _LATENCY
        ) -> Histogram:
            return Histogram(name, doc, list(labels), buckets=buckets, registry=r)

        self.http_requests = counter(
            "adaptformer_http_requests", "HTTP requests by method, route and status", ["method", "route", "status"]
        )

        self.http_latency = histogram("adaptformer_http_request_seconds", "HTTP request latency by route", ["route"])
        self.predictions = counter(
            "adaptformer_predict_requests", "Prediction requests by task and status", ["task", "status"]
        )
        self.predict_latency = histogram(
            "adaptformer_predict_seconds", "Prediction latency, request received to answer"
        )
        self.task_latency = histogram(
            "adaptformer_task_request_seconds",
            "Prediction latency by task (/predict and /v2 infer), names admitted to answer; outcome ok (2xx) or error",
            ["task", "outcome"],
        )
        self.version_requests = counter(
            "adaptformer_version_requests",
            "Prediction requests by task, the adapter version admitted (current or in a split, else other) and status",
            ["task", "version", "status"],
        )
        self.version_latency = histogram(
            "adaptformer_version_request_seconds",
            "Prediction latency by task and the adapter version admitted",
            ["task", "version"],
        )
        self.version_top1 = histogram(
            "adaptformer_version_top1_score",
            "Top-1 softmax score of each image or clip answered, by task and the adapter version that ran (a canary "
            "whose scores fall is less sure of its answers than the version it would replace)",
            ["task", "version"],
            _SCORES,
        )
        self.batch_size = histogram("adaptformer_batch_size", "Samples per forward pass", buckets=_SIZES)
        self.batch_tasks = histogram("adaptformer_batch_tasks", "Distinct adapters per forward pass", buckets=_SIZES)
        self.batch_latency = histogram("adaptformer_batch_seconds", "Forward pass time per batch")
        self.queue_wait = histogram("adaptformer_queue_wait_seconds", "Time a sample waits in the queue")
        # Several processes (tier/): gauges of live processes only, summed (the queue) or the engine's (the rest).
        self.queue_depth = Gauge(
            "adaptformer_queue_depth", "Samples waiting for a batch", registry=r, multiprocess_mode="livesum"
        )
        self.resident = Gauge(
            "adaptformer_resident_adapters", "Adapters resident in bank slots", registry=r, multiprocess_mode="livemax"
        )
        self.registered = Gauge(
            "adaptformer_registered_adapters", "Adapters in the registry", registry=r, multiprocess_mode="livemax"
        )
        self.page_ins = counter("adaptformer_page_ins", "Adapters loaded from the store into a slot")
        self.page_in_failures = counter("adaptformer_page_in_failures", "Page-ins that failed (invalid or stale file)")
        self.page_in_latency = histogram("adaptformer_page_in_seconds", "Time to load, check and place one adapter")
        self.evictions = counter("adaptformer_evictions", "Adapters evicted from a slot (LRU)")
        self.uploads = counter("adaptformer_uploads", "Adapter uploads by result status", ["status"])
        self.source_fetches = counter(
            "adaptformer_source_fetches",
            "Adapters registered by reference (POST /adapters with a source), by scheme and result status",
            ["scheme", "status"],
        )
        self.rollbacks = counter("adaptformer_rollbacks", "Rollbacks by result status", ["status"])
        self.store_changes = counter(
            "adaptformer_store_changes",
            "Adapters added, replaced or removed in the store by another process (seen by the store watcher)",
            ["kind"],
        )
        self.quarantined = counter(
            "adaptformer_quarantined_files",
            "Store files moved to .quarantine/ at start-up or by the store watcher because they can never be read",
        )

    def render(self) -> bytes:
        """The exposition text: this app's registry, or, in a server of several processes (prometheus_client's
        multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR`` set), the whole server's series from every process."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            collector = multiprocess.MultiProcessCollector(registry)
            registry.register(_Unsampled(self.registry, {family.name for family in collector.collect()}))
            return generate_latest(registry)
        return generate_latest(self.registry)

    def task_label(self, name: str) -> str:
        """``name`` if the registry holds that task (or it is ``*``), else ``other``; a pinned ``task@version``
        counts under its task (versions would make the label set grow with every upload)."""
        name = name.partition("@")[0]
        return name if name == ALL_TASKS or self.is_task(name) else OTHER

    def observe_request(self, scope: Scope, status: int, elapsed: float) -> None:
        """Counts an HTTP request (``scope``, routed or not) that ended with ``status`` by method, route template
        (never the raw path) and status, and times it (``elapsed`` seconds).

        Unknown methods and paths that match no route are counted as ``other``.
        """
        route = getattr(scope.get("route"), "path", None) or OTHER
        method = scope["method"] if scope["method"] in _METHODS else OTHER
        series = self._http_series.get((method, route, status))
        if series is None:
            series = self.http_requests.labels(method, route, str(status)), self.http_latency.labels(route)
            self._http_series[method, route, status] = series
        count, latency = series
        count.inc()
        latency.observe(elapsed)

    def observe_version(self, task: str, version: str, status: str, elapsed: float) -> None:
        """Counts and times a request under the version of ``task`` it ran (bounded: :attr:`version_label`)."""
        label = version if self.version_label(task, version) else OTHER
        task = self.task_label(task)
        self.version_requests.labels(task, label, status).inc()
        self.version_latency.labels(task, label).observe(elapsed)

    def observe_scores(self, task: str, version: str, top1: Iterable[float]) -> None:
        """The top-1 score of each input a version of ``task`` answered (bounded as :meth:`observe_version`)."""
        label = version if self.version_label(task, version) else OTHER
        histogram = self.version_top1.labels(self.task_label(task), label)
        for score in top1:
            histogram.observe(score)

    def observe_prediction(self, tasks: Iterable[str], names: Iterable[str], status: str, elapsed: float) -> None:
        """Counts a prediction request that ended with ``status`` under each task it ran (``tasks``: the names
        expanded, or ``_unknown`` when they did not pass their checks), and times it (``elapsed`` seconds): overall,
        and by each name it gave (:meth:`task_label`: a task of the registry, ``*`` or ``other``)."""
        for task in tasks:
            self.predictions.labels(task, status).inc()
        caller = current_caller()
        if caller is not None:
            for task, version in caller.served.items():
                self.observe_version(task, version, status, elapsed)
        self.predict_latency.observe(elapsed)
        outcome = "ok" if status.startswith("2") else "error"
        for task in {self.task_label(name) for name in names}:
            timer = self._task_series.get((task, outcome))
            if timer is None:
                timer = self._task_series[task, outcome] = self.task_latency.labels(task, outcome)
            timer.observe(elapsed)
