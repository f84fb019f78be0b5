"""``secrets rotate … --deploy INVENTORY``: push a rotated env file through the worker deploy.

The deploy (``muzo_ops.deploy.driver``) goes one batch at a time behind its
health gate; a host that fails is rolled back and the rollout stops there.
Afterwards every host is put in one of three secret generations:

- ``new``: it runs the rotated file (deployed, or already up to date);
- ``old``: it still runs the file from before the rotation (rolled back, or
  not reached because the rollout stopped);
- ``unknown``: it could not be reached or its state is unclear.

Each host's fingerprints are those of the generation it runs, for the
rotated variables that worker hosts receive (web-only ones, such as
NEXTAUTH_SECRET, never reach them and are listed apart). The deploy runs in a
child process, so pyinfra (and its gevent) never enters this one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from muzo_ops.errors import MuzoOpsError

NEW_STATUSES = ("deployed", "unchanged")
OLD_STATUSES = ("rolled-back", "not-reached", "refused")


@dataclass
class HostGeneration:
    status: str
    generation: str  # "new", "old" or "unknown"
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "generation": self.generation, "fingerprints": self.fingerprints,
                "detail": self.detail}


@dataclass
class Propagation:
    hosts: dict[str, HostGeneration] = field(default_factory=dict)
    web_only: list[str] = field(default_factory=list)  # rotated variables no worker host receives
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(h.generation == "new" for h in self.hosts.values())

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "hosts": {n: h.to_json() for n, h in self.hosts.items()},
                "web_only": self.web_only, "seconds": round(self.seconds, 1)}

    def lines(self) -> list[str]:
        out = []
        for name, host in self.hosts.items():
            prints = ", ".join(f"{k} {v or '-'}" for k, v in host.fingerprints.items()) or "no rotated variable"
            detail = f" ({host.detail})" if host.detail else ""
            out.append(f"{name}: {host.status}, runs the {host.generation} secrets: {prints}{detail}")
        if self.web_only:
            out.append(f"{', '.join(self.web_only)}: web app only, not on worker hosts: redeploy the web app")
        if not self.ok:
            out.append("The rollout stopped: fix the failing host and run `muzo-ops deploy` again, or "
                       "`muzo-ops secrets rollback` and deploy the old file (for DATABASE_URL the old "
                       "password no longer works)")
        return out


def _deploy_in_child(inventory: str, env_file: str, serial: int, source: str | None,
                     lock: str | None) -> dict[str, Any]:
    """Runs in a spawned process: the deploy's library API, its result as plain data.

    pyinfra patches threading with gevent when it is imported, which would break the pymongo
    threads a DATABASE_URL rotation has just used in the parent; a spawned child keeps it out.
    """
    import sys
    from pathlib import Path

    try:
        from muzo_ops.deploy import driver
    except ImportError as exc:
        return {"error": f"--deploy needs pyinfra ({exc.name} is missing): pip install 'muzo-ops[deploy]'",
                "exit": 2}
    try:
        result = driver.deploy(inventory, env_file, serial=serial, source=Path(source) if source else None,
                               lock=Path(lock) if lock else None,
                               progress=lambda line: print(line, file=sys.stderr, flush=True))
    except MuzoOpsError as exc:
        return {"error": str(exc), "exit": exc.exit_code}
    return {"seconds": result.seconds,
            "hosts": {n: {"status": h.status, "detail": h.detail} for n, h in result.hosts.items()}}


def deploy(env_path: str, inventory: str, changes: Mapping[str, tuple[str | None, str | None]], *,
           serial: int = 1, source: str | None = None, lock: str | None = None,
           progress: Callable[[str], None] = lambda _line: None) -> Propagation:
    """Deploy ``env_path`` to ``inventory``; ``changes`` maps each rotated variable to (old fp, new fp)."""
    from muzo_ops.env import schema

    worker_vars = {v.name for v in schema.for_app(schema.App.WORKER)}
    shipped = [n for n in changes if n in worker_vars or n not in schema.BY_NAME]
    result = Propagation(web_only=[n for n in changes if n not in shipped])
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    saved = os.environ.pop("NOTIFY_SOCKET", None)  # the child is not the service systemd watches
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            deployed = pool.submit(_deploy_in_child, inventory, env_path, serial, source, lock).result()
    except Exception as exc:  # the child died (killed, out of memory): nothing to read
        raise MuzoOpsError(f"the deploy stopped ({type(exc).__name__}); the env file is rotated: fix it and run "
                           "`muzo-ops deploy`, or `muzo-ops secrets rollback` first") from None
    finally:
        if saved is not None:
            os.environ["NOTIFY_SOCKET"] = saved
    if "error" in deployed:
        raise MuzoOpsError(f"the deploy stopped ({deployed['error']}); the env file is rotated: fix it and run "
                           "`muzo-ops deploy`, or `muzo-ops secrets rollback` first")
    del progress
    result.seconds = float(deployed.get("seconds", 0.0))
    for name, host in deployed["hosts"].items():
        status = str(host["status"])
        if status in NEW_STATUSES:
            generation, index = "new", 1
        elif status in OLD_STATUSES:
            generation, index = "old", 0
        else:
            generation, index = "unknown", -1
        prints = {n: (changes[n][index] if index >= 0 else None) for n in shipped}
        result.hosts[name] = HostGeneration(status, generation, prints, str(host.get("detail", "")))
    return result
