"""The deploy's control-machine side: env rendering and checks, the unit, release ids and the lock."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from muzo_ops.deploy.plan import plan_host
from muzo_ops.deploy.release import DeployError, build_release
from muzo_ops.env.envfile import parse_text
from tests.envdata import FULL, SECRETS, write_env
from tests.helpers import copy_checkout

ROOT = Path(__file__).resolve().parent.parent


def test_env_rendered_for_the_worker_with_overrides_and_unknown_names() -> None:
    data = {"muzo_queues": "generation, mockup", "muzo_concurrency": 3,
            "muzo_env": {"LOG_LEVEL": "debug", "MYAPP_TOKEN": "tok en'x"},
            "muzo_handlers": {"generation": "pkg.mod:gen"}}
    plan = plan_host("h1", FULL, data)
    lines = plan.env_text.splitlines()
    assert "LOG_LEVEL=debug" in lines and "WORKER_QUEUES=generation,mockup" in lines
    assert "WORKER_CONCURRENCY=3" in lines and "MUZO_WORKER_HANDLERS=GENERATION=pkg.mod:gen" in lines
    # Unknown names pass through; everything reads back exactly (python-dotenv, as the worker reads it).
    read_back = parse_text(plan.env_text).values({})
    assert read_back["MYAPP_TOKEN"] == "tok en'x" and read_back["S3_SECRET_ACCESS_KEY"] == FULL["S3_SECRET_ACCESS_KEY"]
    # Web-only secrets never reach a worker host.
    assert "NEXTAUTH_SECRET" not in plan.env_text and "GOOGLE_CLIENT_SECRET" not in plan.env_text
    assert plan.instances == ("muzo-worker@generation.service", "muzo-worker@mockup.service")
    assert "GOCSPX" not in repr(plan) and FULL["S3_SECRET_ACCESS_KEY"] not in repr(plan)
    # Same inputs, same text: the deploy's idempotence rests on it.
    assert plan_host("h1", FULL, data).env_sha256 == plan.env_sha256


def test_env_errors_refused_with_names_not_values() -> None:
    values = dict(FULL, OPENAI_API_KEY="", WORKER_CONCURRENCY="many")
    with pytest.raises(DeployError) as caught:
        plan_host("h2", values, {})
    text = str(caught.value)
    assert "h2" in text and "OPENAI_API_KEY" in text and "WORKER_CONCURRENCY" in text
    assert not [s for s in SECRETS if s in text]
    with pytest.raises(DeployError, match="ssh_user root"):
        plan_host("h4", FULL, {"_sudo": True})
    with pytest.raises(DeployError, match="muzo_queues"):
        plan_host("h3", FULL, {"muzo_queues": "gen;rm -rf /"})


def test_unit_is_hardened_and_outlasts_the_drain() -> None:
    plan = plan_host("h1", dict(FULL, WORKER_DRAIN_TIMEOUT_SECONDS="120"), {})
    unit = plan.unit_text
    for line in ("Type=notify", "Restart=on-failure", "User=muzo", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
                 "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
                 "ProtectControlGroups=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                 "RestrictNamespaces=yes", "LockPersonality=yes", "CapabilityBoundingSet=",
                 "SystemCallFilter=@system-service", "UMask=0077",
                 "LoadCredential=worker.env:/etc/muzo/worker.env",
                 "ExecStart=/opt/muzo/current/venv/bin/muzo-ops worker --queues %i "
                 "--env-file ${CREDENTIALS_DIRECTORY}/worker.env"):
        assert line in unit.splitlines(), line
    stop = next(int(x.split("=")[1]) for x in unit.splitlines() if x.startswith("TimeoutStopSec="))
    assert stop > 120
    assert any(x.startswith("WatchdogSec=") for x in unit.splitlines())
    assert "EnvironmentFile" not in unit


def _copy_source(dest: Path) -> Path:
    return copy_checkout(dest)


@pytest.mark.timeout(600)
def test_release_id_hashes_sources_and_lock_not_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUZO_DEPLOY_CACHE", str(tmp_path / "cache"))
    source = _copy_source(tmp_path / "src")
    lock = tmp_path / "muzo-worker.lock"
    first = build_release((), lock, source)
    assert first.bundle.is_file() and first.name.startswith("0.1.0-")
    pins = lock.read_text()
    assert "\npymongo==" in pins and "\nmuzo-ops==" not in pins and "pyinfra" not in pins
    # Wheels rebuilt from scratch (not byte-identical) still give the same release.
    shutil.rmtree(tmp_path / "cache")
    again = build_release((), lock, source)
    assert again.name == first.name and lock.read_text() == pins
    # A source change is a new release; the lock is reused as it is.
    (source / "muzo_ops" / "deploy" / "plan.py").write_text(
        (source / "muzo_ops" / "deploy" / "plan.py").read_text() + "\n# changed\n")
    changed = build_release((), lock, source)
    assert changed.name != first.name and lock.read_text() == pins
    # A different pinned set is a new release too.
    lock.write_text("".join(line + "\n" for line in pins.splitlines() if not line.startswith("typing-extensions")))
    assert build_release((), lock, source).name not in (first.name, changed.name)


def test_usage_errors_are_one_line_before_any_host(tmp_path: Path) -> None:
    from tests.test_deploy import muzo_deploy

    env = write_env(tmp_path / "worker.env", FULL)
    inventory = tmp_path / "inventory.py"
    inventory.write_text("hosts = [('h1', {'ssh_port': 9})]\n")
    unconfirmed = muzo_deploy("--inventory", str(inventory), "--env-file", str(env))
    assert unconfirmed.returncode == 2
    assert unconfirmed.stderr == ("error: deploy: not confirmed and standard input is not a terminal; "
                                  "add -y (or --dry)\n")
    unknown = muzo_deploy("--inventory", str(inventory), "--env-file", str(env), "--limit", "h9", "-y")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "h9" in unknown.stderr
    missing = muzo_deploy("--inventory", str(tmp_path / "nope.py"), "--env-file", str(env), "-y")
    assert missing.returncode == 2 and missing.stderr.startswith("error: inventory ")
    assert not [s for s in SECRETS if s in unconfirmed.stderr + unknown.stderr + missing.stderr]
    helped = muzo_deploy("--help")
    assert helped.returncode == 0 and "example:" in helped.stdout and "--serial" in helped.stdout


def test_the_last_three_releases_are_kept() -> None:
    from muzo_ops.deploy.ops import HostState, releases_to_delete

    state = HostState(current="r3", previous="r1", releases=["r4", "r3", "r2", "r1"], partial=["r0"])
    # r5 is new: keep it, current and previous; the oldest others go, and the half-installed one.
    assert releases_to_delete("r5", state) == ["r2", "r4", "r0"]
    assert releases_to_delete("r4", HostState(current="r3", previous="r2", releases=["r4", "r3", "r2"])) == []
    assert releases_to_delete("r2", HostState(current="r3", releases=["r3", "r2", "r1", "r0"])) == ["r0"]
    # The releases the old layout's kept files name (its previous link, what it ran) stay while they do.
    old = HostState(current="r3", releases=["r3", "r2", "r1", "r0"], legacy_releases=["r0", "r1"])
    assert releases_to_delete("r2", old) == []


def test_host_script_passes_shellcheck() -> None:
    import subprocess

    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (tests/install-deps.sh installs it)")
    script = ROOT / "deploy" / "host" / "muzo-host"
    proc = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    # No host-side shell is built in Python strings: the deploy's modules hold no systemctl line.
    for module in (ROOT / "muzo_ops" / "deploy").glob("*.py"):
        assert "systemctl" not in module.read_text(), module


@pytest.mark.parametrize(("data", "words"), [
    ({"muzo_health_timeout": "abc"}, "muzo_health_timeout is 'abc'"),
    ({"muzo_health_timeout": float("nan")}, "muzo_health_timeout is nan"),
    ({"muzo_queues": 5}, "muzo_queues is 5, not a string or a list"),
    ({"muzo_concurrency": 0}, "muzo_concurrency is 0"),
    ({"muzo_concurrency": True}, "muzo_concurrency is True"),
    ({"muzo_exporter_port": 70000}, "muzo_exporter_port is 70000"),
    ({"muzo_env": ["A=1"]}, "muzo_env is list"),
    ({"muzo_env": {"A": float("inf")}}, "muzo_env['A'] is inf"),
    ({"muzo_handler_packages": 3}, "muzo_handler_packages is 3"),
])
def test_inventory_data_of_the_wrong_type_is_one_line_and_exit_2(tmp_path: Path, data: dict[str, object],
                                                                 words: str) -> None:
    from tests.helpers import run_cli

    env = write_env(tmp_path / "w.env", dict(FULL, NODE_ENV="development"))
    inventory = tmp_path / "inv.py"
    inventory.write_text(f"nan = float('nan')\ninf = float('inf')\nworkers = [('w1', {data!r})]\n")
    proc = run_cli("deploy", "--inventory", str(inventory), "--env-file", str(env), "--dry")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith("error: inventory host w1: ") and words in proc.stderr


def test_desired_state_against_what_runs() -> None:
    from muzo_ops.deploy.hoststate import Desired, HostState

    plan = plan_host("h1", FULL, {"muzo_queues": "generation", "muzo_exporter_port": 9470})
    want = Desired.of(plan, "0.1.0-abc")
    units = dict(want.units)
    worker, exporter = units["muzo-worker@.service"], units["muzo-jobs-metrics.service"]
    lines = ["current=0.1.0-abc", f"env={want.env}", f"unit_file=muzo-worker@.service {worker}",
             f"unit_file=muzo-jobs-metrics.service {exporter}",
             f"instance=muzo-worker@generation.service active yes 0.1.0-abc {want.env} {worker} 0 success/running yes",
             f"instance=muzo-jobs-metrics.service active yes 0.1.0-abc {want.env} {exporter} 0 success/running yes"]
    assert want.differences(HostState.parse(lines)) == []
    # The env file switched but the worker still runs the old one (an interrupted deploy): restart it.
    stale = [line.replace(f"0.1.0-abc {want.env} {worker}", f"0.1.0-abc {'0' * 64} {worker}") for line in lines]
    assert want.differences(HostState.parse(stale)) == [
        f"restart muzo-worker@generation.service (it runs env {'0' * 12})"]
    # Started with what is wanted but never gated (killed during the gate): gate it, restart nothing.
    ungated = [line.replace("running yes", "running no") if "muzo-worker" in line else line for line in lines]
    assert want.differences(HostState.parse(ungated)) == ["gate muzo-worker@generation.service"]
    # A start the deploy did not record (-): restart; a queue no longer listed: retire.
    other = [*lines, "instance=muzo-worker@mockup.service active yes - - - 0 success/running no"]
    assert want.differences(HostState.parse(other)) == ["retire muzo-worker@mockup.service"]
    # A damaged lease file reads as an expired lease, not as a crash.
    damaged = HostState.parse(["lease_token=t", "lease_since=abc", "lease_expires=", "now=x"])
    assert (damaged.lease.since, damaged.lease.expires, damaged.now) == (0, 0, 0)
    assert plan.units[1].http_port == 9470 and "TasksMax=" in plan.units[1].text
    assert all("TasksMax=" in u.text and "SyslogIdentifier=" in u.text for u in plan.units)


def test_waivers_accept_a_checked_code_on_record(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    local = dict(FULL, DATABASE_URL="mongodb://u:Str0ngPass-123@127.0.0.1:27017/muzo?directConnection=true")
    with pytest.raises(DeployError, match="DATABASE_URL"):
        plan_host("h1", local, {})
    with pytest.raises(DeployError, match="DATABASE_URL"):  # one code waived, the other still stops it
        plan_host("h1", local, {}, {"production-localhost": "the test hosts share the machine"})
    waivers = {"production-localhost": "the test hosts share the machine", "production-mongo-no-tls": "loopback"}
    assert plan_host("h1", local, {}, waivers).env_sha256
    # The env file's own MUZO_CHECK_WAIVERS count too.
    written = dict(local, MUZO_CHECK_WAIVERS="production-localhost:shared machine;production-mongo-no-tls:loopback")
    assert plan_host("h1", written, {}).env_sha256
    # --allow with a code no check has is a usage error, one line.
    env = write_env(tmp_path / "w.env", local)
    (tmp_path / "inv.py").write_text("workers = [('w1', {})]\n")
    proc = run_cli("deploy", "--inventory", str(tmp_path / "inv.py"), "--env-file", str(env), "--dry",
                   "--allow", "no-such-code:because")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no-such-code" in proc.stderr, proc.stderr
    proc = run_cli("deploy", "--inventory", str(tmp_path / "inv.py"), "--env-file", str(env), "--dry")
    assert proc.returncode == 2 and "DATABASE_URL" in proc.stderr, proc.stderr


def test_a_host_read_unhealthy_after_its_deploy_fails_the_run() -> None:
    from muzo_ops.deploy.result import DeployResult, HostResult

    # The switch said healthy, the reading after it did not (a unit crashed after its gate): exit 1.
    assert not DeployResult({"w1": HostResult(status="deployed", healthy=False)}).ok
    assert not DeployResult({"w1": HostResult(status="unchanged", healthy=False)}).ok
    assert DeployResult({"w1": HostResult(status="deployed", healthy=True),
                         "w2": HostResult(status="dry", healthy=False)}).ok  # --dry only says what runs
