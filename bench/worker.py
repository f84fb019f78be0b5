"""Benchmark the queue worker against (a) the bare claim/complete limit and (c) the old algorithm.

All in one run on one MongoDB server (a SecantusDB it starts, or --uri):
  (a) limit: a bare loop of claim + complete round trips, no worker around it;
  (b) muzo_ops's worker with 1 and 4 processes (demo echo handler);
  (c) the old algorithm of the reference (bench/old_worker.py), 1 and 4 processes.
Prints jobs/s, (b)/(a), (b)/(c), and enqueue-to-start latency p50/p95 for (b)
and (c) (lockedAt − createdAt of jobs inserted one by one into an idle queue).

    python bench/worker.py --jobs 30 --rounds 4 --latency-jobs 40
    python bench/worker.py --uri 'mongodb://127.0.0.1:27017/bench?replicaSet=rs0'
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from pymongo import MongoClient  # noqa: E402
from servers import Secantus  # noqa: E402
from workers import mockup_payload, prisma_job  # noqa: E402

EXTRA: list[str] = []


def progress(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


def fresh(client: MongoClient[dict[str, Any]], db: str) -> Any:
    client.drop_database(db)
    jobs = client[db]["Job"]
    jobs.create_index([("type", 1), ("status", 1), ("availableAt", 1)])
    jobs.create_index([("status", 1), ("lockedUntil", 1)])
    return jobs


def with_db(uri: str, db: str) -> str:
    base, _, query = uri.partition("?")
    scheme, _, rest = base.partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{db}" + (f"?{query}" if query else "")


async def bare_limit(uri: str, n: int) -> float:
    from pymongo import AsyncMongoClient

    from muzo_ops.queue.jobs import JobType
    from muzo_ops.queue.store import JobStore

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    store = JobStore(client.get_default_database())
    start = time.perf_counter()
    done = 0
    while True:
        claimed = await store.claim("bare", [JobType.MOCKUP], 300)
        if claimed is None:
            break
        await store.complete(claimed[1], {"ok": True})
        done += 1
    elapsed = time.perf_counter() - start
    await client.close()
    assert done == n, (done, n)
    return n / elapsed


def start_processes(kind: str, uri: str, count: int, folder: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    procs = []
    for i in range(count):
        log = folder / f"{kind}-{i}-{random.getrandbits(20)}.log"
        if kind == "new":
            env_file = folder / "bench.env"
            env_file.write_text(f"DATABASE_URL={uri}\nWORKER_QUEUES=mockup\nLOG_LEVEL=warn\n")
            cmd = [sys.executable, "-m", "muzo_ops", "worker", "--env-file", str(env_file),
                   "--handler", "MOCKUP=muzo_ops.queue.handlers.demo:echo", *EXTRA]
        else:
            cmd = [sys.executable, str(HERE / "old_worker.py"), uri]
        with open(log, "wb") as out:
            procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), log))
    return procs


def wait_ready(procs: list[tuple[subprocess.Popen[bytes], Path]], jobs: Any, kind: str) -> None:
    # Ready = a probe job inserted now is done by the pool.
    probe = prisma_job("MOCKUP", mockup_payload(-1))
    jobs.insert_one(probe)
    deadline = time.monotonic() + 60
    while jobs.find_one({"_id": probe["_id"], "status": "DONE"}) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"{kind} workers did not start: see {procs[0][1]}")
        time.sleep(0.05)
    time.sleep(1.2)  # every process past start-up and idle
    jobs.delete_one({"_id": probe["_id"]})


def stop(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    for proc, _ in procs:
        proc.terminate()
    for proc, _ in procs:
        proc.wait(60)


def throughput(kind: str, client: MongoClient[dict[str, Any]], uri: str, db: str, size: int, rounds: int,
               count: int, folder: Path) -> float:
    """Jobs/s over ``rounds`` batches of ``size`` jobs; DONE ones are cleared between rounds."""
    import datetime as dt

    jobs = fresh(client, db)
    procs = start_processes(kind, with_db(uri, db), count, folder)
    busy = 0.0
    try:
        wait_ready(procs, jobs, kind)
        for r in range(rounds):
            start = dt.datetime.now(dt.UTC)
            jobs.insert_many([prisma_job("MOCKUP", mockup_payload(r * size + i)) for i in range(size)])
            # Poll rarely (the poll itself loads the server); time comes from the documents.
            while jobs.count_documents({"status": "DONE"}) < size:
                time.sleep(0.25)
            last = max(d["updatedAt"] for d in jobs.find({"status": "DONE"}, {"updatedAt": 1}))
            busy += (last.replace(tzinfo=dt.UTC) - start).total_seconds()
            jobs.delete_many({"status": "DONE"})
        return size * rounds / busy
    finally:
        stop(procs)


def latency(kind: str, client: MongoClient[dict[str, Any]], uri: str, db: str, n: int,
            folder: Path) -> tuple[float, float]:
    jobs = fresh(client, db)
    procs = start_processes(kind, with_db(uri, db), 1, folder)
    try:
        wait_ready(procs, jobs, kind)
        ids = []
        for i in range(n):
            doc = prisma_job("MOCKUP", mockup_payload(i))
            jobs.insert_one(doc)
            ids.append(doc["_id"])
            while jobs.find_one({"_id": doc["_id"], "status": "DONE"}) is None:
                time.sleep(0.005)
            time.sleep(random.uniform(0.05, 0.25))
        waits = [(d["lockedAt"] - d["createdAt"]).total_seconds() * 1000
                 for d in jobs.find({"_id": {"$in": ids}}) if d.get("lockedAt")]
        if len(waits) < n:  # the old worker clears nothing it should keep; fall back to updatedAt
            waits = [(d["updatedAt"] - d["createdAt"]).total_seconds() * 1000
                     for d in jobs.find({"_id": {"$in": ids}})]
        waits.sort()
        return statistics.median(waits), waits[int(0.95 * (len(waits) - 1))]
    finally:
        stop(procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30, help="jobs per round: the collection's size")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per throughput run")
    parser.add_argument("--latency-jobs", type=int, default=40)
    parser.add_argument("--uri", help="benchmark this MongoDB instead of a fresh SecantusDB")
    parser.add_argument("--worker-arg", action="append", default=[], help="extra argument for (b)'s workers")
    args = parser.parse_args()
    EXTRA.extend(args.worker_arg)
    folder = Path(tempfile.mkdtemp(prefix="muzo-bench-"))
    server = None
    uri = args.uri
    if uri is None:
        progress("starting SecantusDB")
        server = Secantus(folder / "data")
        server.start()
        uri = server.url("bench")
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    n = args.jobs
    try:
        progress(f"(a) bare claim+complete loop over {n} jobs")
        jobs = fresh(client, "bench_a")
        jobs.insert_many([prisma_job("MOCKUP", mockup_payload(i)) for i in range(n)])
        a = asyncio.run(bare_limit(with_db(uri, "bench_a"), n))
        results: dict[str, float] = {}
        for kind, count in (("new", 1), ("new", 4), ("old", 1), ("old", 4)):
            progress(f"{'(b) muzo_ops' if kind == 'new' else '(c) old algorithm'} worker x{count}, "
                     f"{args.rounds} rounds of {n} jobs")
            results[f"{kind}{count}"] = throughput(kind, client, uri, f"bench_{kind}{count}", n, args.rounds,
                                                   count, folder)
        progress(f"latency, {args.latency_jobs} jobs inserted one by one")
        lat_new = latency("new", client, uri, "bench_lat_new", args.latency_jobs, folder)
        lat_old = latency("old", client, uri, "bench_lat_old", args.latency_jobs, folder)
    finally:
        client.close()
        if server is not None:
            server.stop()
    hello_note = "SecantusDB (replica set, change streams)" if server else uri.split("@")[-1]
    print(f"server: {hello_note}; collection size: {n} jobs ({args.rounds} rounds for (b), (c)); "
          "handler: demo echo")
    print(f"(a) bare claim+complete loop      {a:8.1f} jobs/s")
    for count in (1, 4):
        b, c = results[f"new{count}"], results[f"old{count}"]
        print(f"(b) muzo_ops worker x{count}            {b:8.1f} jobs/s   (b)/(a) = {b / a:5.2f}   "
              f"(b)/(c) = {b / c:5.2f}")
        print(f"(c) old algorithm x{count}              {c:8.1f} jobs/s")
    print(f"enqueue-to-start latency (b): p50 {lat_new[0]:7.1f} ms   p95 {lat_new[1]:7.1f} ms")
    print(f"enqueue-to-start latency (c): p50 {lat_old[0]:7.1f} ms   p95 {lat_old[1]:7.1f} ms")
    print("aim: (b) >= 0.8 x (a) and >= 2 x (c); latency p50 < 50 ms with change streams")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
