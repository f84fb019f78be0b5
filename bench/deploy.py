"""Benchmark of ``muzo-ops deploy`` on real systemd hosts (Debian bookworm in systemd-nspawn, as root).

First deploy and no-change redeploy (phase 1 only: nothing restarts) to 1
and to 3 fresh hosts, through the Python-API driver (no interpreter start-up
in the figures). The release is built once before timing (it is cached on the
control machine, as on any later run), so the first deploy measures upload,
venv install, switch, restart and health gate. Prints figures and ratios:

    python bench/deploy.py --runs 5

Aims: a no-change redeploy within 1.5 s per host; 3 hosts in under 1.5x
the time of one. The fleet row (``--fleet 10``, default) boots that many
hosts (one queue each) and times a no-change redeploy and a deploy with one
env value changed (``--serial`` all hosts: one batch), against one host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from muzo_ops.deploy import driver  # noqa: E402
from tests.envdata import FULL, write_env  # noqa: E402
from tests.helpers import copy_checkout  # noqa: E402
from tests.nspawn import NspawnHost, build_rootfs, nspawn_unavailable  # noqa: E402
from tests.servers import Secantus  # noqa: E402


def deploy(inventory: Path, env: Path, work: Path, lines: list[str] | None = None, serial: int = 1
           ) -> tuple[float, driver.DeployResult]:
    start = time.perf_counter()
    result = driver.deploy(str(inventory), str(env), serial=serial, lock=work / "muzo-worker.lock",
                           source=work / "source", progress=(lines.append if lines is not None else print))
    took = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"error: deploy failed: {result.to_json()}")
    return took, result


def fleet_rows(hosts: list[NspawnHost], args: argparse.Namespace, work: Path, env: Path, db: Secantus) -> None:
    """1 host against ``args.fleet`` hosts: no-change redeploy and one env value changed (one batch)."""
    rows: dict[int, tuple[float, float]] = {}
    for group in (hosts[:1], hosts[1:args.fleet + 1]):
        inventory = work / f"fleet-{len(group)}.py"
        body = "".join(f"    ({h.name!r}, {dict(h.inventory_data(), muzo_queues='generation')!r}),\n" for h in group)
        inventory.write_text(f"workers = [\n{body}]\n")
        deploy(inventory, env, work, [], serial=len(group))
        same = statistics.median(deploy(inventory, env, work, [], serial=len(group))[0] for _ in range(args.runs))
        changed = []
        for run in range(max(1, args.runs // 2)):
            other = write_env(work / f"changed-{run}.env", dict(
                FULL, NODE_ENV="development", DATABASE_URL=db.url("bench", directConnection="true"),
                MUZO_WORKER_HANDLERS="GENERATION=muzo_ops.queue.handlers.demo:echo",
                LOG_LEVEL=("debug", "warn")[run % 2]))
            took, result = deploy(inventory, other, work, [], serial=len(group))
            if not all(any(op.startswith("restarted") for op in r.operations) for r in result.hosts.values()):
                raise SystemExit(f"error: an env change restarted nothing: {result.to_json()}")
            changed.append(took)
        rows[len(group)] = (same, statistics.median(changed))
        print(f"fleet row, {len(group)} host(s), --serial {len(group)}: no-change {same:.2f} s, one env value "
              f"changed {statistics.median(changed):.2f} s")
    one, many = rows[1], rows[args.fleet]
    print(f"ratio {args.fleet} hosts / 1 host: no-change {many[0] / one[0]:.2f}x, one env value changed "
          f"{many[1] / one[1]:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="no-change redeploys per host count (median shown)")
    parser.add_argument("--fleet", type=int, default=10, help="hosts of the fleet row (0: skip it)")
    args = parser.parse_args()
    reason = nspawn_unavailable()
    if reason:
        print(f"error: cannot boot systemd-nspawn hosts here: {reason}", file=sys.stderr)
        return 2
    build_rootfs()
    with tempfile.TemporaryDirectory(prefix="muzo-bench-deploy-") as tmp:
        work = Path(tmp)
        os.environ["MUZO_DEPLOY_CACHE"] = str(work / "cache")
        source = copy_checkout(work / "source")
        db = Secantus(work / "db")
        db.start()
        hosts = [NspawnHost(f"muzo-bench-{i}", work) for i in range(max(4, args.fleet + 1))]
        try:
            for host in hosts:
                host.boot()
            env = write_env(work / "worker.env", dict(
                FULL, NODE_ENV="development", DATABASE_URL=db.url("bench", directConnection="true"),
                MUZO_WORKER_HANDLERS="GENERATION=muzo_ops.queue.handlers.demo:echo"))
            # Build the release once (control-machine cache), outside the timings.
            start = time.perf_counter()
            plans = driver.plan_hosts(driver.Target("", ["x"], {"x": {}}), str(env))
            release = driver.build_releases(plans, work / "muzo-worker.lock", lambda _: None, source)["x"]
            print(f"release {release.name} built in {time.perf_counter() - start:.1f} s (not in the figures)")
            figures: dict[int, tuple[float, float]] = {}
            for group in (hosts[:1], hosts[1:4]):
                inventory = work / f"inventory-{len(group)}.py"
                rows = "".join(f"    ({h.name!r}, {h.inventory_data()!r}),\n" for h in group)
                inventory.write_text(f"workers = [\n{rows}]\n")
                lines: list[str] = []
                first, _ = deploy(inventory, env, work, lines)
                phase1 = next((ln for ln in lines if ln.startswith("phase 1")), "")
                print(f"  first deploy to {len(group)}: {phase1}; then one batch per host (--serial 1)")
                again = []
                for _ in range(args.runs):
                    took, result = deploy(inventory, env, work, [])
                    if any(r.changed for r in result.hosts.values()):
                        raise SystemExit(f"error: a no-change redeploy changed something: {result.to_json()}")
                    again.append(took)
                figures[len(group)] = (first, statistics.median(again))
                print(f"{len(group)} host(s): first deploy {first:.2f} s, no-change redeploy "
                      f"{statistics.median(again):.2f} s (median of {args.runs}, "
                      f"{statistics.median(again) / len(group):.2f} s per host)")
            if args.fleet:
                fleet_rows(hosts, args, work, env, db)
        finally:
            for host in hosts:
                host.stop()
            db.stop()
    one, three = figures[1], figures[3]
    print(f"ratio 3 hosts / 1 host: first deploy {three[0] / one[0]:.2f}x, no-change redeploy "
          f"{three[1] / one[1]:.2f}x (aim < 1.5x)")
    print(f"no-change redeploy per host: {one[1]:.2f} s (1 host), {three[1] / 3:.2f} s (3 hosts) (aim <= 1.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
