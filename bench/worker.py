"""Benchmark the queue worker against (a) the bare claim/complete limit and (c) the old algorithm.

All in one run on one MongoDB server (a SecantusDB it starts, or --uri):
  (a) limit: a bare loop of claim + complete round trips, no worker around it;
  (b) muzo_ops's worker with 1 and 4 processes (demo echo handler);
  (c) the old algorithm of the reference (bench/old_worker.py), 1 and 4 processes.
Prints jobs/s, (b)/(a), (b)/(c), and enqueue-to-start latency p50/p95 for (b)
and (c) (lockedAt − createdAt of jobs inserted one by one into an idle queue).

Then the worker's own CPU per job (what caps it against a fast real MongoDB,
where the server is no longer the bottleneck): the process's utime + stime
from /proc/PID/stat over ``--cpu-jobs`` jobs, start-up excluded (read once
the worker logged "Worker bootstrapped" and sat idle a moment, and again
once the last job is DONE), for one worker process at LOG_LEVEL=info with
change streams on (the default), with ``--no-change-streams``, and with
``--metrics-port``; against a bare loop process on the same jobs
(synchronous pymongo: find_one_and_update to claim, update_one to
complete), measured the same way. Median of ``--cpu-runs`` runs each, the
kinds interleaved. Prints worker/bare and metrics/no-metrics.

    python bench/worker.py --jobs 30 --rounds 4 --latency-jobs 40
    python bench/worker.py --cpu-only --cpu-jobs 300 --cpu-runs 5
    python bench/worker.py --uri 'mongodb://127.0.0.1:27017/bench?replicaSet=rs0'
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from pymongo import MongoClient  # noqa: E402
from servers import Secantus, free_port  # noqa: E402
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


# ---------------------------------------------------------------- CPU per job

CPU_KINDS = ("bare", "worker", "no-change-streams", "metrics")
CPU_WORKER_ARGS = {"worker": [], "no-change-streams": ["--no-change-streams"], "metrics": ["--metrics-port"]}


def process_cpu(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_loop_child(uri: str) -> int:
    """``--bare-loop URI``: claim + complete every due MOCKUP job with synchronous pymongo, on "go".

    Says "ready" once connected, waits for a line on stdin, runs until no job
    is due, says "done N", then waits for stdin to close (so the parent reads
    its CPU time while it still exists).
    """
    from pymongo import ReturnDocument

    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    jobs = client.get_default_database()["Job"]
    client.admin.command("ping")
    print("ready", flush=True)
    sys.stdin.readline()
    done = 0
    while True:
        now = dt.datetime.now(dt.UTC)
        doc = jobs.find_one_and_update(
            {"type": "MOCKUP", "status": "PENDING", "availableAt": {"$lte": now}},
            {"$set": {"status": "RUNNING", "lockedBy": "bare", "lockedAt": now,
                      "lockedUntil": now + dt.timedelta(seconds=300), "updatedAt": now}, "$inc": {"attempts": 1}},
            sort=[("availableAt", 1), ("createdAt", 1)], return_document=ReturnDocument.AFTER)
        if doc is None:
            break
        jobs.update_one({"_id": doc["_id"], "lockedBy": "bare", "attempts": doc["attempts"], "status": "RUNNING"},
                        {"$set": {"status": "DONE", "result": {"ok": True}, "lockedBy": None, "lockedAt": None,
                                  "lockedUntil": None, "updatedAt": dt.datetime.now(dt.UTC)}})
        done += 1
    print(f"done {done}", flush=True)
    sys.stdin.read()
    client.close()
    return 0


def wait_done(jobs: Any, n: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 600
    while jobs.count_documents({"status": "DONE"}) < n:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker stopped or stalled: see {log}")
        time.sleep(0.1)


def cpu_run(kind: str, client: MongoClient[dict[str, Any]], uri: str, n: int, folder: Path) -> float:
    """CPU seconds per job of one process of ``kind`` over ``n`` jobs."""
    db = f"bench_cpu_{kind.replace('-', '_')}"
    jobs = fresh(client, db)
    docs = [prisma_job("MOCKUP", mockup_payload(i)) for i in range(n)]
    log = folder / f"cpu-{kind}-{random.getrandbits(20)}.log"
    if kind == "bare":
        proc = subprocess.Popen([sys.executable, __file__, "--bare-loop", with_db(uri, db)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            if proc.stdout.readline().strip() != b"ready":
                raise SystemExit("the bare loop did not start")
            jobs.insert_many(docs)
            start = process_cpu(proc.pid)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            line = proc.stdout.readline().decode().split()
            used = process_cpu(proc.pid) - start
            if line != ["done", str(n)]:
                raise SystemExit(f"the bare loop said {line}")
            return used / n
        finally:
            proc.stdin.close()
            proc.wait(30)
    env_file = folder / f"cpu-{kind}.env"
    env_file.write_text(f"DATABASE_URL={with_db(uri, db)}\nWORKER_QUEUES=mockup\n")
    # The port is a base: the mockup queue's process binds base + 1.
    extra = [a if a != "--metrics-port" else f"--metrics-port={free_port() - 1}" for a in CPU_WORKER_ARGS[kind]]
    cmd = [sys.executable, "-m", "muzo_ops", "worker", "--env-file", str(env_file),
           "--handler", "MOCKUP=muzo_ops.queue.handlers.demo:echo", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"Worker bootstrapped" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start: see {log}")
            time.sleep(0.05)
        time.sleep(1.0)  # past start-up: the first claim, the sweep, the change stream opened
        start = process_cpu(proc.pid)
        jobs.insert_many(docs)
        wait_done(jobs, n, proc, log)
        used = process_cpu(proc.pid) - start
        if kind == "metrics" and b"metrics" not in log.read_bytes().lower():
            progress("note: no metrics line in the worker's log")
        return used / n
    finally:
        proc.terminate()
        proc.wait(60)


def cpu_per_job(client: MongoClient[dict[str, Any]], uri: str, n: int, runs: int,
                folder: Path, kinds: Sequence[str] = CPU_KINDS) -> dict[str, list[float]]:
    """CPU seconds per job, ``runs`` runs of each kind, interleaved."""
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    for r in range(runs):
        for kind in kinds:
            progress(f"CPU per job, run {r + 1}/{runs}: {kind} over {n} jobs")
            results[kind].append(cpu_run(kind, client, uri, n, folder))
    return results


def print_cpu(results: dict[str, list[float]], n: int) -> None:
    if not results:
        return
    med = {kind: statistics.median(values) for kind, values in results.items()}
    runs = len(next(iter(results.values())))
    print(f"CPU per job (utime+stime of the process, {n} jobs, median of {runs} runs; "
          "one worker process, LOG_LEVEL=info, demo echo handler):")
    labels = {"bare": "bare loop (sync pymongo)", "worker": "worker (change streams on)",
              "no-change-streams": "worker --no-change-streams", "metrics": "worker --metrics-port"}
    for kind in results:
        each = " ".join(f"{v * 1000:.2f}" for v in results[kind])
        print(f"  {labels[kind]:<28} {med[kind] * 1000:6.2f} ms/job   (runs: {each})")
    ratios = (("worker", "bare", "worker / bare            ", "   (aim: 2x or less)"),
              ("no-change-streams", "bare", "no-change-streams / bare ", ""),
              ("metrics", "worker", "metrics / no-metrics     ", "   (aim: 1.05 or less)"))
    for top, bottom, label, aim in ratios:
        if top in med and bottom in med:
            print(f"  {label}   {med[top] / med[bottom]:6.2f}x{aim}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30, help="jobs per round: the collection's size")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per throughput run")
    parser.add_argument("--latency-jobs", type=int, default=40)
    parser.add_argument("--uri", help="benchmark this MongoDB instead of a fresh SecantusDB")
    parser.add_argument("--worker-arg", action="append", default=[], help="extra argument for (b)'s workers")
    parser.add_argument("--cpu-jobs", type=int, default=300, help="jobs per CPU-per-job run")
    parser.add_argument("--cpu-runs", type=int, default=3, help="CPU-per-job runs of each kind")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU per job (skip jobs/s and latency)")
    parser.add_argument("--cpu-kinds", default=",".join(CPU_KINDS),
                        help=f"which CPU-per-job kinds to run (default: {','.join(CPU_KINDS)}; '': none)")
    parser.add_argument("--bare-loop", metavar="URI", help=argparse.SUPPRESS)  # the bare loop's own process
    args = parser.parse_args()
    if args.bare_loop:
        return bare_loop_child(args.bare_loop)
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
        kinds = [k for k in args.cpu_kinds.split(",") if k]
        unknown = set(kinds) - set(CPU_KINDS)
        if unknown:
            parser.error(f"--cpu-kinds: unknown {', '.join(sorted(unknown))} (known: {', '.join(CPU_KINDS)})")
        cpu = cpu_per_job(client, uri, args.cpu_jobs, args.cpu_runs, folder, kinds)
        if args.cpu_only:
            print_cpu(cpu, args.cpu_jobs)
            return 0
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
    print_cpu(cpu, args.cpu_jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
