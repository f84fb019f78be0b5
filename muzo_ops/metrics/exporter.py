"""``muzo-ops jobs metrics``: the queue's own state from MongoDB, as Prometheus metrics.

One exporter per deployment (not per worker). A scrape costs a fixed
number of database commands whatever the collection's size: per job type,
six capped counts (due PENDING by date and without availableAt, scheduled
PENDING, RUNNING, DONE, FAILED) and two ``find``s of the oldest due job
(by date; without availableAt), each on the (type, status, availableAt)
index; 24 commands for the three types, under one deadline. Within ``cache_s``
of the last scrape, a scrape sends none and serves the same answer.
Counts stop at ``cap`` (DONE grows forever): a count at the cap is
reported as the cap with ``muzo_queue_count_capped`` 1.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from muzo_ops.metrics.server import DEFAULT_HOST, MetricsServer
from muzo_ops.queue.jobs import JobType
from muzo_ops.queue.opsstore import (
    DEFAULT_CACHE_S,
    DEFAULT_CAP,
    PENDING_DUE,
    PENDING_SCHEDULED,
    STATUSES,
    QueueCounts,
    Snapshot,
    status_query,
)
from muzo_ops.queue.store import utcnow

if TYPE_CHECKING:
    from pymongo.collection import Collection

Doc = dict[str, Any]

DB_TIMEOUT_S = 5.0  # a scrape must answer within Prometheus's scrape_timeout (10 s by default)


class QueueExporter:
    """A prometheus_client collector over a ``Job`` collection's cached, capped counts.

    The counts are ``muzo_ops.queue.opsstore.QueueCounts``: the same
    code (and, in one process, the same cache) as the job dashboard's overview.
    """

    def __init__(self, jobs: Collection[Doc], cache_s: float = DEFAULT_CACHE_S, cap: int = DEFAULT_CAP,
                 types: Iterable[JobType] = tuple(JobType),
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], dt.datetime] = utcnow, counts: QueueCounts | None = None,
                 timeout_s: float = DB_TIMEOUT_S) -> None:
        self.counts = counts or QueueCounts(jobs, cache_s=cache_s, cap=cap, types=types, clock=clock, now=now,
                                            timeout_s=timeout_s)
        self.jobs = self.counts.jobs
        self.cap = self.counts.cap

    def snapshot(self) -> Snapshot:
        """The cached answer, or a fresh one when older than ``cache_s`` (one refresh at a time)."""
        return self.counts.snapshot()

    def describe(self) -> list[Metric]:
        return self._families(Snapshot(up=False), with_samples=False)

    def collect(self) -> list[Metric]:
        return self._families(self.snapshot())

    def _families(self, snap: Snapshot, with_samples: bool = True) -> list[Metric]:
        up = GaugeMetricFamily("muzo_queue_up", "1 when the last query of the Job collection succeeded.")
        took = GaugeMetricFamily("muzo_queue_scrape_duration_seconds",
                                 "Time the last (uncached) query of the Job collection took.")
        jobs = GaugeMetricFamily("muzo_queue_jobs", "Jobs by type and status (PENDING split into PENDING_DUE "
                                 "and PENDING_SCHEDULED); at most the cap.", labels=["type", "status"])
        capped = GaugeMetricFamily("muzo_queue_count_capped", "1 when muzo_queue_jobs stopped counting at "
                                   "the cap: the true number is at least that.", labels=["type", "status"])
        oldest = GaugeMetricFamily("muzo_queue_oldest_due_age_seconds", "Age of the oldest due PENDING job "
                                   "(now - availableAt; 0 when none is due): the queue's latency.",
                                   labels=["type"])
        families: list[Metric] = [up, took, jobs, capped, oldest]
        if not with_samples:
            return families
        up.add_metric([], 1.0 if snap.up else 0.0)
        took.add_metric([], snap.duration_s)
        for (job_type, status), n in sorted(snap.counts.items()):
            jobs.add_metric([job_type, status], float(n))
            capped.add_metric([job_type, status], 1.0 if n >= self.cap else 0.0)
        for job_type, age in sorted(snap.oldest_due_age_s.items()):
            oldest.add_metric([job_type], age)
        return families


def exporter_registry(exporter: QueueExporter) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(exporter)
    return registry


class ExporterProbe:
    """``/healthz``: the exporter answers (200 whether or not the database does, so an outage never
    makes a deploy's gate roll a good exporter back); ``/readyz``: its last counts reached MongoDB."""

    def __init__(self, exporter: QueueExporter) -> None:
        self.exporter = exporter

    def healthz(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok"}

    def readyz(self) -> tuple[int, dict[str, Any]]:
        up = self.exporter.snapshot().up
        return (200 if up else 503), {"status": "ready" if up else "database unreachable"}


def serve(values: Mapping[str, str], host: str = DEFAULT_HOST, port: int = 0,
          on_ready: Callable[[str], None] | None = None, cache_s: float = DEFAULT_CACHE_S,
          cap: int = DEFAULT_CAP, stop: threading.Event | None = None) -> int:
    """Serve the queue metrics of env ``values``' DATABASE_URL until SIGTERM/SIGINT (or ``stop``); 0."""
    from muzo_ops.queue.admin import connect_from_values

    store = connect_from_values(values, DB_TIMEOUT_S)
    exporter = QueueExporter(store.jobs, cache_s=cache_s, cap=cap)
    stop = stop or threading.Event()
    server = MetricsServer(exporter_registry(exporter), ExporterProbe(exporter), host=host, port=port).start()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda _sig, _frame: stop.set())
    try:
        if on_ready is not None:
            on_ready(f"serving queue metrics on {server.url}/metrics (cache {cache_s:g}s, counts capped at {cap})")
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        store.jobs.database.client.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


__all__ = ["DEFAULT_CACHE_S", "DEFAULT_CAP", "PENDING_DUE", "PENDING_SCHEDULED", "STATUSES", "ExporterProbe",
           "QueueExporter",
           "Snapshot", "exporter_registry", "serve", "status_query"]
