"""The worker deploy end to end, on two real systemd hosts (Debian bookworm in systemd-nspawn).

The hosts are booted once for this module and the tests build on each other
in order (first deploy, no-change redeploy, env change, the plain pyinfra CLI
with --diff -vv, a failing release, --rollback): each test starts from the
state the previous one left, which it asserts. The jobs go to a SecantusDB on
this machine's 127.0.0.1, which the containers share.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from muzo_ops.deploy.plan import plan_host, read_env_file
from tests.envdata import FULL, SECRETS, write_env
from tests.helpers import copy_checkout
from tests.nspawn import NspawnHost, booted_hosts, build_rootfs, nspawn_unavailable
from tests.servers import Secantus
from tests.workers import generation_payload, prisma_job

ROOT = Path(__file__).resolve().parent.parent
DB = "deploytest"
UNAVAILABLE = nspawn_unavailable()
pytestmark = [pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no systemd-nspawn hosts: {UNAVAILABLE}"),
              pytest.mark.timeout(420)]


def muzo_deploy(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    return subprocess.run([sys.executable, "-m", "muzo_ops", "deploy", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {proc.returncode}): {proc.stdout!r} {proc.stderr[-3000:]!r}") from None
    return data


@pytest.fixture(scope="module")
def rootfs() -> Path:
    return build_rootfs()


@pytest.fixture(scope="module")
def hosts(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NspawnHost]]:
    with booted_hosts("muzo-d", tmp_path_factory.mktemp("nspawn")) as booted:
        yield booted


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A frozen copy of the checkout to ship (other edits in the tree do not change the release).

    Release bundles go to a cache inside it (MUZO_DEPLOY_CACHE), not to ~/.cache.
    """
    work = tmp_path_factory.mktemp("deploy")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MUZO_DEPLOY_CACHE", str(work / "cache"))
        yield _prepare(work)


def _prepare(work: Path) -> Path:
    source = work / "source"
    source.mkdir()
    copy_checkout(source)
    broken = work / "broken" / "muzo_broken"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("this release cannot start")\n')
    (broken.parent / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "muzo-broken"\nversion = "1.0"\ndependencies = []\n')
    return work


@pytest.fixture(scope="module")
def db(secantus: Secantus) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(secantus.uri)
    yield client[DB]["Job"]
    client.close()


def env_values(secantus: Secantus, **changes: str) -> dict[str, str]:
    # NODE_ENV=development: production refuses a DATABASE_URL on 127.0.0.1 (the test hosts share this
    # machine's network) and one without TLS.
    values = dict(FULL, NODE_ENV="development", DATABASE_URL=secantus.url(DB, directConnection="true"),
                  MUZO_WORKER_HANDLERS="GENERATION=muzo_ops.queue.handlers.demo:echo,"
                                       "MOCKUP=muzo_ops.queue.handlers.demo:echo", **changes)
    return values


def write_inventory(path: Path, hosts: list[NspawnHost], **data: Any) -> Path:
    rows = "".join(f"    ({h.name!r}, {dict(h.inventory_data(), **data)!r}),\n" for h in hosts)
    path.write_text(f"workers = [\n{rows}]\n")
    return path


def deploy_args(workdir: Path, inventory: Path, env: Path, *more: str) -> list[str]:
    return ["--inventory", str(inventory), "--env-file", str(env), "--source", str(workdir / "source"),
            "--lock", str(workdir / "muzo-worker.lock"), "--format", "json", "-y", *more]


def main_pid(host: NspawnHost, queue: str = "generation") -> str:
    return host.ssh(f"systemctl show -p MainPID --value muzo-worker@{queue}").stdout.strip()


def host_file_sha(host: NspawnHost, path: str) -> str:
    return host.ssh(f"sha256sum {path} | cut -d' ' -f1").stdout.strip()


def expected_sha(host: NspawnHost, env: Path) -> str:
    """The digest of the env file the deploy renders for ``host`` (inventory of the first deploy)."""
    data = {"muzo_queues": "generation,mockup", "muzo_concurrency": 2}
    return plan_host(host.name, read_env_file(str(env)), data).env_sha256


def run_job(jobs: Any, timeout: float = 30) -> dict[str, Any]:
    doc = prisma_job("GENERATION", generation_payload())
    jobs.insert_one(doc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found: dict[str, Any] = jobs.find_one({"_id": doc["_id"]})
        if found["status"] in ("DONE", "FAILED"):
            return found
        time.sleep(0.2)
    raise AssertionError(f"job still {found['status']} after {timeout}s")


def test_env_errors_stop_the_deploy_before_any_host_is_touched(hosts: list[NspawnHost], workdir: Path,
                                                               secantus: Secantus) -> None:
    env = write_env(workdir / "bad.env", env_values(secantus, OPENAI_API_KEY=""))
    inventory = write_inventory(workdir / "inventory.py", hosts)
    proc = muzo_deploy(*deploy_args(workdir, inventory, env))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "OPENAI_API_KEY" in proc.stderr
    assert not [s for s in SECRETS if s in proc.stdout + proc.stderr]
    for host in hosts:
        assert host.ssh("test -e /opt/muzo || test -e /etc/muzo || echo untouched").stdout == "untouched\n"


def test_first_deploy_runs_jobs_on_hardened_units(hosts: list[NspawnHost], workdir: Path, secantus: Secantus,
                                                  db: Any) -> None:
    env = write_env(workdir / "worker.env", env_values(secantus))
    inventory = write_inventory(workdir / "inventory.py", hosts, muzo_queues="generation,mockup",
                                muzo_concurrency=2)
    start = time.monotonic()
    proc = muzo_deploy(*deploy_args(workdir, inventory, env, "--serial", "1"))
    took = time.monotonic() - start
    data = as_json(proc)
    assert proc.returncode == 0 and data["ok"], proc.stderr
    print(f"\nfirst deploy to 2 hosts: {took:.1f} s")
    release = data["hosts"][hosts[0].name]["release"]
    for host in hosts:
        result = data["hosts"][host.name]
        assert result["healthy"] and not result["rolled_back"] and result["status"] == "deployed"
        assert result["release"] == release
        assert {"release-installed", "unit-switched muzo-worker@.service", "daemon-reload",
                "started muzo-worker@generation.service"} <= set(result["operations"])
        assert host.ssh("systemctl is-active muzo-worker@generation muzo-worker@mockup").stdout.split() == \
            ["active", "active"]
        assert host.ssh("readlink /opt/muzo/current").stdout.strip() == f"releases/{release}"
        assert host.ssh("stat -c '%a %U' /etc/muzo/worker.env /etc/muzo/state").stdout.split("\n")[:2] == \
            ["600 root", "700 root"]
        assert host.ssh("getent passwd muzo | cut -d: -f7").stdout.strip() == "/usr/sbin/nologin"
        # No pyinfra on the hosts, and no uploads left behind.
        assert host.ssh(f"test -e /opt/muzo/releases/{release}/venv/bin/pyinfra || echo none").stdout == "none\n"
        assert host.ssh("find /etc/muzo /opt/muzo -maxdepth 2 -name '.upload*'").stdout == ""
        # The credential is the service's own; nothing of the env file reaches the process environment.
        pid = main_pid(host)
        environ = host.ssh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout
        assert "CREDENTIALS_DIRECTORY=" in environ
        assert not [s for s in SECRETS if s in environ] and "DATABASE_URL" not in environ
        assert host.ssh(f"stat -c %U /proc/{pid}").stdout.strip() == "muzo"
        credential = "/run/credentials/muzo-worker@generation.service/worker.env"
        owner, mode = host.ssh(f"stat -c '%U %a' {credential}").stdout.split()
        print(f"{host.name}: credential {credential} owner {owner} mode {mode}")
        assert owner in ("root", "muzo") and int(mode, 8) & 0o077 == 0
        assert host.ssh(f"runuser -u nobody -- cat {credential}", check=False).returncode != 0
    job = run_job(db)
    assert job["status"] == "DONE" and "digest" in job["result"]
    report = hosts[0].ssh("systemd-analyze security muzo-worker@generation.service", check=False).stdout
    exposure = re.search(r"Overall exposure level for muzo-worker@generation.service: ([0-9.]+)", report)
    assert exposure is not None, report[-2000:]
    print(f"systemd-analyze security muzo-worker@generation.service: exposure {exposure.group(1)}")
    assert float(exposure.group(1)) <= 2.0


def test_redeploy_with_nothing_changed_restarts_nothing(hosts: list[NspawnHost], workdir: Path) -> None:
    pids = [main_pid(h) for h in hosts]
    start = time.monotonic()
    proc = muzo_deploy(*deploy_args(workdir, workdir / "inventory.py", workdir / "worker.env"))
    took = time.monotonic() - start
    data = as_json(proc)
    assert proc.returncode == 0 and data["ok"], proc.stderr
    print(f"\nno-change redeploy to 2 hosts: {took:.1f} s")
    for host, pid in zip(hosts, pids, strict=True):
        entry = data["hosts"][host.name]
        assert entry | {"release": "", "env": "", "desired_release": ""} == {
            "changed": 0, "release": "", "env": "", "desired_release": "", "healthy": True, "rolled_back": False,
            "status": "unchanged", "reason": "", "operations": [], "old_layout": None}
        assert entry["release"] == entry["desired_release"]
        assert main_pid(host) == pid


def test_dry_says_what_would_change_and_changes_nothing(hosts: list[NspawnHost], workdir: Path,
                                                       secantus: Secantus) -> None:
    env = write_env(workdir / "debug.env", env_values(secantus, LOG_LEVEL="debug"))
    before = [host_file_sha(h, "/etc/muzo/worker.env") for h in hosts]
    proc = muzo_deploy(*deploy_args(workdir, workdir / "inventory.py", env, "--dry"))
    data = as_json(proc)
    assert proc.returncode == 0, proc.stderr
    for host, sha in zip(hosts, before, strict=True):
        result = data["hosts"][host.name]
        assert result["status"] == "dry" and "stage env file" in result["operations"]
        assert "switch env file" in result["operations"]
        assert not [op for op in result["operations"] if op.startswith("install release")]
        assert host_file_sha(host, "/etc/muzo/worker.env") == sha
        assert host.ssh("ls -A /etc/muzo/state/env").stdout.split() == [sha]


def test_one_env_value_changed_means_only_a_restart(hosts: list[NspawnHost], workdir: Path,
                                                    secantus: Secantus, db: Any) -> None:
    env = workdir / "debug.env"
    pids = [main_pid(h) for h in hosts]
    proc = muzo_deploy(*deploy_args(workdir, workdir / "inventory.py", env, "--serial", "2"))
    data = as_json(proc)
    assert proc.returncode == 0 and data["ok"], proc.stderr
    for host, pid in zip(hosts, pids, strict=True):
        assert data["hosts"][host.name]["operations"] == [
            "env-staged", "env-switched", "restarted muzo-worker@generation.service",
            "restarted muzo-worker@mockup.service", "gated muzo-worker@generation.service",
            "gated muzo-worker@mockup.service"]
        assert main_pid(host) != pid
        assert host_file_sha(host, "/etc/muzo/worker.env") == expected_sha(host, env)
    assert run_job(db)["status"] == "DONE"


def test_plain_pyinfra_cli_keeps_the_env_file_out_of_diff_and_vv(hosts: list[NspawnHost], workdir: Path,
                                                                 secantus: Secantus) -> None:
    fresh = "sk-proj-brandnewsecretvalue-" + hashlib.sha256(os.urandom(8)).hexdigest()[:16]
    env = write_env(workdir / "rotated.env", env_values(secantus, LOG_LEVEL="debug", OPENAI_API_KEY=fresh))
    cmd = [shutil.which("pyinfra") or str(Path(sys.executable).parent / "pyinfra"), str(workdir / "inventory.py"),
           str(ROOT / "deploy" / "worker.py"), "--data", f"muzo_env_file={env}", "-y", "--diff", "-vv"]
    environ = dict(os.environ, MUZO_DEPLOY_SOURCE=str(workdir / "source"),
                   MUZO_DEPLOY_LOCK=str(workdir / "muzo-worker.lock"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=300, cwd=workdir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "switch and health gate" in output and "env file staged" in output
    assert not [s for s in [*SECRETS, fresh] if s in output]
    for host in hosts:
        assert host_file_sha(host, "/etc/muzo/worker.env") == expected_sha(host, env)
        assert host.ssh("systemctl is-active muzo-worker@generation").stdout.strip() == "active"
        assert host.ssh("find /etc/muzo /opt/muzo -maxdepth 2 -name '.upload*'").stdout == ""
        leftover = host.ssh(f"grep -rl -- {fresh} /etc /opt /tmp /var /root 2>/dev/null || true").stdout.split()
        # The live file, and its root-only copy by digest (what a rollback puts back).
        assert sorted(leftover) == sorted(["/etc/muzo/worker.env",
                                           f"/etc/muzo/state/env/{expected_sha(host, env)}"])
    # The CLI path and muzo-ops deploy agree: nothing left to do.
    data = as_json(muzo_deploy(*deploy_args(workdir, workdir / "inventory.py", env)))
    assert all(r["changed"] == 0 for r in data["hosts"].values()), data


def test_a_release_that_cannot_start_is_rolled_back_and_the_rollout_stops(
        hosts: list[NspawnHost], workdir: Path, db: Any) -> None:
    good = hosts[0].ssh("readlink /opt/muzo/current").stdout.strip()
    pid_other = main_pid(hosts[1])
    inventory = write_inventory(workdir / "broken.py", hosts, muzo_queues="generation,mockup", muzo_concurrency=2,
                                muzo_handler_packages=[str(workdir / "broken")],
                                muzo_handlers={"GENERATION": "muzo_broken:run"}, muzo_health_timeout=6)
    proc = muzo_deploy(*deploy_args(workdir, inventory, workdir / "rotated.env", "--serial", "1"))
    data = as_json(proc)
    assert proc.returncode == 1 and not data["ok"], proc.stderr
    first, second = data["hosts"][hosts[0].name], data["hosts"][hosts[1].name]
    # ``healthy`` and ``release`` say what the host runs now: the good release again, healthy.
    assert first["rolled_back"] and first["healthy"] is True and first["status"] == "rolled-back"
    assert "health gate failed" in first["reason"]
    assert first["release"] == good.split("/")[-1]
    assert second["status"] == "not-reached" and second["healthy"] and not second["rolled_back"]
    assert hosts[0].ssh("readlink /opt/muzo/current").stdout.strip() == good
    for host in hosts:
        assert host.ssh("systemctl is-active muzo-worker@generation muzo-worker@mockup").stdout.split() == \
            ["active", "active"]
    assert main_pid(hosts[1]) == pid_other
    assert run_job(db)["status"] == "DONE"


def test_rollback_on_demand(hosts: list[NspawnHost], workdir: Path, secantus: Secantus, db: Any) -> None:
    before = [host_file_sha(h, "/etc/muzo/worker.env") for h in hosts]
    env = write_env(workdir / "warn.env", env_values(secantus, LOG_LEVEL="warn"))
    data = as_json(muzo_deploy(*deploy_args(workdir, workdir / "inventory.py", env, "--serial", "2")))
    assert data["ok"], data
    after = [host_file_sha(h, "/etc/muzo/worker.env") for h in hosts]
    assert after[0] != before[0]
    proc = muzo_deploy(*deploy_args(workdir, workdir / "inventory.py", env, "--rollback", "--limit", hosts[0].name))
    data = as_json(proc)
    assert proc.returncode == 0 and data["ok"], proc.stderr
    assert list(data["hosts"]) == [hosts[0].name] and data["hosts"][hosts[0].name]["rolled_back"]
    assert host_file_sha(hosts[0], "/etc/muzo/worker.env") == before[0]
    assert host_file_sha(hosts[1], "/etc/muzo/worker.env") == after[1]
    assert hosts[0].ssh("systemctl is-active muzo-worker@generation").stdout.strip() == "active"
    assert run_job(db)["status"] == "DONE"
    # Deploying again brings the rolled-back host forward and leaves the other alone.
    data = as_json(muzo_deploy(*deploy_args(workdir, workdir / "inventory.py", env)))
    assert data["ok"] and data["hosts"][hosts[1].name]["changed"] == 0
    assert "env-switched" in data["hosts"][hosts[0].name]["operations"]
    assert host_file_sha(hosts[0], "/etc/muzo/worker.env") == after[0]


def test_removed_queue_is_stopped_and_disabled(hosts: list[NspawnHost], workdir: Path, db: Any) -> None:
    inventory = write_inventory(workdir / "one-queue.py", hosts, muzo_queues="generation", muzo_concurrency=2)
    proc = muzo_deploy(*deploy_args(workdir, inventory, workdir / "warn.env"))
    data = as_json(proc)
    assert proc.returncode == 0 and data["ok"], proc.stderr
    for host in hosts:
        assert "retired muzo-worker@mockup.service" in data["hosts"][host.name]["operations"]
        assert host.ssh("systemctl is-active muzo-worker@mockup", check=False).stdout.strip() == "inactive"
        assert host.ssh("systemctl is-enabled muzo-worker@mockup", check=False).stdout.strip() == "disabled"
        assert host.ssh("systemctl is-active muzo-worker@generation").stdout.strip() == "active"
        assert int(host.ssh("ls /opt/muzo/releases | wc -l").stdout) <= 3
    assert run_job(db)["status"] == "DONE"


def test_first_deploy_that_cannot_start_stops_the_units(rootfs: Path, workdir: Path, db: Any) -> None:
    host = NspawnHost(f"muzo-d{os.getpid() % 10000}-3", workdir / "third")
    try:
        host.boot()
        inventory = write_inventory(workdir / "fresh-broken.py", [host], muzo_queues="generation",
                                    muzo_handler_packages=[str(workdir / "broken")],
                                    muzo_handlers={"GENERATION": "muzo_broken:run"}, muzo_health_timeout=6)
        proc = muzo_deploy(*deploy_args(workdir, inventory, workdir / "warn.env"))
        data = as_json(proc)
        assert proc.returncode == 1 and not data["ok"], proc.stderr
        entry = data["hosts"][host.name]
        assert entry["status"] == "failed" and entry["healthy"] is False and not entry["rolled_back"]
        assert entry["release"] == "" and "first deploy" in entry["reason"]
        assert host.ssh("systemctl is-active muzo-worker@generation", check=False).stdout.strip() in (
            "inactive", "failed")
        assert host.ssh("systemctl is-enabled muzo-worker@generation", check=False).stdout.strip() == "disabled"
        assert host.ssh("test -e /opt/muzo/current || echo none").stdout == "none\n"
    finally:
        host.stop()
