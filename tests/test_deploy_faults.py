"""``deploy --format json`` prints one whole JSON document whatever stops it (two nspawn hosts).

Faults injected mid-switch (the first host's ``muzo-host switch`` paused at
``env-switched``, the second host not reached yet, ``--serial 1``): the deploy
process sent SIGTERM or SIGINT, the first host's sshd killed (listener and
session), and an exception raised by an operation (before and after the
switch). Each time: exit 1, one JSON document on stdout, every host's entry
says what it runs now (the release its instances started with, never the
planned one; ``healthy: null`` when it could not be asked). Then the fault is
removed and the deploy rerun; invariant: after the rerun every host runs
exactly what was asked, gated healthy.

Also: the health gate takes an HTTP answer only from the unit's own process
(another program answering on the exporter's port passed it, and the run said
``deployed`` then ``healthy: false``); the first deploy onto a host of the old layout (before ``muzo-host``)
removes that layout's files only once the new release passed its gate, and
says in ``old_layout`` what a rollback can do.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from muzo_ops.deploy.hoststate import HostState
from tests.nspawn import NspawnHost, module_hosts, nspawn_unavailable
from tests.servers import Secantus
from tests.test_deploy import _prepare, as_json, deploy_args, muzo_deploy
from tests.test_deploy_converge import (
    PORTS,
    _extra_wheel,
    assert_runs,
    env_file,
    env_sha,
    host_state,
    inventory,
    pause,
    start,
    unpause,
    wait_paused,
)

UNAVAILABLE = nspawn_unavailable()
pytestmark = [pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no systemd-nspawn hosts: {UNAVAILABLE}"),
              pytest.mark.timeout(600)]


hosts = module_hosts("muzo-f", "nspawn-faults")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, hosts: list[NspawnHost], secantus: Secantus) -> Iterator[Path]:
    """The checkout to ship, and both hosts deployed once (healthy)."""
    folder = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MUZO_DEPLOY_CACHE", str(folder / "cache"))
        _prepare(folder)
        _extra_wheel(folder)
        proc = muzo_deploy(*deploy_args(folder, inventory(folder, hosts, False), env_file(folder, secantus, "base"),
                                        "--serial", "2"))
        assert proc.returncode == 0 and as_json(proc)["ok"], proc.stderr[-3000:]
        yield folder


def one_document(out: str, err: str, code: int | None) -> dict[str, Any]:
    """stdout is exactly one JSON document (and nothing else), exit 1, no traceback on stderr."""
    assert code == 1, f"exit {code}: {out!r} {err[-3000:]!r}"
    assert "Traceback" not in err and "unexpected" not in err, err[-3000:]
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(out)
    assert not out[end:].strip(), out
    assert isinstance(data, dict) and data["ok"] is False
    return data


def wait_gone(host: NspawnHost, pid: int, timeout: float = 120) -> None:
    """The paused host script (resumed or killed) has ended: it holds the host's switch lock until then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.ssh(f"kill -0 {pid} 2>/dev/null && echo alive || true").stdout.strip() != "alive":
            return
        time.sleep(0.3)
    raise AssertionError(f"the host script {pid} still runs")


def rerun_converges(hosts: list[NspawnHost], work: Path, inv: Path, env: Path) -> dict[str, Any]:
    again = muzo_deploy(*deploy_args(work, inv, env, "--serial", "2"))
    data = as_json(again)
    assert again.returncode == 0 and data["ok"], again.stdout + again.stderr[-3000:]
    for host in hosts:
        assert_runs(host, data["hosts"][host.name], env_sha(host, env, work, False))
    return data


def assert_tells_what_runs(entry: dict[str, Any], before: Any, planned: str) -> None:
    """A host the fault caught before its instances restarted: it still runs the old start, healthy."""
    assert entry["release"] == before.running_release() and entry["healthy"] is True, entry
    assert entry["env"] == before.running_env()[:12] and entry["desired_release"] == planned, entry


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_switch_still_prints_the_json_and_the_rerun_converges(
        hosts: list[NspawnHost], work: Path, secantus: Secantus, signum: int) -> None:
    inv = inventory(work, hosts, True)  # a new release: the planned one differs from the running one
    env = env_file(work, secantus, f"sig{signum}")
    before = [host_state(h) for h in hosts]
    proc = start(deploy_args(work, inv, env, "--serial", "1"))
    pause(hosts[0], "env-switched")
    pid = wait_paused(hosts[0], proc)
    try:
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=120)
    finally:
        unpause(hosts[0])
    data = one_document(out, err, proc.returncode)
    first, second = data["hosts"][hosts[0].name], data["hosts"][hosts[1].name]
    name = signal.Signals(signum).name
    assert first["status"] == "failed" and name in first["reason"], first
    assert_tells_what_runs(first, before[0], first["desired_release"])
    assert first["release"] != first["desired_release"]
    assert second["status"] == "not-reached" and name in second["reason"], second
    assert_tells_what_runs(second, before[1], first["desired_release"])
    wait_gone(hosts[0], pid)
    inv = inventory(work, hosts, False)
    rerun_converges(hosts, work, inv, env)


def test_the_hosts_sshd_killed_mid_switch_reports_health_unknown_and_the_rerun_converges(
        hosts: list[NspawnHost], work: Path, secantus: Secantus) -> None:
    inv = inventory(work, hosts, False)
    env = env_file(work, secantus, "sshd")
    before = host_state(hosts[0])
    proc = start(deploy_args(work, inv, env, "--serial", "1"))
    pause(hosts[0], "env-switched")
    pid = wait_paused(hosts[0], proc)
    # The listener and every session's sshd (the deploy's among them): the host cannot be asked any more.
    hosts[0].ssh("systemctl stop ssh.service; ps -o pid= -C sshd | xargs -r kill -9", check=False)
    try:
        out, err = proc.communicate(timeout=180)
        data = one_document(out, err, proc.returncode)
        first = data["hosts"][hosts[0].name]
        assert first["status"] == "failed" and first["healthy"] is None, first
        assert "could not be asked" in first["reason"] and before.running_release() in first["reason"], first
        assert first["release"] == "", first  # not known: never the planned release
        assert data["hosts"][hosts[1].name]["status"] == "not-reached"
    finally:
        hosts[0].inside("systemctl start ssh.service")
        unpause(hosts[0])
    wait_gone(hosts[0], pid)
    rerun_converges(hosts, work, inv, env)


INJECT = """
import sys
from pyinfra.api.operation import operation
from muzo_ops.deploy import ops

@operation(is_idempotent=False)
def injected_fault():
    raise RuntimeError("injected fault")
    yield ""

real_switch = ops.switch

def switch(desired, token):
    if sys.argv[1] == "before":
        injected_fault(name="injected fault")
    metas = real_switch(desired, token)
    if sys.argv[1] == "after":
        injected_fault(name="injected fault")
    return metas

ops.switch = switch
from muzo_ops.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_exception_in_an_operation_still_prints_the_json_and_the_rerun_converges(
        hosts: list[NspawnHost], work: Path, secantus: Secantus, when: str) -> None:
    inv = inventory(work, hosts, False)
    env = env_file(work, secantus, f"raise-{when}")
    before = [host_state(h) for h in hosts]
    environ = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.run([sys.executable, "-c", INJECT, when, "deploy", *deploy_args(work, inv, env, "--serial", "1")],
                          capture_output=True, text=True, env=environ, timeout=300, stdin=subprocess.DEVNULL)
    data = one_document(proc.stdout, proc.stderr, proc.returncode)
    first, second = data["hosts"][hosts[0].name], data["hosts"][hosts[1].name]
    assert first["status"] == "failed" and "RuntimeError" in first["reason"], first
    assert "injected fault" not in proc.stdout + proc.stderr  # an exception's text is never shown
    assert second["status"] == "not-reached" and second["healthy"] is True, second
    assert second["env"] == before[1].running_env()[:12]
    now = host_state(hosts[0])
    assert first["env"] == now.running_env()[:12] and first["healthy"] is True, first
    if when == "before":  # nothing switched: the old env still runs
        assert now.running_env() == before[0].running_env() and now.env == before[0].env
    else:  # the switch ran whole before the fault: the new env runs, gated
        assert now.running_env() == env_sha(hosts[0], env, work, False)
    rerun_converges(hosts, work, inv, env)



# A host of the old layout (before muzo-host): units without the start record, no store, and the old
# layout's files: a previous-release link, .prev and .next copies.
OLD_LAYOUT = """set -e
cur=$(readlink /opt/muzo/current | sed 's,.*/,,')
sed -i '/muzo-host record-start/d' /etc/systemd/system/muzo-*.service
mv /opt/muzo/bin/muzo-host /root/state-reader
rm -rf /etc/muzo/state/env /etc/muzo/state/units /etc/muzo/state/previous /etc/muzo/state/lease /run/muzo/started \
  /opt/muzo/bin
ln -sfn "releases/$cur" /opt/muzo/previous
cp /etc/muzo/worker.env /etc/muzo/state/worker.env.prev
cp /etc/muzo/worker.env /etc/muzo/state/worker.env.next
cp /etc/systemd/system/muzo-worker@.service /etc/muzo/state/muzo-worker@.service.prev
systemctl daemon-reload
systemctl restart $(systemctl list-units 'muzo-*' --plain --no-legend | cut -d' ' -f1)
"""
LEFTOVERS = ["/opt/muzo/previous", "/etc/muzo/state/worker.env.prev", "/etc/muzo/state/worker.env.next",
             "/etc/muzo/state/muzo-worker@.service.prev"]


def leftovers_on(host: NspawnHost) -> list[str]:
    listing = host.ssh(" ".join(f"[ -e {p} ] && echo {p};" for p in LEFTOVERS) + " true").stdout
    return listing.split()


def test_first_deploy_onto_the_old_layout_removes_its_files_only_after_the_gate(
        hosts: list[NspawnHost], work: Path, secantus: Secantus) -> None:
    host = hosts[1]
    assert host_state(host).instances["muzo-dashboard.service"].gated
    host.ssh(OLD_LAYOUT)
    old = HostState.parse(host.ssh("bash /root/state-reader state").stdout.splitlines())
    assert sorted(leftovers_on(host)) == sorted(LEFTOVERS) and not old.stored_env
    assert all(i.active == "active" and not i.release for i in old.instances.values()), old.instances
    env = env_file(work, secantus, "old-layout")
    # A release that cannot start: the gate fails, nothing ran gated before, so nothing is rolled back.
    bad = inventory(work, hosts, False, name="inv-old-bad", muzo_health_timeout=5,
                    muzo_handlers={"GENERATION": "muzo_no_such_module:run"})
    proc = muzo_deploy(*deploy_args(work, bad, env, "--limit", host.name))
    data = as_json(proc)
    entry = data["hosts"][host.name]
    assert proc.returncode == 1 and entry["status"] == "failed" and not entry["rolled_back"], entry
    layout = entry["old_layout"]
    assert layout["cleaned"] is False and sorted(layout["leftovers"]) == sorted(LEFTOVERS), layout
    assert layout["ran_before"] == old.current and "never passed a health gate" in layout["rollback"], layout
    assert sorted(leftovers_on(host)) == sorted(LEFTOVERS)  # kept: the gate did not pass
    after = host_state(host)
    assert old.env in after.stored_env and old.current in after.releases  # what it ran is still there
    # The good deploy: paused in its gate, the old files are still there; once it passed, they are gone.
    inv = inventory(work, hosts, False)
    proc2 = start(deploy_args(work, inv, env, "--limit", host.name))
    pause(host, "gate")
    wait_paused(host, proc2)
    try:
        assert sorted(leftovers_on(host)) == sorted(LEFTOVERS)
    finally:
        unpause(host)
    out, err = proc2.communicate(timeout=300)
    data = as_json(subprocess.CompletedProcess([], proc2.returncode, out, err))
    entry = data["hosts"][host.name]
    assert proc2.returncode == 0 and entry["status"] == "deployed", err[-3000:]
    layout = entry["old_layout"]
    assert layout["cleaned"] is True and "--rollback has nothing to go back to" in layout["rollback"], layout
    assert leftovers_on(host) == [] and not host_state(host).legacy
    assert any(op.startswith("old-layout-removed ") for op in entry["operations"]), entry
    assert_runs(host, entry, env_sha(host, env, work, False))
    again = muzo_deploy(*deploy_args(work, inv, env, "--limit", host.name))
    assert again.returncode == 0 and as_json(again)["hosts"][host.name]["old_layout"] is None


@contextlib.contextmanager
def another_process_answering(port: int) -> Iterator[None]:
    """An HTTP server of this machine (not of the host's unit) answering 200 to every GET on ``port``
    (the test hosts share this machine's network, as another program on a real host would)."""

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_the_gate_takes_an_http_answer_only_from_the_units_own_process(
        hosts: list[NspawnHost], work: Path, secantus: Secantus) -> None:
    """The exporter cannot bind its port (another process holds it and answers 200): while it starts
    (Type=simple, so already "active") the other process's 200 must not pass its gate."""
    inv = inventory(work, hosts, False, name="inv-foreign", muzo_health_timeout=6)
    env = env_file(work, secantus, "foreign")
    hosts[0].ssh("systemctl stop muzo-jobs-metrics.service")
    with another_process_answering(PORTS[0]):
        proc = muzo_deploy(*deploy_args(work, inv, env, "--serial", "2"))
        data = as_json(proc)
        entry = data["hosts"][hosts[0].name]
        assert proc.returncode == 1 and entry["status"] != "deployed", entry
        assert "muzo-jobs-metrics.service" in entry["reason"], entry
    rerun_converges(hosts, work, inventory(work, hosts, False), env)
