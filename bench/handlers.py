"""Per-job cost of exec and HTTP handlers against a Python handler, in one run.

Two measures, each kind interleaved round by round so the machine's noise
hits them alike:

  (1) the handler call alone, in this process: a Python coroutine handler
      (the demo ``echo``), an exec handler (``node examples/muzo-jobs/run-job.js``,
      one Node process per job) and an HTTP handler (the documented Next.js
      route on plain Node, ``examples/muzo-jobs/http-server.js``, signed POSTs
      over one kept-alive connection); median milliseconds per call;
  (2) the whole worker: ``muzo-ops worker --burst`` on ``--jobs`` MOCKUP jobs
      against a SecantusDB this script starts, one process per kind;
      seconds per job, between the first and the last completion (start-up excluded).

Prints each kind's time per job, its difference to Python's, and the ratio.

    python bench/handlers.py --calls 40 --jobs 40 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from pymongo import MongoClient  # noqa: E402
from servers import Secantus, stop_pid  # noqa: E402
from workers import mockup_payload, prisma_job  # noqa: E402

from muzo_ops.queue import handlers  # noqa: E402
from muzo_ops.queue.jobs import Job, JobType  # noqa: E402

RUN_JOB = ROOT / "examples" / "muzo-jobs" / "run-job.js"
SERVER = ROOT / "examples" / "muzo-jobs" / "http-server.js"
SECRET = "bench-signing-secret-0123456789abcdef"
KINDS = ("python", "exec", "http")


def progress(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


def start_route_server() -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "NODE_PATH": str(ROOT / "tests" / "node" / "node_modules"),
           "MUZO_HANDLER_SIGNING_SECRET": SECRET}
    proc = subprocess.Popen(["node", str(SERVER), "0"], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    match = re.fullmatch(r"listening (\d+)\n", proc.stdout.readline().decode())
    if not match:
        stop_pid(proc)
        raise SystemExit("the route server did not start (npm ci in tests/node?)")
    return proc, f"http://127.0.0.1:{match.group(1)}/api/jobs/mockup"


def specs(url: str) -> dict[str, str]:
    return {"python": "MOCKUP=muzo_ops.queue.handlers.demo:echo",
            "exec": f"MOCKUP=exec:node {RUN_JOB} mockup",
            "http": f"MOCKUP={url}"}


async def call_round(loaded: dict[str, Any], calls: int, times: dict[str, list[float]]) -> None:
    job = Job("65f0a1b2c3d4e5f601234567", JobType.MOCKUP, mockup_payload(1), 1, 3, None)
    for kind in KINDS:
        handler = loaded[kind]
        for _ in range(calls):
            started = time.perf_counter()
            result = handler(job)
            if asyncio.iscoroutine(result):
                await result
            times[kind].append(time.perf_counter() - started)


async def measure_calls(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    values = {"MUZO_HANDLER_SIGNING_SECRET": SECRET}
    loaded = {kind: handlers.load([JobType.MOCKUP], [spec], values)[JobType.MOCKUP]
              for kind, spec in specs(url).items()}
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    await call_round(loaded, 3, {kind: [] for kind in KINDS})  # warm-up
    for number in range(rounds):
        progress(f"handler calls, round {number + 1}/{rounds}")
        await call_round(loaded, calls, times)
    for owner in handlers.owners({JobType.MOCKUP: loaded["http"]}):
        await owner.aclose()
    return times


def burst(secantus: Secantus, folder: Path, kind: str, spec: str, jobs_count: int) -> float:
    """Seconds per job of one ``worker --burst`` over ``jobs_count`` fresh jobs."""
    db = f"bench_{kind}_{time.time_ns()}"
    client: MongoClient[dict[str, Any]] = MongoClient(secantus.uri)
    jobs = client[db]["Job"]
    jobs.insert_many([prisma_job("MOCKUP", mockup_payload(i)) for i in range(jobs_count)])
    env_file = folder / f"{db}.env"
    env_file.write_text(f"DATABASE_URL={secantus.url(db)}\nWORKER_QUEUES=mockup\nLOG_LEVEL=warn\n"
                        f"MUZO_HANDLER_SIGNING_SECRET={SECRET}\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "-m", "muzo_ops", "worker", "--env-file", str(env_file), "--burst",
                    "--handler", spec], check=True, env=env, stdout=subprocess.DEVNULL, timeout=600)
    done = [d["updatedAt"] for d in jobs.find({"status": "DONE"}, {"updatedAt": 1})]
    if len(done) != jobs_count:
        raise SystemExit(f"{kind}: {len(done)} of {jobs_count} jobs DONE")
    client.drop_database(db)
    client.close()
    # One job at a time: the span between the first and the last completion over the jobs between.
    return (max(done) - min(done)).total_seconds() / (jobs_count - 1)


def report(title: str, unit: str, scale: float, per_kind: dict[str, float]) -> None:
    print(f"\n{title}")
    base = per_kind["python"]
    for kind in KINDS:
        value = per_kind[kind]
        print(f"  {kind:<7} {value * scale:9.2f} {unit}/job   +{(value - base) * scale:8.2f} {unit} vs python   "
              f"x{value / base:7.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="handler calls per kind per round")
    parser.add_argument("--jobs", type=int, default=40, help="jobs per worker run (at least 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (kinds interleaved)")
    args = parser.parse_args(argv)
    server, url = start_route_server()
    try:
        times = asyncio.run(measure_calls(url, args.calls, args.rounds))
        report(f"(1) the handler call alone, median of {args.calls * args.rounds} calls", "ms", 1000,
               {kind: statistics.median(values) for kind, values in times.items()})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            secantus = Secantus(folder / "data")
            secantus.start()
            try:
                per_job: dict[str, list[float]] = {kind: [] for kind in KINDS}
                for number in range(args.rounds):
                    for kind, spec in specs(url).items():
                        progress(f"worker --burst, {kind}, round {number + 1}/{args.rounds}")
                        per_job[kind].append(burst(secantus, folder, kind, spec, args.jobs))
            finally:
                secantus.stop()
        report(f"(2) the whole worker (--burst, {args.jobs} jobs, median of {args.rounds} runs)", "ms", 1000,
               {kind: statistics.median(values) for kind, values in per_job.items()})
    finally:
        stop_pid(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
