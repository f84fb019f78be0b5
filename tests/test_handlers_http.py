"""HTTP handlers: a real worker POSTs signed jobs to a real Node server running the documented route."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from muzo_ops.queue.handlers import signing
from tests.handlers_support import (
    EXAMPLES,
    NODE_MODULES,
    PREVIOUS_SECRET,
    ROOT,
    SIGNING_SECRET,
    all_output,
    retry_delay,
    tls_server,
    wait_until,
    worker,
)
from tests.servers import Secantus, free_port, stop_pid
from tests.test_handlers_exec import FULFILLMENT_PAYLOAD
from tests.workers import generation_payload, mockup_payload, prisma_job


@pytest.fixture(scope="module")
def route_server() -> Iterator[str]:
    """examples/muzo-jobs/http-server.js serving route.ts (compiled by TypeScript) on 127.0.0.1."""
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES), "MUZO_HANDLER_SIGNING_SECRET": SIGNING_SECRET,
           "MUZO_HANDLER_SIGNING_SECRET_PREVIOUS": PREVIOUS_SECRET}
    proc = subprocess.Popen(["node", str(EXAMPLES / "http-server.js"), "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"listening (\d+)\n", line)
        assert match, line + proc.stdout.read(4000).decode() if proc.poll() is not None else line
        yield f"http://127.0.0.1:{match.group(1)}/api/jobs"
    finally:
        stop_pid(proc)  # type: ignore[arg-type]
        if proc.stdout is not None:
            proc.stdout.close()


def _signing_line(secret: str = SIGNING_SECRET) -> str:
    return f"MUZO_HANDLER_SIGNING_SECRET={secret}\n"


def _body(**fields: Any) -> bytes:
    job = {"id": "65f0a1b2c3d4e5f601234567", "type": "MOCKUP", "attempt": 1, "maxAttempts": 3,
           "projectId": None, "payload": mockup_payload(), **fields}
    return json.dumps(job, separators=(",", ":")).encode()


def test_documented_route_is_the_example_verbatim() -> None:
    """docs/HANDLERS.md shows examples/muzo-jobs/route.ts as it is, character for character."""
    doc = (ROOT / "docs" / "HANDLERS.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```ts\n(.*?)```", doc, flags=re.S)
    assert (EXAMPLES / "route.ts").read_text(encoding="utf-8") in blocks


def test_the_route_verifies_signatures(route_server: str) -> None:
    url = f"{route_server}/mockup"
    body = _body()
    now = int(time.time())

    def post(content: bytes, header: str) -> httpx.Response:
        return httpx.post(url, content=content, headers={"Muzo-Signature": header,
                                                         "Content-Type": "application/json"})

    good = post(body, signing.header(SIGNING_SECRET, body))
    assert good.status_code == 200 and good.json()["mockupUrl"].startswith("s3://muzo-assets/mockups/order-0/")
    assert post(body, signing.header(PREVIOUS_SECRET, body)).status_code == 200  # during a rotation
    tampered = body.replace(b'"order-0"', b'"order-9"')
    assert post(tampered, signing.header(SIGNING_SECRET, body)).status_code == 401
    assert post(body, signing.header("some-other-secret-of-32-characters!", body)).status_code == 401
    assert post(body, signing.header(SIGNING_SECRET, body, now - 310)).status_code == 401  # stale
    assert post(body, signing.header(SIGNING_SECRET, body, now + 310)).status_code == 401
    assert post(body, signing.header(SIGNING_SECRET, body, now - 200)).status_code == 200
    assert post(body, "").status_code == 401
    v1 = signing.header(SIGNING_SECRET, body, now).split("v1=")[1]
    assert post(body, f"t={now},t={now - 1},v1={v1}").status_code == 401
    assert post(body, f"t={now},v1={v1[:-2]}").status_code == 401
    assert post(body, f"t={now},v1=00{v1[2:]},v1={v1}").status_code == 200  # any v1 may match
    no_header = httpx.post(url, content=body)
    assert no_header.status_code == 401


def test_three_job_types_done_through_the_worker(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any,
                                                  route_server: str) -> None:
    gen = prisma_job("GENERATION", generation_payload())
    mock = prisma_job("MOCKUP", mockup_payload(5))
    ful = prisma_job("FULFILLMENT", FULFILLMENT_PAYLOAD)
    jobs.insert_many([gen, mock, ful])
    w = worker(tmp_path, secantus.url(dbname), "--handler", f"GENERATION={route_server}/generation",
               "--handler", f"MOCKUP={route_server}/mockup", queues="generation,mockup,fulfillment",
               env_lines=_signing_line() + f"MUZO_WORKER_HANDLERS=FULFILLMENT={route_server}/fulfillment\n")
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 3, 60, "3 DONE", w)
    finally:
        assert w.terminate() == 0
    by_id = {d["_id"]: d for d in jobs.find({})}
    assert by_id[gen["_id"]]["result"]["images"][0]["url"] == f"s3://muzo-assets/generations/{gen['_id']}/0.png"
    assert by_id[mock["_id"]]["result"]["orderId"] == "order-5"
    assert by_id[ful["_id"]]["result"]["idempotencyKey"] == str(ful["_id"])  # Idempotency-Key = the job id
    assert SIGNING_SECRET not in all_output(w, jobs)


def test_503_with_retry_after_is_retried_not_before(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any,
                                                    route_server: str) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(simulate={"busyAttempts": 1, "retryAfterSeconds": 3})))
    w = worker(tmp_path, secantus.url(dbname), "--handler", f"MOCKUP={route_server}/mockup", "--retry-base", "0.05",
               "--retry-cap", "30", env_lines=_signing_line())
    try:
        wait_until(lambda: jobs.count_documents({"attempts": 1, "status": "PENDING"}) == 1, 30, "retry", w)
        waiting = jobs.find_one({})
        assert waiting["lastError"]["name"] == "RetryJob"
        assert "answered 503, retry after 3 s: mockup renderer is busy" in waiting["lastError"]["message"]
        assert retry_delay(waiting) >= 2.9, retry_delay(waiting)
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE", w)
    finally:
        assert w.terminate() == 0
    assert jobs.find_one({})["result"]["attempt"] == 2


def test_4xx_fails_at_once_and_a_wrong_key_is_refused(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any,
                                                      route_server: str) -> None:
    refused = prisma_job("MOCKUP", mockup_payload(1, simulate={"refuse": "variant discontinued"}), max_attempts=5)
    jobs.insert_one(refused)
    w = worker(tmp_path, secantus.url(dbname), "--handler", f"MOCKUP={route_server}/mockup",
               env_lines=_signing_line())
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 1, 30, "FAILED", w)
    finally:
        assert w.terminate() == 0
    failed = jobs.find_one({})
    assert failed["attempts"] == 1 and failed["lastError"]["name"] == "FatalJobError"
    assert "answered 422 (fatal): mockup renderer refused the job: variant discontinued" in (
        failed["lastError"]["message"])
    jobs.delete_many({})
    wrong_key = "wrong-key-but-32-characters-long-xyz"
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(2), max_attempts=5))
    w = worker(tmp_path, secantus.url(dbname), "--handler", f"MOCKUP={route_server}/mockup", name="wrong",
               env_lines=_signing_line(wrong_key))
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 1, 30, "FAILED", w)
    finally:
        assert w.terminate() == 0
    failed = jobs.find_one({})
    assert failed["attempts"] == 1 and "answered 401 (fatal): invalid Muzo-Signature" in failed["lastError"]["message"]
    assert wrong_key not in all_output(w, jobs)


def test_connection_refused_is_retried(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(), max_attempts=2))
    w = worker(tmp_path, secantus.url(dbname), "--handler", f"MOCKUP=http://127.0.0.1:{free_port()}/x",
               "--retry-base", "0.05", "--retry-cap", "0.1", env_lines=_signing_line())
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 1, 30, "FAILED", w)
    finally:
        assert w.terminate() == 0
    failed = jobs.find_one({})
    assert failed["attempts"] == 2 and "failed: ConnectError" in failed["lastError"]["message"]


@pytest.fixture
def untrusted_tls(tmp_path: Path) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate nobody trusts."""
    server, _ = tls_server(tmp_path, "127.0.0.1", "IP:127.0.0.1")
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_tls_is_verified(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any, untrusted_tls: int) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(), max_attempts=1))
    w = worker(tmp_path, secantus.url(dbname), "--handler", f"MOCKUP=https://127.0.0.1:{untrusted_tls}/x",
               env_lines=_signing_line())
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 1, 30, "FAILED", w)
    finally:
        assert w.terminate() == 0
    assert "CERTIFICATE_VERIFY_FAILED" in jobs.find_one({})["lastError"]["message"]


def test_the_request_carries_the_documented_headers_and_the_job(tmp_path: Path) -> None:
    """A real HTTP server records what the handler sends: headers, the exact bytes signed, the job."""
    import asyncio

    from muzo_ops.queue.handlers.http_handler import HttpHandler
    from muzo_ops.queue.jobs import Job, JobType

    seen: list[tuple[dict[str, str], bytes]] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        handler = HttpHandler(f"http://127.0.0.1:{server.server_address[1]}/api/jobs/mockup", secret=SIGNING_SECRET)
        job = Job("65f0a1b2c3d4e5f601234567", JobType.MOCKUP, mockup_payload(4), 2, 3, "6b0cfea76fd7fe601a9bec16")

        async def call() -> Any:
            try:
                return await handler.run(job)
            finally:
                await handler.aclose()

        assert asyncio.run(call()) is None  # an empty 2xx body is a null result
    finally:
        server.shutdown()
        server.server_close()
    headers, body = seen[0]
    assert headers["content-type"] == "application/json" and headers["idempotency-key"] == job.id
    assert signing.verify(headers["muzo-signature"], body, [SIGNING_SECRET])
    assert json.loads(body) == {"id": job.id, "type": "MOCKUP", "payload": mockup_payload(4), "attempt": 2,
                                "maxAttempts": 3, "projectId": "6b0cfea76fd7fe601a9bec16"}
