"""The job dashboard's overview and first list page at 10k and 50k jobs, against a naive ``$group`` count.

Not a test (machines are noisy). In one run on one server (a SecantusDB it
starts, or --uri): for each collection size, a fresh database with the
queue's and the dashboard's indexes and a realistic mix (mostly DONE, some
FAILED, PENDING due and scheduled, RUNNING, three types); then, each the
median of --runs, timed through the real app (Starlette's TestClient, the
counts cache off so every overview asks MongoDB):

- ``GET /`` (the overview: 28 commands, counts capped at 10,000),
- ``GET /jobs`` and ``GET /jobs?status=FAILED&type=MOCKUP`` (one ``find`` each),
- the naive count: one ``$group`` by (type, status) over the whole
  collection (what ``jobs status`` and the dashboards the issue names do).

It prints the times, the commands each page sent, and the ratio 50k/10k of
each: the pages should grow no faster than the server's own scan cost, which
the naive count shows.

    python bench/dashboard.py --sizes 10000,50000 --runs 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from bson import ObjectId  # noqa: E402
from pymongo import MongoClient, monitoring  # noqa: E402
from servers import Secantus  # noqa: E402

from muzo_ops.queue.opsstore import ensure_operator_indexes, status_pipeline  # noqa: E402
from muzo_ops.queue.store import CODEC_OPTIONS  # noqa: E402

Doc = dict[str, Any]
PASSWORD = "bench-dashboard-password-0001"


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def progress(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


def documents(n: int) -> list[Doc]:
    """``n`` Prisma-shaped jobs: 85 % DONE, 5 % FAILED, 4 % due, 4 % scheduled, 2 % RUNNING; three types."""
    now = dt.datetime.now(dt.UTC)
    types = ("GENERATION", "MOCKUP", "FULFILLMENT")
    out = []
    for i in range(n):
        r = i % 100
        status = "DONE" if r < 85 else "FAILED" if r < 90 else "PENDING" if r < 98 else "RUNNING"
        available = now + dt.timedelta(hours=1) if 94 <= r < 98 else now - dt.timedelta(seconds=i % 600)
        out.append({"_id": ObjectId(), "type": types[i % 3], "status": status, "attempts": 1, "maxAttempts": 3,
                    "availableAt": available, "lockedAt": None,
                    "lockedUntil": now + dt.timedelta(minutes=5) if status == "RUNNING" else None,
                    "lockedBy": f"host:{i % 4}:w" if status == "RUNNING" else None,
                    "lastError": {"name": "E", "message": "boom"} if status == "FAILED" else None,
                    "payload": {"orderId": f"o{i}", "outputAssetId": f"a{i}", "productVariantId": "v"},
                    "result": {"ok": True} if status == "DONE" else None, "projectId": None,
                    "createdAt": now - dt.timedelta(seconds=n - i),
                    "updatedAt": now - dt.timedelta(seconds=(n - i) // 10)})
    return out


def median_ms(run: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def ok(response: Any) -> None:
    """Only pages are timed: an error page (a 503 past the bound) stops the bench."""
    if response.status_code != 200:
        raise SystemExit(f"error: {response.request.url.path} answered {response.status_code}")


def measure(uri: str, size: int, runs: int) -> dict[str, tuple[float, int]]:
    """(median ms, commands) per measured thing at ``size`` jobs."""
    from starlette.testclient import TestClient

    from muzo_ops.dashboard import create_app
    from muzo_ops.logs import Logger

    commands = Commands()
    client: MongoClient[Doc] = MongoClient(uri, event_listeners=[commands])
    name = f"bench_dashboard_{size}"
    client.drop_database(name)
    jobs = client[name].get_collection("Job", codec_options=CODEC_OPTIONS)
    jobs.create_index([("type", 1), ("status", 1), ("availableAt", 1)])
    jobs.create_index([("status", 1), ("lockedUntil", 1)])
    ensure_operator_indexes(jobs)
    progress(f"inserting {size:,} jobs")
    docs = documents(size)
    for start in range(0, size, 5000):
        jobs.insert_many(docs[start:start + 5000], ordered=False)
    values = {"DATABASE_URL": uri, "DASHBOARD_PASSWORD": PASSWORD}
    # the answer bound (5 s) is lifted: this measures what a page costs, and a scanning server at 50k jobs
    # may take longer than the bound (a page would then be a 503, timed as if it were the page)
    app = create_app(values, jobs=jobs, change_streams=False, poll_s=3600, cache_s=0.0, timeout_s=600.0,
                     logger=Logger("bench", "warn"))
    results: dict[str, tuple[float, int]] = {}
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()}
    with TestClient(app, headers=auth, base_url="http://127.0.0.1") as http:
        for label, path in (("overview GET /", "/"), ("first page GET /jobs", "/jobs"),
                            ("GET /jobs?status=FAILED&type=MOCKUP", "/jobs?status=FAILED&type=MOCKUP")):
            assert http.get(path).status_code == 200  # warm: plans cached, connections open
            commands.count = 0
            http.get(path)
            sent = commands.count
            results[label] = (median_ms(lambda p=path: ok(http.get(p)), runs), sent)  # type: ignore[misc]
    list(jobs.aggregate(status_pipeline()))
    commands.count = 0
    list(jobs.aggregate(status_pipeline()))
    sent = commands.count
    results["naive $group count"] = (median_ms(lambda: list(jobs.aggregate(status_pipeline())), runs), sent)
    client.drop_database(name)
    client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000", help="comma list of collection sizes (default 10000,50000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measure; the median is shown (default 5)")
    parser.add_argument("--uri", help="benchmark this MongoDB instead of a fresh SecantusDB")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    server = None
    uri = args.uri
    if uri is None:
        progress("starting SecantusDB")
        server = Secantus(Path(tempfile.mkdtemp(prefix="muzo-bench-dash-")) / "data")
        server.start()
        uri = server.uri
    try:
        table = {size: measure(uri, size, args.runs) for size in sizes}
    finally:
        if server is not None:
            server.stop()
    labels = list(table[sizes[0]])
    where = "SecantusDB (a fresh server)" if server else "--uri"
    print(f"\njob dashboard on {where}, median of {args.runs} runs (ms; commands sent per request)\n")
    head = f"{'':<40}" + "".join(f"{f'{s:,} jobs':>18}" for s in sizes)
    if len(sizes) > 1:
        head += f"{f'{sizes[-1] // sizes[0]}x jobs: ratio':>22}"
    print(head)
    for label in labels:
        line = f"{label:<40}" + "".join(f"{table[s][label][0]:>10.1f} ms ({table[s][label][1]:>2})" for s in sizes)
        if len(sizes) > 1:
            line += f"{table[sizes[-1]][label][0] / table[sizes[0]][label][0]:>21.2f}x"
        print(line)
    naive = "naive $group count"
    print()
    for size in sizes:
        print(f"at {size:,} jobs: overview / naive $group = "
              f"{table[size]['overview GET /'][0] / table[size][naive][0]:.2f}; first list page / naive = "
              f"{table[size]['first page GET /jobs'][0] / table[size][naive][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
