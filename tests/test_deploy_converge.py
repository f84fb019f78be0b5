"""The deploy converges on what was asked, whatever stopped the last run (two nspawn hosts).

Fault injection: ``muzo-host`` pauses at a named step while
``/etc/muzo/state/test-pause-at`` names it; the test then kills the deploy
(the control process and the host script, SIGKILL) or drops its SSH session,
and reruns. Invariant checked after every rerun: each host runs the desired
release and env (by what every instance recorded at its start), gated
healthy, and the rerun's JSON says what it did. Also: a no-change deploy never
rolls back a host made unhealthy behind its back (broken venv, database
stopped); two deploys at once, one is
refused with the holder's identity; ``--rollback`` whose gate fails returns to
what ran before it; one machine under two names is refused; an installed
wheel deploys.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from muzo_ops.deploy.hoststate import HostState
from tests.envdata import write_env
from tests.nspawn import NspawnHost, free_port, module_hosts, nspawn_unavailable
from tests.servers import Secantus
from tests.test_deploy import _prepare, as_json, deploy_args, env_values, muzo_deploy

ROOT = Path(__file__).resolve().parent.parent
UNAVAILABLE = nspawn_unavailable()
pytestmark = [pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no systemd-nspawn hosts: {UNAVAILABLE}"),
              pytest.mark.timeout(600)]
PAUSE = "/etc/muzo/state/test-pause-at"
DATA = {"muzo_queues": "generation,mockup", "muzo_concurrency": 1}
# The hosts share this machine's network: ports nobody else holds (a fixed one could answer for another process).
PORTS = tuple(sorted({free_port() for _ in range(4)}))[:2]


hosts = module_hosts("muzo-c", "nspawn-converge")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("converge")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MUZO_DEPLOY_CACHE", str(folder / "cache"))
        _prepare(folder)
        _extra_wheel(folder)
        yield folder


def _extra_wheel(folder: Path) -> Path:
    """A tiny handler wheel: a second release without building anything."""
    wheel = folder / "muzo_extra-1.0-py3-none-any.whl"
    files = {"muzo_extra/__init__.py": b"VALUE = 1\n",
             "muzo_extra-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: muzo-extra\nVersion: 1.0\n",
             "muzo_extra-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               b"Tag: py3-none-any\n"}
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("muzo_extra-1.0.dist-info/RECORD", "".join(f"{n},,\n" for n in files)
                         + "muzo_extra-1.0.dist-info/RECORD,,\n")
    return wheel


def inventory(work: Path, hosts: list[NspawnHost], extra: bool, name: str = "inv", **more: Any) -> Path:
    """Both hosts run generation and mockup; the first also the queue exporter, the second the job
    dashboard (both gated by HTTP)."""
    data = dict(DATA, **more)
    if extra:
        data["muzo_handler_packages"] = [str(work / "muzo_extra-1.0-py3-none-any.whl")]
    rows = "".join(f"    ({h.name!r}, {dict(h.inventory_data(), **data, **exporter)!r}),\n"
                   for h, exporter in zip(hosts, [{"muzo_exporter_port": PORTS[0]}, {"muzo_dashboard_port": PORTS[1]}],
                                          strict=False))
    path = work / f"{name}.py"
    path.write_text(f"workers = [\n{rows}]\n")
    return path


def env_file(work: Path, secantus: Secantus, round_: str) -> Path:
    return write_env(work / f"round-{round_}.env", dict(env_values(secantus), MUZO_TEST_ROUND=round_))


def host_state(host: NspawnHost) -> HostState:
    return HostState.parse(host.ssh("/opt/muzo/bin/muzo-host state").stdout.splitlines())


def assert_runs(host: NspawnHost, entry: dict[str, Any], env_sha: str | None = None) -> HostState:
    """The host runs ``entry``'s desired release (and ``env_sha``), every instance active and gated."""
    state = host_state(host)
    assert entry["healthy"] is True and entry["release"] == entry["desired_release"], \
        json.dumps(entry) + unit_story(host)
    workers = {n: i for n, i in state.instances.items() if n.startswith("muzo-worker@")}
    assert sorted(workers) == ["muzo-worker@generation.service", "muzo-worker@mockup.service"]
    for inst in state.instances.values():
        assert inst.active == "active" and inst.gated, inst
        assert inst.release == entry["desired_release"], inst
        assert inst.env == (env_sha or state.env) == state.env, inst
        assert inst.unit == state.unit_files[inst.name if "@" not in inst.name else "muzo-worker@.service"]
    assert state.current == entry["desired_release"] and not state.lease.token
    return state


def unit_story(host: NspawnHost) -> str:
    """What systemd says of the muzo units now and what they logged last (for a failing assertion)."""
    units = host.ssh("systemctl list-units 'muzo-*' --all --plain --no-legend; "
                     "journalctl -u 'muzo-*' --no-pager -n 40 -o short-precise", check=False)
    return f"\n--- {host.name} now ---\n{units.stdout[-6000:]}"


def start(args: list[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    return subprocess.Popen([sys.executable, "-m", "muzo_ops", "deploy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)


def pause(host: NspawnHost, step: str) -> None:
    host.ssh(f"rm -f {PAUSE}.reached && echo {step} > {PAUSE}")


def wait_paused(host: NspawnHost, proc: subprocess.Popen[str], timeout: float = 240) -> int:
    """The PID of the host script paused at its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = host.ssh(f"cat {PAUSE}.reached 2>/dev/null || true").stdout.strip()
        if found:
            return int(found)
        if proc.poll() is not None:
            raise AssertionError(f"the deploy ended before the pause: {proc.stdout.read() if proc.stdout else ''}"
                                 f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
        time.sleep(0.2)
    raise AssertionError("the host script never reached the pause")


def unpause(host: NspawnHost) -> None:
    host.ssh(f"rm -f {PAUSE} {PAUSE}.reached")


def kill_deploy(host: NspawnHost, proc: subprocess.Popen[str], script_pid: int) -> None:
    """SIGKILL the control process and the host script (the worst case: the host side dies too)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    host.ssh(f"kill -9 {script_pid} 2>/dev/null || true")
    unpause(host)


def drop_ssh(host: NspawnHost, script_pid: int) -> None:
    """Kill the SSH session the script runs in (its sshd process) and the script, by their PIDs."""
    chain = host.ssh(f"p={script_pid}; for _ in 1 2 3 4; do p=$(ps -o ppid= -p $p | tr -d ' '); "
                     "echo $p $(ps -o comm= -p $p); done").stdout.split("\n")
    sshd = [line.split()[0] for line in chain if "sshd" in line]
    assert sshd, chain
    host.ssh(f"kill -9 {sshd[0]} {script_pid} 2>/dev/null || true")
    unpause(host)


def env_sha(host: NspawnHost, env: Path, work: Path, extra: bool) -> str:
    from muzo_ops.deploy.plan import plan_host, read_env_file

    data = dict(DATA)
    if extra:
        data["muzo_handler_packages"] = [str(work / "muzo_extra-1.0-py3-none-any.whl")]
    return plan_host(host.name, read_env_file(str(env)), data).env_sha256


def test_first_deploy_with_the_exporter_and_the_dashboard(hosts: list[NspawnHost], work: Path,
                                                          secantus: Secantus) -> None:
    env = env_file(work, secantus, "0")
    inv = inventory(work, hosts, False)
    proc = muzo_deploy(*deploy_args(work, inv, env, "--serial", "2"))
    data = as_json(proc)
    assert proc.returncode == 0 and data["ok"], proc.stdout + proc.stderr
    state = assert_runs(hosts[0], data["hosts"][hosts[0].name])
    assert state.instances["muzo-jobs-metrics.service"].gated
    assert "muzo-jobs-metrics.service" not in host_state(hosts[1]).instances
    dashboard = assert_runs(hosts[1], data["hosts"][hosts[1].name]).instances["muzo-dashboard.service"]
    assert dashboard.active == "active" and dashboard.gated
    assert "gated muzo-dashboard.service" in data["hosts"][hosts[1].name]["operations"]
    for host, unit in ((hosts[0], "muzo-worker@generation"), (hosts[0], "muzo-jobs-metrics"),
                       (hosts[1], "muzo-dashboard")):
        tasks = host.ssh(f"systemctl show -p TasksMax --value {unit}").stdout.strip()
        assert tasks.isdigit() and int(tasks) <= 256
    assert "muzo-jobs-metrics" in hosts[0].ssh("journalctl -t muzo-jobs-metrics --no-pager | tail -n 3").stdout \
        or hosts[0].ssh("journalctl -u muzo-jobs-metrics --no-pager -o short | tail -n 3").stdout
    assert hosts[0].ssh("journalctl -u 'muzo-worker@*' --no-pager | wc -l").stdout.strip() != "0"


@pytest.mark.parametrize("step", ["start", "env-switched", "release-switched", "restarted", "gate"])
def test_a_deploy_killed_at_each_step_converges_on_rerun(hosts: list[NspawnHost], work: Path, secantus: Secantus,
                                                         step: str) -> None:
    inv = work / "inv.py"
    extra = "extra" not in inv.read_text() if inv.exists() else True
    inv = inventory(work, hosts, extra)
    env = env_file(work, secantus, step)
    proc = start(deploy_args(work, inv, env, "--serial", "2"))
    pause(hosts[0], step)
    pid = wait_paused(hosts[0], proc)
    kill_deploy(hosts[0], proc, pid)
    again = muzo_deploy(*deploy_args(work, inv, env, "--serial", "2"))
    data = as_json(again)
    assert again.returncode == 0 and data["ok"], again.stderr
    entry = data["hosts"][hosts[0].name]
    assert entry["status"] == "deployed" and entry["operations"], entry
    assert any(op.startswith("gated ") for op in entry["operations"])
    if step in ("start", "env-switched", "release-switched"):
        assert any(op.startswith(("restarted ", "started ")) for op in entry["operations"]), entry
    for host in hosts:
        assert_runs(host, data["hosts"][host.name], env_sha(host, env, work, extra))


def test_ssh_lost_mid_switch_still_reports_json_and_the_rerun_converges(
        hosts: list[NspawnHost], work: Path, secantus: Secantus) -> None:
    inv = inventory(work, hosts, False)
    env = env_file(work, secantus, "ssh")
    before = host_state(hosts[0])
    proc = start(deploy_args(work, inv, env, "--serial", "1"))
    pause(hosts[0], "env-switched")
    pid = wait_paused(hosts[0], proc)
    drop_ssh(hosts[0], pid)
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err and "EOFError" not in err and "unexpected" not in err, err[-3000:]
    data = as_json(subprocess.CompletedProcess([], proc.returncode, out, err))
    assert proc.returncode == 1 and not data["ok"]
    first, second = data["hosts"][hosts[0].name], data["hosts"][hosts[1].name]
    assert first["status"] == "failed" and "switch" in first["reason"]
    # What it runs now: the old release and env, still healthy.
    assert first["release"] == before.running_release() and first["healthy"] is True, first
    assert first["env"] == before.running_env()[:12]
    assert second["status"] == "not-reached" and second["healthy"] is True
    again = muzo_deploy(*deploy_args(work, inv, env, "--serial", "2"))
    data = as_json(again)
    assert again.returncode == 0 and data["ok"], again.stderr
    assert "restarted muzo-worker@generation.service" in data["hosts"][hosts[0].name]["operations"]
    for host in hosts:
        assert_runs(host, data["hosts"][host.name], env_sha(host, env, work, False))


def test_no_change_deploy_never_rolls_back_a_host_broken_behind_its_back(
        hosts: list[NspawnHost], work: Path, secantus: Secantus) -> None:
    inv = inventory(work, hosts, False, muzo_health_timeout=6)
    env = work / "round-ssh.env"
    before = host_state(hosts[0])
    previous = hosts[0].ssh("cat /etc/muzo/state/previous").stdout
    venv = f"/opt/muzo/releases/{before.current}/venv"
    hosts[0].ssh(f"mv {venv}/lib {venv}/lib.broken && systemctl restart --no-block muzo-worker@generation")
    try:
        proc = muzo_deploy(*deploy_args(work, inv, env, "--serial", "2"))
        data = as_json(proc)
        entry = data["hosts"][hosts[0].name]
        assert proc.returncode == 1 and entry["status"] == "unhealthy" and not entry["rolled_back"], entry
        assert entry["healthy"] is False and "muzo-worker@generation.service" in entry["reason"]
        after = host_state(hosts[0])
        assert after.current == before.current and after.env == before.env
        assert hosts[0].ssh("cat /etc/muzo/state/previous").stdout == previous
        assert after.instances["muzo-worker@mockup.service"].active == "active"
    finally:
        hosts[0].ssh(f"mv {venv}/lib.broken {venv}/lib")
    proc = muzo_deploy(*deploy_args(work, inv, env, "--serial", "2"))
    data = as_json(proc)
    assert proc.returncode == 0 and data["ok"], proc.stderr
    assert_runs(hosts[0], data["hosts"][hosts[0].name], before.env)


def test_no_change_deploy_with_the_database_down_rolls_nothing_back(
        hosts: list[NspawnHost], work: Path, secantus: Secantus) -> None:
    inv = inventory(work, hosts, False, muzo_health_timeout=6)
    env = work / "round-ssh.env"
    before = host_state(hosts[0])
    previous = hosts[0].ssh("cat /etc/muzo/state/previous").stdout
    assert secantus.proc is not None
    os.kill(secantus.proc.pid, signal.SIGSTOP)  # the database stops answering
    try:
        hosts[0].ssh("systemctl restart --no-block muzo-worker@generation")
        proc = muzo_deploy(*deploy_args(work, inv, env, "--serial", "2"))
        data = as_json(proc)
        entry = data["hosts"][hosts[0].name]
        assert proc.returncode == 1 and entry["status"] == "unhealthy" and not entry["rolled_back"], entry
        after = host_state(hosts[0])
        assert after.current == before.current and after.env == before.env
        assert hosts[0].ssh("cat /etc/muzo/state/previous").stdout == previous
    finally:
        os.kill(secantus.proc.pid, signal.SIGCONT)
    proc = muzo_deploy(*deploy_args(work, inv, env, "--serial", "2"))
    data = as_json(proc)
    assert proc.returncode == 0 and data["ok"], proc.stderr
    assert_runs(hosts[0], data["hosts"][hosts[0].name], before.env)


def test_two_deploys_at_once_one_is_refused_with_the_holders_identity(
        hosts: list[NspawnHost], work: Path, secantus: Secantus) -> None:
    inv = inventory(work, hosts, False)
    env_a, env_b = env_file(work, secantus, "a"), env_file(work, secantus, "b")
    first = start(deploy_args(work, inv, env_a, "--serial", "2"))
    pause(hosts[0], "start")
    pid = wait_paused(hosts[0], first)
    try:
        second = muzo_deploy(*deploy_args(work, inv, env_b, "--serial", "2"))
        data = as_json(second)
        assert second.returncode == 1 and not data["ok"]
        for host in hosts:
            entry = data["hosts"][host.name]
            assert entry["status"] == "refused", entry
            assert f"pid {first.pid}" in entry["reason"] and "in progress since" in entry["reason"]
        back = muzo_deploy(*deploy_args(work, inv, env_b, "--rollback", "--limit", hosts[1].name))
        entry = as_json(back)["hosts"][hosts[1].name]
        assert back.returncode == 1 and entry["status"] == "refused" and f"pid {first.pid}" in entry["reason"]
    finally:
        unpause(hosts[0])
    out, err = first.communicate(timeout=300)
    data = as_json(subprocess.CompletedProcess([], first.returncode, out, err))
    assert first.returncode == 0 and data["ok"], err[-3000:]
    for host in hosts:  # no mix: every host runs the first deploy's env
        assert_runs(host, data["hosts"][host.name], env_sha(host, env_a, work, False))
        assert env_sha(host, env_b, work, False) not in host_state(host).stored_env
    del pid


def test_rollback_whose_gate_fails_returns_to_what_ran_before(hosts: list[NspawnHost], work: Path) -> None:
    inv = inventory(work, hosts, False, name="inv-rollback", muzo_health_timeout=6)
    before = host_state(hosts[0])
    previous = dict(line.split("=", 1) for line in hosts[0].ssh("cat /etc/muzo/state/previous").stdout.splitlines()
                    if "=" in line)
    assert previous["release"] and previous["env"] != before.env
    hosts[0].ssh(f"cp /etc/muzo/state/env/{previous['env']} /tmp/keep.env; "
                 f"printf 'WORKER_CONCURRENCY=oops\\n' >> /etc/muzo/state/env/{previous['env']}")
    try:
        proc = muzo_deploy(*deploy_args(work, inv, work / "round-a.env", "--rollback", "--limit", hosts[0].name))
        data = as_json(proc)
        entry = data["hosts"][hosts[0].name]
        assert proc.returncode == 1 and entry["status"] == "failed" and "back to what ran before" in entry["reason"]
        after = host_state(hosts[0])
        assert after.env == before.env and after.current == before.current
        assert entry["healthy"] is True and entry["release"] == before.running_release()
        for inst in after.instances.values():
            assert inst.active == "active" and inst.env == before.env
    finally:
        hosts[0].ssh(f"cp /tmp/keep.env /etc/muzo/state/env/{previous['env']}")


def test_an_unreachable_host_is_reported_and_nothing_switches(hosts: list[NspawnHost], work: Path,
                                                              secantus: Secantus) -> None:
    inv = inventory(work, hosts, False, name="inv-gone")
    gone = dict(hosts[0].inventory_data(), **DATA, ssh_port=free_port())
    inv.write_text(inv.read_text().replace("workers = [\n", f"workers = [\n    ('gone', {gone!r}),\n"))
    before = [host_state(h) for h in hosts]
    proc = muzo_deploy(*deploy_args(work, inv, env_file(work, secantus, "gone"), "--serial", "2"))
    data = as_json(proc)
    assert proc.returncode == 1 and not data["ok"] and list(data["hosts"]) == ["gone", *(h.name for h in hosts)]
    assert data["hosts"]["gone"]["status"] == "unreachable" and data["hosts"]["gone"]["healthy"] is None
    for host, old in zip(hosts, before, strict=True):
        entry = data["hosts"][host.name]
        # Not reached: what it runs now (not what was planned), healthy, nothing switched, no lease left.
        assert entry["status"] == "not-reached" and entry["healthy"] is True, entry
        assert entry["release"] == old.running_release() and entry["env"] == old.running_env()[:12]
        now = host_state(host)
        assert now.env == old.env and now.current == old.current and not now.lease.token


def test_one_machine_under_two_names_is_refused(hosts: list[NspawnHost], work: Path) -> None:
    inv = work / "twins.py"
    data = dict(hosts[0].inventory_data(), **DATA)
    inv.write_text(f"workers = [({hosts[0].name!r}, {data!r}), ('twin-name', {data!r})]\n")
    proc = muzo_deploy(*deploy_args(work, inv, work / "round-a.env", "--serial", "2"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "one machine" in proc.stderr and "twin-name" in proc.stderr
    assert not host_state(hosts[0]).lease.token


def test_an_installed_wheel_deploys(hosts: list[NspawnHost], work: Path, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(work / "source")], check=True, capture_output=True)
    wheel = next(dist.glob("muzo_ops-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "PYTHONPATH")}
    inv = inventory(work, hosts[:1], False, name="inv-wheel")
    proc = subprocess.run([str(venv / "bin" / "muzo-ops"), "deploy", "--inventory", str(inv), "--env-file",
                           str(work / "round-a.env"), "--lock", str(tmp_path / "wheel.lock"), "--format", "json",
                           "--dry"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    data = as_json(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = data["hosts"][hosts[0].name]
    assert entry["status"] == "dry" and entry["desired_release"].startswith("0.")
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import muzo_ops; print(muzo_ops.__file__)"],
                               capture_output=True, text=True, env=env, cwd=tmp_path).stdout
    assert str(venv) in installed
    assert hashlib.sha256(wheel.read_bytes()).hexdigest()
