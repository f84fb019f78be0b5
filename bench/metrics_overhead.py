"""CPU cost of the metrics and health observers per job, against the no-op Observer.

Not a test (machines are noisy): it calls the events one job causes in the
worker (claim_tick, job_started, db_ok, job_finished, then an idle claim)
through ``Observers`` as the worker does, many times, and times them with
``time.process_time``; best of ``--repeat`` runs. Also times one scrape of
``/metrics`` (generate_latest) with every queue's series present.

    python bench/metrics_overhead.py --jobs 200000 --repeat 5
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import generate_latest

from muzo_ops.metrics.health import HealthState
from muzo_ops.metrics.observer import PrometheusObserver
from muzo_ops.queue.events import JobInfo, Observer, Observers, Outcome, WorkerInfo
from muzo_ops.queue.jobs import JobType

WORKER_CPU_PER_JOB_US = 4100.0  # issue 10: the worker's own CPU per job, measured on 300 jobs (bench/worker.py)
INFO = WorkerInfo("bench:1:000000", "0.1.0", tuple(JobType), 4, True, True)
OUTCOMES = (Outcome.DONE, Outcome.DONE, Outcome.DONE, Outcome.RETRIED, Outcome.FAILED)


def run(observer: Observer, jobs: int) -> float:
    """CPU seconds for ``jobs`` jobs' events through ``observer``."""
    fan = Observers([observer]) if not isinstance(observer, Observers) else observer
    fan.worker_ready(INFO)
    infos = [JobInfo(f"{n:024x}", t, 1, 3) for n in range(64) for t in JobType]
    start = time.process_time()
    for n in range(jobs):
        job = infos[n % len(infos)]
        fan.claim_tick()
        fan.job_started(job, 0.05)
        fan.db_ok()
        fan.job_finished(job, OUTCOMES[n % len(OUTCOMES)], 0.3, None)
        fan.claim_tick()
        fan.claim_idle()
    return time.process_time() - start


def best(make: Callable[[], Observer], jobs: int, repeat: int) -> float:
    return min(run(make(), jobs) for _ in range(repeat))


def scrape_cost(repeat: int) -> float:
    metrics = PrometheusObserver()
    run(metrics, 1000)
    metrics.connection_error("claim", 1, ConnectionError())
    start = time.process_time()
    for _ in range(repeat):
        generate_latest(metrics.registry)
    return (time.process_time() - start) / repeat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    noop = best(Observer, args.jobs, args.repeat)
    metrics = best(PrometheusObserver, args.jobs, args.repeat)
    both = best(lambda: Observers([PrometheusObserver(), HealthState()]), args.jobs, args.repeat)
    per = {name: seconds / args.jobs * 1e6 for name, seconds in
           (("no-op Observer", noop), ("PrometheusObserver", metrics), ("metrics + health (attach)", both))}
    base = per["no-op Observer"]
    print(f"{args.jobs} jobs x 6 events, best of {args.repeat}, CPU time (time.process_time)")
    for name, us in per.items():
        print(f"  {name:<28} {us:7.2f} µs/job   {us / base:5.2f}x no-op")
    added = per["metrics + health (attach)"] - base
    print(f"  added by metrics + health:   {added:7.2f} µs/job = {added / WORKER_CPU_PER_JOB_US * 100:.2f} % of the "
          f"worker's {WORKER_CPU_PER_JOB_US / 1000:.1f} ms CPU per job (issue 10's figure; aim: under 5 %)")
    scrape = scrape_cost(200)
    print(f"  one /metrics scrape (3 queues): {scrape * 1e6:.0f} µs CPU "
          f"(every 15 s: {scrape / 15 * 100:.3f} % of one core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
