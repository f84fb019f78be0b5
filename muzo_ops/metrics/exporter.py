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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pymongo
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from pymongo import ASCENDING

from muzo_ops.metrics.server import DEFAULT_HOST, MetricsServer
from muzo_ops.queue.jobs import JobStatus, JobType
from muzo_ops.queue.opsstore import (
    due_pending_query,
    failed_query,
    scheduled_pending_query,
    type_status_query,
    undated_pending_query,
)
from muzo_ops.queue.store import utcnow

if TYPE_CHECKING:
    from pymongo.collection import Collection

Doc = dict[str, Any]

DEFAULT_CACHE_S = 5.0
DEFAULT_CAP = 100_000  # index keys a count walks at most: a few milliseconds on MongoDB
DB_TIMEOUT_S = 5.0  # a scrape must answer within Prometheus's scrape_timeout (10 s by default)

# The ``status`` label: PENDING split into due and scheduled (not yet due: scheduled jobs, retries waiting).
PENDING_DUE = "PENDING_DUE"
PENDING_SCHEDULED = "PENDING_SCHEDULED"
STATUSES: tuple[str, ...] = (PENDING_DUE, PENDING_SCHEDULED, JobStatus.RUNNING.value, JobStatus.DONE.value,
                             JobStatus.FAILED.value)


def status_query(job_type: JobType, status: str, now: dt.datetime) -> Doc:
    """The filter counted for one (type, status) label pair; every one starts on the first index."""
    if status == PENDING_DUE:
        query = due_pending_query(now)
    elif status == PENDING_SCHEDULED:
        query = scheduled_pending_query(now)
    elif status == JobStatus.FAILED.value:
        return failed_query(job_type)
    else:  # RUNNING, DONE
        return type_status_query(job_type, JobStatus(status))
    return {"type": job_type.value, **query}


@dataclass
class Snapshot:
    """One scrape's answer: counts, the oldest due ages, whether MongoDB answered."""

    up: bool
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, status) -> n, at most cap
    oldest_due_age_s: dict[str, float] = field(default_factory=dict)  # type -> seconds (0: none due)
    duration_s: float = 0.0


class QueueExporter:
    """A prometheus_client collector over a ``Job`` collection, with a short cache."""

    def __init__(self, jobs: Collection[Doc], cache_s: float = DEFAULT_CACHE_S, cap: int = DEFAULT_CAP,
                 types: Iterable[JobType] = tuple(JobType),
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], dt.datetime] = utcnow, timeout_s: float = DB_TIMEOUT_S) -> None:
        self.jobs = jobs
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.cap = cap
        self.types = tuple(types)
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._taken_at = 0.0

    def snapshot(self) -> Snapshot:
        """The cached answer, or a fresh one when older than ``cache_s`` (one refresh at a time)."""
        with self._lock:
            if self._snapshot is None or self._clock() - self._taken_at >= self.cache_s:
                self._snapshot = self._query()
                self._taken_at = self._clock()
            return self._snapshot

    def _query(self) -> Snapshot:
        """Per type: six capped counts (PENDING_DUE is the jobs due by date plus those without
        availableAt, as ``jobs status`` counts them) and two finds (the oldest due by date; the
        oldest without availableAt, due since it was created). The whole scrape runs under one
        deadline of DB_TIMEOUT_S (pymongo's client-side operation timeout, which also sets
        maxTimeMS): a frozen server makes it up=0 in time, never a hang."""
        started = time.monotonic()
        now = self._now()
        snap = Snapshot(up=True)
        try:
            with pymongo.timeout(self.timeout_s):
                for job_type in self.types:
                    for status in STATUSES:
                        n = int(self.jobs.count_documents(status_query(job_type, status, now), limit=self.cap))
                        if status == PENDING_DUE:
                            n = min(self.cap, n + int(self.jobs.count_documents(
                                {"type": job_type.value, **undated_pending_query()}, limit=self.cap)))
                        snap.counts[(job_type.value, status)] = n
                    dated = self.jobs.find_one(status_query(job_type, PENDING_DUE, now),
                                               sort=[("availableAt", ASCENDING)],
                                               projection={"availableAt": 1, "_id": 0})
                    undated = self.jobs.find_one({"type": job_type.value, **undated_pending_query()},
                                                 sort=[("createdAt", ASCENDING)],
                                                 projection={"createdAt": 1, "_id": 0})
                    since = [d for d in ((dated or {}).get("availableAt"), (undated or {}).get("createdAt"))
                             if isinstance(d, dt.datetime)]
                    snap.oldest_due_age_s[job_type.value] = max(
                        [0.0, *((now - (d if d.tzinfo else d.replace(tzinfo=dt.UTC))).total_seconds()
                                for d in since)])
        except Exception as exc:
            if not _is_pymongo(exc):
                raise
            snap = Snapshot(up=False)
        snap.duration_s = time.monotonic() - started
        return snap

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


def _is_pymongo(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("pymongo", "bson"))


def exporter_registry(exporter: QueueExporter) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(exporter)
    return registry


def serve(values: Mapping[str, str], host: str = DEFAULT_HOST, port: int = 0,
          on_ready: Callable[[str], None] | None = None, cache_s: float = DEFAULT_CACHE_S,
          cap: int = DEFAULT_CAP, stop: threading.Event | None = None) -> int:
    """Serve the queue metrics of env ``values``' DATABASE_URL until SIGTERM/SIGINT (or ``stop``); 0."""
    from muzo_ops.queue.admin import connect_from_values

    store = connect_from_values(values, DB_TIMEOUT_S)
    exporter = QueueExporter(store.jobs, cache_s=cache_s, cap=cap)
    stop = stop or threading.Event()
    server = MetricsServer(exporter_registry(exporter), host=host, port=port).start()
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


__all__ = ["DEFAULT_CACHE_S", "DEFAULT_CAP", "STATUSES", "QueueExporter", "Snapshot", "exporter_registry",
           "serve", "status_query"]
