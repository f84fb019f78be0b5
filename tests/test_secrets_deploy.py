"""``secrets rotate DATABASE_URL --deploy``: the new password reaches real worker hosts (systemd-nspawn).

Two Debian hosts booted for this module run the worker against a SecantusDB
--auth on this machine; the rotation changes the user's password, deploys the
new env file batch by batch behind the health gate (a worker only gets READY
once it can reach MongoDB with the new password), and says which host runs
which secret generation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from muzo_ops.deploy.plan import plan_host, read_env_file
from muzo_ops.secrets import audit
from tests.envdata import FULL, SECRETS, write_env
from tests.helpers import assert_no_secret, copy_checkout, run_cli
from tests.nspawn import NspawnHost, module_hosts, nspawn_unavailable
from tests.servers import Secantus

ROOT = Path(__file__).resolve().parent.parent
DB = "secretsdeploy"
ADMIN_PASSWORD = "Adm1n-Deploy-Pass-8812"
APP_PASSWORD = "0ld-Deploy-App-Pass-3341"
UNAVAILABLE = nspawn_unavailable()
pytestmark = [pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no systemd-nspawn hosts: {UNAVAILABLE}"),
              pytest.mark.timeout(600)]
HOST_DATA = {"muzo_queues": "generation", "muzo_concurrency": 1}


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secantus]:
    from pymongo import MongoClient

    server = Secantus(tmp_path_factory.mktemp("secantus-deploy") / "data")
    server.start()
    client: MongoClient[dict[str, object]] = MongoClient(server.uri)
    client.admin.command("createUser", "root", pwd=ADMIN_PASSWORD, roles=["root"])
    client.admin.command("createUser", "muzo_app", pwd=APP_PASSWORD, roles=[{"role": "readWrite", "db": DB}])
    client.close()
    server.stop()
    server.auth = True
    server.start()
    yield server
    server.stop()


hosts = module_hosts("muzo-s", "nspawn-secrets")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of the checkout to ship, an inventory lock, and the env file's folder."""
    folder = tmp_path_factory.mktemp("secrets-deploy")
    copy_checkout(folder / "source")
    return folder


def app_url(server: Secantus, password: str) -> str:
    return (f"mongodb://muzo_app:{password}@127.0.0.1:{server.port}/{DB}?authSource=admin"
            "&directConnection=true&serverSelectionTimeoutMS=5000")


def authenticates(url: str) -> bool:
    from muzo_ops.secrets.mongo_password import authenticates as _authenticates

    return _authenticates(url)


DEPLOY = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from muzo_ops.deploy import driver
    result = driver.deploy(sys.argv[1], sys.argv[2], source=Path(sys.argv[3]), lock=Path(sys.argv[4]))
    print(json.dumps(result.to_json()))
""")


def test_rotated_database_password_is_deployed_and_each_host_says_its_generation(
        hosts: list[NspawnHost], mongo: Secantus, work: Path) -> None:
    inventory = work / "inventory.py"
    rows = "".join(f"    ({h.name!r}, {dict(h.inventory_data(), **HOST_DATA)!r}),\n" for h in hosts)
    inventory.write_text(f"workers = [\n{rows}]\n")
    env = write_env(work / "worker.env", dict(
        FULL, NODE_ENV="development", DATABASE_URL=app_url(mongo, APP_PASSWORD),
        MUZO_WORKER_HANDLERS="GENERATION=muzo_ops.queue.handlers.demo:echo"))
    source, lock = str(work / "source"), str(work / "muzo-worker.lock")
    first = subprocess.run([sys.executable, "-c", DEPLOY, str(inventory), str(env), source, lock],
                           capture_output=True, text=True, timeout=500, cwd=ROOT)
    assert first.returncode == 0 and json.loads(first.stdout)["ok"], first.stderr[-3000:]

    proc = run_cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes", "--format", "json",
                   "--deploy", str(inventory), "--deploy-source", source, "--deploy-lock", lock,
                   env={"MUZO_MONGO_ADMIN_URI": f"mongodb://root:{ADMIN_PASSWORD}@127.0.0.1:{mongo.port}/admin"
                                                "?directConnection=true&serverSelectionTimeoutMS=5000"},
                   timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data: dict[str, Any] = json.loads(proc.stdout)
    new_url = read_env_file(str(env))["DATABASE_URL"]
    new_password = new_url.split("muzo_app:", 1)[1].split("@", 1)[0]
    assert authenticates(new_url) and not authenticates(app_url(mongo, APP_PASSWORD))
    new_fp = audit.fingerprint(str(env), new_password)
    assert data["rotation"]["ok"] and data["rotation"]["new"] == new_fp
    assert data["deploy"]["ok"] and data["deploy"]["web_only"] == []
    for host in hosts:
        entry = data["deploy"]["hosts"][host.name]
        assert (entry["status"], entry["generation"], entry["fingerprints"]) == (
            "deployed", "new", {"DATABASE_URL": new_fp})
        expected = plan_host(host.name, read_env_file(str(env)), HOST_DATA).env_sha256
        assert host.ssh("sha256sum /etc/muzo/worker.env | cut -d' ' -f1").stdout.strip() == expected
        assert host.ssh("systemctl is-active muzo-worker@generation").stdout.strip() == "active"
    assert_no_secret(proc.stdout + proc.stderr, [*SECRETS, APP_PASSWORD, new_password, ADMIN_PASSWORD])

    # NEXTAUTH_SECRET never reaches worker hosts: said so, and every host stays on its file
    web = run_cli("secrets", "rotate", "NEXTAUTH_SECRET", "--env-file", str(env), "--deploy", str(inventory),
                  "--deploy-source", source, "--deploy-lock", lock, timeout=500)
    assert web.returncode == 0, web.stderr[-3000:]
    assert "NEXTAUTH_SECRET: web app only, not on worker hosts" in web.stdout
    for host in hosts:
        assert f"{host.name}: unchanged, runs the new secrets: no rotated variable" in web.stdout
    assert_no_secret(web.stdout + web.stderr, [*SECRETS, new_password])


def test_a_failing_host_stops_the_rollout_and_keeps_the_old_generation(
        hosts: list[NspawnHost], mongo: Secantus, work: Path) -> None:
    """Continues from the first test: both hosts run the current env file."""
    env = work / "worker.env"
    before_url = read_env_file(str(env))["DATABASE_URL"]
    before_password = before_url.split("muzo_app:", 1)[1].split("@", 1)[0]
    # the second host's worker cannot start any more: its health gate fails and it is rolled back
    broken = {**HOST_DATA, "muzo_health_timeout": 10, "muzo_handlers": {"GENERATION": "muzo_no_such_module:run"}}
    rows = "".join(f"    ({h.name!r}, {dict(h.inventory_data(), **(broken if i else HOST_DATA))!r}),\n"
                   for i, h in enumerate(hosts))
    inventory = work / "inventory-broken.py"
    inventory.write_text(f"workers = [\n{rows}]\n")
    old_sha = hosts[1].ssh("sha256sum /etc/muzo/worker.env | cut -d' ' -f1").stdout.strip()
    proc = run_cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes",
                   "--deploy", str(inventory), "--deploy-source", str(work / "source"),
                   "--deploy-lock", str(work / "muzo-worker.lock"),
                   env={"MUZO_MONGO_ADMIN_URI": f"mongodb://root:{ADMIN_PASSWORD}@127.0.0.1:{mongo.port}/admin"
                                                "?directConnection=true&serverSelectionTimeoutMS=5000"},
                   timeout=500)
    assert proc.returncode == 1, proc.stderr[-3000:]
    new_password = read_env_file(str(env))["DATABASE_URL"].split("muzo_app:", 1)[1].split("@", 1)[0]
    old_fp, new_fp = (audit.fingerprint(str(env), p) for p in (before_password, new_password))
    assert f"{hosts[0].name}: deployed, runs the new secrets: DATABASE_URL {new_fp}" in proc.stdout
    assert "The rollout stopped" in proc.stdout
    host_sha = hosts[1].ssh("sha256sum /etc/muzo/worker.env | cut -d' ' -f1").stdout.strip()
    print(f"\nfailing host's env file after the rollout: {'old' if host_sha == old_sha else 'not the old one'}")
    if f"{hosts[1].name}: rolled-back" in proc.stdout:  # the deploy put the old file back
        assert f"{hosts[1].name}: rolled-back, runs the old secrets: DATABASE_URL {old_fp}" in proc.stdout
        assert host_sha == old_sha
    else:  # the deploy could not say what the host runs: neither does the rotation
        # (rolled back to the old file, whose password no longer works: not healthy either)
        assert f"{hosts[1].name}: failed, runs the unknown secrets: DATABASE_URL - (health gate failed" \
            in proc.stdout
    assert_no_secret(proc.stdout + proc.stderr, [*SECRETS, before_password, new_password, ADMIN_PASSWORD])
