"""Helpers for the exec and HTTP handler tests: a worker with its own env file, job documents."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bson import json_util

from tests import helpers
from tests.workers import WorkerProcess, start_worker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "muzo-jobs"
RUN_JOB = EXAMPLES / "run-job.js"
FAULTS = ROOT / "tests" / "node" / "exec_faults.js"
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
OPENAI_KEY = "sk-proj-handlerleak0000000000000000000007"
SIGNING_SECRET = "hs-current-9c1f4e2a7b3d5f6e8a0b1c2d3e4f5a6b"
PREVIOUS_SECRET = "hs-previous-1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"


# The worker tests' database fixtures (a fresh database per test, dropped after it).


def wait_until(predicate: Callable[[], Any], timeout: float = 60, what: str = "",
               worker: WorkerProcess | None = None) -> None:
    helpers.wait_until(predicate, timeout, what, (lambda: worker.text()[-3000:]) if worker is not None else None)


def worker(folder: Path, url: str, *args: str, env_lines: str = "", queues: str = "mockup",
           name: str = "worker", env: dict[str, str] | None = None) -> WorkerProcess:
    """``muzo-ops worker`` with an env file of its own (DATABASE_URL, the given lines) and no default handler."""
    env_file = folder / f"{name}-own.env"
    env_file.write_text(f"DATABASE_URL={url}\nWORKER_QUEUES={queues}\nLOG_LEVEL=debug\n"
                        f"OPENAI_API_KEY={OPENAI_KEY}\n{env_lines}")
    return start_worker(folder, url, "--env-file", str(env_file), *args, name=name, handler="", env=env)


def document_text(doc: dict[str, Any]) -> str:
    return json_util.dumps(doc)


def all_output(worker_process: WorkerProcess, jobs: Any) -> str:
    """Everything a secret must not be in: the worker's whole output and every Job document."""
    return worker_process.text() + "\n" + "\n".join(document_text(d) for d in jobs.find({}))


def retry_delay(doc: dict[str, Any]) -> float:
    """Seconds between the failed attempt's write and the retry's availableAt."""
    updated: dt.datetime = doc["updatedAt"]
    available: dt.datetime = doc["availableAt"]
    return (available - updated).total_seconds()


def compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def retry_once(job: Any) -> dict[str, Any]:
    """A Python handler: asks for a retry in payload.retryAfter seconds on its first attempt."""
    from muzo_ops import RetryJob

    if job.attempts == 1:
        raise RetryJob("the provider is busy", after_seconds=float(job.payload["retryAfter"]))
    return {"attempt": job.attempts}


def tls_server(tmp_path: Path, name: str, san: str) -> tuple[http.server.ThreadingHTTPServer, Path]:
    """An HTTPS server on 127.0.0.1 whose self-signed certificate names ``san``."""
    key, cert = tmp_path / f"{name}-key.pem", tmp_path / f"{name}-cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True)

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "12")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, cert
