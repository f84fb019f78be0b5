"""Issue 7: a MongoDB outage longer than the lock runs no finished job twice."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from tests.servers import Secantus
from tests.workers import mockup_payload, prisma_job, records, start_worker

LOCK_S = 3.0
SELECTION_MS = 1000
OUTAGE_S = 7.0  # longer than the lock plus the driver's server selection


def test_server_down_longer_than_the_lock_repeats_no_finished_job(tmp_path: Path) -> None:
    server = Secantus(tmp_path / "own-data")
    server.start()
    workers = []
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(server.uri, serverSelectionTimeoutMS=20000)
        jobs = client["outage"]["Job"]
        # Six jobs of 2 s: all running on 3 workers x 2 slots when the server dies, all
        # finished (side effect done) during the outage, their final write still pending.
        docs = [prisma_job("MOCKUP", mockup_payload(i, seconds=2.0)) for i in range(6)]
        jobs.insert_many(docs)
        url = server.url("outage", serverSelectionTimeoutMS=str(SELECTION_MS))
        record = tmp_path / "record.txt"
        workers = [start_worker(tmp_path, url, "--lock-seconds", str(LOCK_S), "--concurrency", "2",
                                "--poll-seconds", "0.2", name=f"w{i}", record=record) for i in range(3)]
        deadline = time.monotonic() + 60
        while sum(e == "start" for _, e, _ in records(record)) < 6:
            assert time.monotonic() < deadline, "the six jobs did not all start"
            time.sleep(0.05)
        server.kill9()
        killed_at = time.monotonic()
        time.sleep(OUTAGE_S)
        ended_during_outage = sum(e == "end" for _, e, _ in records(record))
        server.start()
        back_at = time.monotonic()
        deadline = time.monotonic() + 60
        while jobs.count_documents({"status": "DONE"}) < 6:
            assert time.monotonic() < deadline, list(jobs.find({}, {"payload": 0}))
            time.sleep(0.1)
        all_done_s = time.monotonic() - back_at
        time.sleep(LOCK_S + 1)  # a wrong takeover would start now
        runs = Counter(job_id for job_id, event, _ in records(record) if event == "start")
        assert ended_during_outage == 6, ended_during_outage
        assert len(runs) == 6 and set(runs.values()) == {1}, runs
        assert jobs.count_documents({"status": "DONE", "attempts": 1}) == 6
        # the owners wrote promptly once the server answered: well within the takeover pause
        assert all_done_s < LOCK_S, all_done_s
        for worker in workers:
            assert worker.proc.poll() is None
            assert "MongoDB connection error in worker loop" in worker.messages()
        print(f"outage {back_at - killed_at:.1f}s, lock {LOCK_S}s; all 6 DONE {all_done_s:.2f}s after restart")
        client.close()
    finally:
        for worker in workers:
            worker.terminate()
        server.stop()
