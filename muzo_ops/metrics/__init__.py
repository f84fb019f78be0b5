"""Prometheus metrics and health endpoints for the worker, and the queue exporter.

``attach`` is what a worker process calls at start-up: it adds the metrics
and health observers to the worker's observer list and serves ``/metrics``,
``/healthz`` and ``/readyz``. Importing this package imports
prometheus_client but not pymongo; ``muzo_ops.metrics.exporter`` (the
``jobs metrics`` command) needs pymongo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from muzo_ops.metrics.health import (
    DEFAULT_LOOP_BOUND_S,
    DEFAULT_OUTAGE_GRACE_S,
    DEFAULT_STALE_AFTER_S,
    HealthState,
)
from muzo_ops.metrics.observer import PrometheusObserver
from muzo_ops.metrics.server import DEFAULT_HOST, MetricsServer, port_for
from muzo_ops.queue.events import Observer
from muzo_ops.queue.jobs import JobType


def endpoint(values: Mapping[str, str], port: int | None = None) -> tuple[str, int] | None:
    """(host, base port) for ``/metrics``: ``port`` (``--metrics-port``), else WORKER_METRICS_PORT,
    bound to WORKER_METRICS_HOST (default 127.0.0.1); None when neither is set (metrics off).

    ConfigError (one line) for an invalid WORKER_METRICS_PORT.
    """
    from muzo_ops.env import checks, schema
    from muzo_ops.errors import ConfigError

    text = values.get("WORKER_METRICS_PORT", "")
    if port is None and text:
        problem = checks.value_error(schema.get("WORKER_METRICS_PORT"), text)
        if problem:
            raise ConfigError(f"WORKER_METRICS_PORT {problem}")
        port = int(text)
    if port is None:
        return None
    return values.get("WORKER_METRICS_HOST", "") or DEFAULT_HOST, port


def attach(worker_observers: list[Observer], host: str = DEFAULT_HOST, port: int = 0, *,
           queues: Sequence[JobType | str] | None = None,
           stale_after_s: float = DEFAULT_STALE_AFTER_S,
           outage_grace_s: float = DEFAULT_OUTAGE_GRACE_S,
           loop_bound_s: float = DEFAULT_LOOP_BOUND_S) -> MetricsServer:
    """Append a ``PrometheusObserver`` and a ``HealthState`` to ``worker_observers`` and serve them.

    ``port`` is the base port; with ``queues`` given, a single-queue
    process binds base + that queue's offset (``port_for``). Returns the
    started server: call ``stop()`` on it when the worker has stopped.
    ConfigError (one line) when the port cannot be bound.
    """
    metrics = PrometheusObserver()
    health = HealthState(stale_after_s=stale_after_s, outage_grace_s=outage_grace_s, loop_bound_s=loop_bound_s)
    bound = port_for(port, queues) if queues is not None and port else port
    server = MetricsServer(metrics.registry, health, host=host or DEFAULT_HOST, port=bound).start()
    worker_observers.extend([metrics, health])
    return server


__all__ = ["HealthState", "MetricsServer", "PrometheusObserver", "attach", "endpoint", "port_for"]
