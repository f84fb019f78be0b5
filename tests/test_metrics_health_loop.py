"""Issue 15.4: /healthz measures the event loop from outside it: an ``async def`` handler that
blocks the loop makes /healthz answer 503 past the documented bound, and 200 again after."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import threading
import time
from typing import Any

from muzo_ops import metrics
from muzo_ops.logs import Logger
from muzo_ops.queue.events import Observer
from muzo_ops.queue.jobs import Job, JobType
from muzo_ops.queue.worker import Worker, WorkerSettings
from tests.servers import Secantus
from tests.workers import mockup_payload, prisma_job

BLOCK_S = 4.0
BOUND_S = 1.0


async def _blocks_the_loop(job: Job) -> dict[str, Any]:
    time.sleep(BLOCK_S)  # the defect this catches: blocking inside a coroutine
    return {"ok": True}


def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_healthz_is_503_while_a_handler_blocks_the_loop(secantus: Secantus, db: tuple[str, Any]) -> None:
    name, collection = db
    settings = WorkerSettings.from_values({"DATABASE_URL": secantus.url(name)}, queues="mockup")
    observers: list[Observer] = []
    server = metrics.attach(observers, "127.0.0.1", 0, loop_bound_s=BOUND_S)
    worker = Worker(settings, {JobType.MOCKUP: _blocks_the_loop},
                    logger=Logger("muzo-worker", "warn", io.StringIO()), observers=observers)
    codes: list[tuple[float, int, dict[str, Any]]] = []
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while _healthz(server.port)[1].get("status") != "ok":
            assert time.monotonic() < deadline, _healthz(server.port)
            time.sleep(0.1)
        started = time.monotonic()
        collection.insert_one(prisma_job("MOCKUP", mockup_payload()))
        while time.monotonic() - started < BLOCK_S + 4:
            code, body = _healthz(server.port)
            codes.append((time.monotonic() - started, code, body))
            time.sleep(0.2)
    finally:
        worker.stopping.set()  # plain set from another thread: the loop sees it on its next turn
        worker.wake.set()
        runner.join(30)
        server.stop()
    unhealthy = [body for _t, code, body in codes if code == 503]
    assert unhealthy, codes
    assert any("event loop" in reason for body in unhealthy for reason in body.get("reasons", [])), unhealthy
    assert codes[-1][1] == 200, codes[-3:]  # answered again once the handler gave the loop back
    assert collection.find_one({})["status"] == "DONE"
