"""One small HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``, in a daemon thread.

The standard library's ``HTTPServer`` with a bounded pool of threads (a
connection that sends nothing is closed after a timeout; connections past
the pool and its queue are closed at once) and prometheus_client's
``generate_latest``: no framework, no access log on the worker's stdout
(which carries only pino JSON lines). Bound to 127.0.0.1 unless told
otherwise; started and stopped explicitly.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from muzo_ops.errors import ConfigError
from muzo_ops.queue.jobs import JobType

DEFAULT_HOST = "127.0.0.1"
# What generate_latest writes (names escaped to underscores): the text format every Prometheus 2.x reads.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A process that runs a single queue binds base + its queue's offset, so the
# per-queue processes of one host (one env file) never collide.
QUEUE_PORT_OFFSETS: dict[JobType, int] = {JobType.GENERATION: 0, JobType.MOCKUP: 1, JobType.FULFILLMENT: 2}


def port_for(base: int, queues: Sequence[JobType | str]) -> int:
    """The port a worker for ``queues`` binds: ``base`` + the queue's offset when it runs only one.

    ConfigError (one line) when the sum is past 65535.
    """
    kinds = list(dict.fromkeys(q if isinstance(q, JobType) else JobType.from_queue(q) for q in queues))
    if len(kinds) != 1:
        return base
    port = base + QUEUE_PORT_OFFSETS[kinds[0]]
    if port > 65535:
        raise ConfigError(f"metrics port {base} + the {kinds[0].queue} queue's offset "
                          f"{QUEUE_PORT_OFFSETS[kinds[0]]} is {port}, past 65535: use a base port of at most "
                          f"{65535 - max(QUEUE_PORT_OFFSETS.values())} (--metrics-port / WORKER_METRICS_PORT)")
    return port


class Probe(Protocol):
    """What answers ``/healthz`` and ``/readyz``: (HTTP status, JSON body)."""

    def healthz(self) -> tuple[int, dict[str, Any]]: ...

    def readyz(self) -> tuple[int, dict[str, Any]]: ...


# The server's bounds: a connection that sends nothing (or too slowly) is closed after
# CONNECTION_TIMEOUT_S; at most SERVER_THREADS connections are served at once and
# MAX_WAITING more wait for a thread; any beyond are closed at once. 5000 half-open
# connections cost at most SERVER_THREADS threads (a thread each before).
CONNECTION_TIMEOUT_S = 5.0
SERVER_THREADS = 4
MAX_WAITING = 64


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_S  # the socket's timeout for every read and write

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        probe = self.server.probe
        try:
            if path == "/metrics":
                self._send(200, METRICS_CONTENT_TYPE, generate_latest(self.server.registry), head)
            elif path in ("/healthz", "/readyz") and probe is not None:
                code, body = probe.healthz() if path == "/healthz" else probe.readyz()
                self._send(code, "application/json", json.dumps(body).encode() + b"\n", head)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz, /readyz\n", head)
        except Exception as exc:  # a collector that fails (the exporter's database) is a 500, not a dead thread
            self._send(500, "text/plain; charset=utf-8", f"error: {type(exc).__name__}\n".encode(), head)

    def _send(self, code: int, content_type: str, body: bytes, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the worker's output is its pino lines."""


class _Server(HTTPServer):
    """Connections served by a bounded pool of threads (see SERVER_THREADS, MAX_WAITING)."""

    allow_reuse_address = True
    request_queue_size = MAX_WAITING  # the listen backlog (5 by default): a burst is accepted, not dropped

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, probe: Probe | None) -> None:
        self.registry = registry
        self.probe = probe
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._pool = concurrent.futures.ThreadPoolExecutor(SERVER_THREADS, thread_name_prefix="muzo-metrics")
        self._waiting = threading.BoundedSemaphore(SERVER_THREADS + MAX_WAITING)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._waiting.acquire(blocking=False):  # too many at once: close this one now
            self.shutdown_request(request)
            return
        self._pool.submit(self._serve, request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._waiting.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: nothing to report."""

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class MetricsServer:
    """Serves ``registry`` on /metrics and ``probe`` on /healthz and /readyz (404 without one)."""

    def __init__(self, registry: CollectorRegistry, probe: Probe | None = None,
                 host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.registry = registry
        self.probe = probe
        self.host = host
        self.requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the requested one, or the one chosen for port 0)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        """Bind and serve in a daemon thread; ConfigError (one line) when the port cannot be bound."""
        if self._server is not None:
            return self
        try:
            server = _Server((self.host, self.requested_port), self.registry, self.probe)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot serve metrics on {self.host}:{self.requested_port}: {reason} "
                              "(check the host and choose a free port)") from exc
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="muzo-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["DEFAULT_HOST", "QUEUE_PORT_OFFSETS", "MetricsServer", "Probe", "port_for"]
