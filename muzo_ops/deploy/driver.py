"""``muzo-ops deploy``: pyinfra's Python API driven in two phases, batch by batch.

1. Render and check every host's env file (no host touched on an error) and
   build the releases on this machine.
2. Phase 1 on all hosts in parallel (one pyinfra run): ``ops.stage``.
3. Phase 2 on the hosts with something to switch, ``serial`` hosts per pyinfra
   run: ``ops.switch`` (restart and health gate; a failing host is rolled back
   by the run itself). The rollout stops after a batch with a failed host.

``--rollback`` runs ``ops.rollback`` instead, batch by batch; ``--dry`` runs
phase 1's change detection only and says what phase 2 would switch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra.api.config import Config
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.state import State, StateStage
from pyinfra.context import ctx_host, ctx_state
from pyinfra.context import host as current_host
from pyinfra_cli.inventory import make_inventory  # type: ignore[import-untyped]

from muzo_ops.deploy import ops
from muzo_ops.deploy.plan import HostPlan, plan_host, read_env_file
from muzo_ops.deploy.release import DeployError, Release, build_release

Progress = Callable[[str], None]


@dataclass
class HostResult:
    """One host's outcome; ``status`` is one of deployed, unchanged, rolled-back, failed, not-reached, dry."""

    changed: int = 0
    operations: list[str] = field(default_factory=list)  # labels of the operations that changed
    release: str = ""
    healthy: bool = False
    rolled_back: bool = False
    status: str = "not-reached"
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "release": self.release, "healthy": self.healthy,
                "rolled_back": self.rolled_back, "status": self.status, "operations": self.operations}


@dataclass
class DeployResult:
    hosts: dict[str, HostResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.status in ("deployed", "unchanged", "dry", "rolled-back-on-demand") for r in self.hosts.values())

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "hosts": {n: r.to_json() for n, r in self.hosts.items()}}


@dataclass
class Target:
    """The inventory file and which of its hosts to work on."""

    inventory: str
    names: list[str]
    data: dict[str, dict[str, Any]]


def load_target(inventory: str, limit: Sequence[str] = ()) -> Target:
    if not Path(inventory).is_file():
        raise DeployError(f"inventory {inventory}: no such file; give a pyinfra inventory file "
                          "(see deploy/inventories/example.py)")
    inv = _inventory(inventory, State())
    names = [h.name for h in inv]
    if limit:
        unknown = [n for n in limit if n not in names]
        if unknown:
            raise DeployError(f"--limit {', '.join(unknown)}: not in {inventory}; hosts there: {', '.join(names)}")
        names = [n for n in names if n in limit]
    if not names:
        raise DeployError(f"inventory {inventory}: no hosts")
    return Target(inventory, names, {h.name: h.data.dict() for h in inv if h.name in names})


def _inventory(path: str, state: Any) -> Any:
    """pyinfra's own inventory loading (the CLI's), which runs the file in a state's context."""
    try:
        with ctx_state.use(state):
            return make_inventory(path)
    except Exception as exc:  # the file's own error: named by type and line, never by its text
        inner: BaseException = getattr(exc, "exception", None) or exc.__cause__ or exc
        line = _line_in(path, inner)
        where = f"{path} line {line}" if line else path
        raise DeployError(f"inventory {where}: {type(inner).__name__} while loading it (its message is "
                          f"not shown: it may hold a secret); fix the file (python {path} shows it)") from exc


def _line_in(path: str, exc: BaseException) -> int | None:
    """The line of ``path`` where ``exc`` was raised (or, for a SyntaxError, found)."""
    import os
    import traceback

    if isinstance(exc, SyntaxError) and exc.lineno:
        return exc.lineno
    real = os.path.realpath(path)
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.realpath(frame.filename) == real:
            line = frame.lineno
    return line


def _quiet_pyinfra(verbose: bool) -> None:
    """pyinfra's own progress lines on stderr with ``verbose``; else only its errors."""
    log = logging.getLogger("pyinfra")
    if verbose and not log.handlers:
        from pyinfra_cli.log import setup_logging  # type: ignore[import-untyped]

        setup_logging(logging.INFO)
    log.setLevel(logging.INFO if verbose else logging.ERROR)


class _Run:
    """One pyinfra run over some hosts of the inventory (fresh inventory, state and connections)."""

    def __init__(self, target: Target, names: Sequence[str], check_for_changes: bool = False) -> None:
        self.state = State(check_for_changes=check_for_changes)
        self.inventory = _inventory(target.inventory, self.state)
        self.hosts = [self.inventory.get_host(n) for n in names]
        config = Config()  # type: ignore[no-untyped-call]
        config.CONNECT_TIMEOUT = 10
        config.FAIL_PERCENT = None
        self.state.init(self.inventory, config, initial_limit=self.hosts)
        self.state.set_stage(StateStage.Connect)
        with contextlib.suppress(PyinfraError):  # "No hosts remaining!": each unreachable host is reported
            connect_all(self.state)

    def failed(self, name: str) -> bool:
        return any(h.name == name for h in self.state.failed_hosts)

    def prepare(self, deploy: Callable[[], None]) -> None:
        self.state.set_stage(StateStage.Prepare)
        live = [h for h in self.hosts if h not in self.state.failed_hosts]
        if live:
            add_deploy(self.state, deploy, host=live)

    def execute(self) -> None:
        self.state.set_stage(StateStage.Execute)
        try:
            run_ops(self.state)
        except PyinfraError as exc:  # "No hosts remaining!": every host failed, each is reported
            if not self.state.failed_hosts:
                raise DeployError(f"pyinfra: {exc}") from exc

    def fact_state(self, name: str) -> ops.HostState:
        host = self.inventory.get_host(name)
        with ctx_state.use(self.state), ctx_host.use(host):
            result: ops.HostState = host.get_fact(ops.MuzoState)
        return result

    def close(self) -> None:
        self.state.set_stage(StateStage.Disconnect)
        disconnect_all(self.state)


def _changed(metas: ops.Labelled) -> list[str]:
    return [label for label, m in metas if m.is_complete() and m.did_change()]


def plan_hosts(target: Target, env_file: str) -> dict[str, HostPlan]:
    """Render and check every host's env file and unit: DeployError before any host is touched."""
    base = read_env_file(env_file)
    return {name: plan_host(name, base, target.data[name]) for name in target.names}


def build_releases(plans: dict[str, HostPlan], lock: Path | None, progress: Progress,
                   source: Path | None = None) -> dict[str, Release]:
    built: dict[tuple[str, ...], Release] = {}
    releases: dict[str, Release] = {}
    for name, plan in plans.items():
        key = plan.handler_packages
        if key not in built:
            start = time.monotonic()
            built[key] = build_release(key, lock, source)
            progress(f"release {built[key].name} ready ({time.monotonic() - start:.1f} s)")
        releases[name] = built[key]
    return releases


def deploy(inventory: str, env_file: str, *, dry: bool = False, serial: int = 1, limit: Sequence[str] = (),
           lock: Path | None = None, source: Path | None = None, progress: Progress = lambda _: None,
           verbose: bool = False) -> DeployResult:
    """Deploy the worker to the inventory's hosts (see the module text)."""
    start = time.monotonic()
    _quiet_pyinfra(verbose)
    target = load_target(inventory, limit)
    plans = plan_hosts(target, env_file)
    lock = lock or Path(inventory).resolve().parent / "muzo-worker.lock"
    releases = build_releases(plans, lock, progress, source)
    result = DeployResult({n: HostResult(release=releases[n].name) for n in target.names})
    if dry:
        _dry(target, plans, releases, result, progress)
        result.seconds = time.monotonic() - start
        return result

    # Phase 1: everything staged on every host at once; nothing that runs changes.
    metas: dict[str, ops.Labelled] = {}

    def phase1() -> None:
        name = current_host.name
        metas[name] = ops.stage(plans[name], releases[name])

    run = _Run(target, target.names)
    pending: list[str] = []
    states: dict[str, ops.HostState] = {}
    try:
        run.prepare(phase1)
        run.execute()
        for name in target.names:
            res = result.hosts[name]
            res.operations = _changed(metas.get(name, []))
            res.changed = len(res.operations)
            if run.failed(name):
                res.status = "failed"
                res.detail = "could not connect" if name not in metas else "phase 1 (staging) failed"
                continue
            states[name] = run.fact_state(name)
            if ops.pending(plans[name], releases[name], states[name]):
                pending.append(name)
            else:
                res.status, res.healthy = "unchanged", True
    finally:
        run.close()
    progress(f"phase 1 (staged on {len(target.names)} hosts) done at {time.monotonic() - start:.1f} s")

    # Phase 2: batch by batch, each its own pyinfra run.
    if any(r.status == "failed" for r in result.hosts.values()):
        pending = []
    switched: dict[str, ops.SwitchOps] = {}

    def phase2() -> None:
        name = current_host.name
        switched[name] = ops.switch(plans[name], releases[name])

    for first in range(0, len(pending), max(1, serial)):
        batch = pending[first:first + max(1, serial)]
        run = _Run(target, batch)
        try:
            run.prepare(phase2)
            run.execute()
        finally:
            run.close()
        stop = False
        for name in batch:
            res = result.hosts[name]
            sw = switched.get(name)
            if sw is None:
                res.status, res.detail = "failed", "could not connect"
                stop = True
                continue
            res.operations += _changed(sw.changes)
            res.changed = len(res.operations)
            gate_failed = sw.gate.is_complete() and sw.gate.did_error()
            ran_back = sw.rollback.is_complete() and sw.rollback.did_change() and sw.rollback.did_succeed()
            first_deploy = ran_back and ops.NOTHING_TO_ROLL_BACK in sw.rollback.stdout
            res.rolled_back = ran_back and not first_deploy
            if run.failed(name) or gate_failed:
                res.status = "rolled-back" if res.rolled_back else "failed"
                res.release = states[name].current
                res.detail = "health gate failed" if gate_failed else "switch failed"
                if first_deploy:
                    res.detail = "health gate failed on the first deploy: nothing to roll back to, units stopped"
                stop = True
            else:
                res.status, res.healthy = "deployed", True
        progress(f"batch {', '.join(batch)} done at {time.monotonic() - start:.1f} s")
        if stop:
            break
    for name in pending:
        res = result.hosts[name]
        if res.status == "not-reached":  # the rollout stopped first: the host runs what it ran
            state = states[name]
            res.release = state.current
            res.healthy = bool(state.current) and all(state.active.get(i) == "active"
                                                      for i in plans[name].instances)
            res.detail = "the rollout stopped before this host"
    result.seconds = time.monotonic() - start
    return result


def rollback(inventory: str, env_file: str, *, serial: int = 1, limit: Sequence[str] = (),
             progress: Progress = lambda _: None, verbose: bool = False) -> DeployResult:
    """Switch the chosen hosts back to their previous release, env file and unit, batch by batch."""
    start = time.monotonic()
    _quiet_pyinfra(verbose)
    target = load_target(inventory, limit)
    plans = plan_hosts(target, env_file)
    result = DeployResult({n: HostResult() for n in target.names})
    metas: dict[str, Any] = {}

    def back() -> None:
        metas[current_host.name] = ops.rollback(plans[current_host.name])

    for first in range(0, len(target.names), max(1, serial)):
        batch = target.names[first:first + max(1, serial)]
        run = _Run(target, batch)
        try:
            run.prepare(back)
            run.execute()
            stop = False
            for name in batch:
                res = result.hosts[name]
                meta = metas.get(name)
                ok = meta is not None and meta.is_complete() and meta.did_succeed() and not run.failed(name)
                res.operations = ["rolled-back"] if ok else []
                res.changed = len(res.operations)
                res.rolled_back = res.healthy = ok
                res.status = "rolled-back-on-demand" if ok else "failed"
                if not run.failed(name) and meta is not None:
                    res.release = run.fact_state(name).current
                stop = stop or not ok
        finally:
            run.close()
        progress(f"batch {', '.join(batch)} rolled back at {time.monotonic() - start:.1f} s")
        if stop:
            break
    result.seconds = time.monotonic() - start
    return result


def _dry(target: Target, plans: dict[str, HostPlan], releases: dict[str, Release], result: DeployResult,
         progress: Progress) -> None:
    """Phase 1's change detection (nothing executed) and what phase 2 would switch."""
    run = _Run(target, target.names, check_for_changes=True)
    try:
        metas: dict[str, ops.Labelled] = {}

        def phase1() -> None:
            metas[current_host.name] = ops.stage(plans[current_host.name], releases[current_host.name])

        run.prepare(phase1)
        for name in target.names:
            res = result.hosts[name]
            if run.failed(name):
                res.status, res.detail = "failed", "could not connect"
                continue
            changes = [label for label, m in metas.get(name, []) if m.will_change]
            state = run.fact_state(name)
            plan, release = plans[name], releases[name]
            would = []
            if state.current != release.name:
                would.append(f"switch release {state.current or '(none)'} -> {release.name}")
            if state.env != plan.env_sha256:
                would.append("switch env file")
            if state.unit != plan.unit_sha256:
                would.append("switch unit")
            if would or ops.pending(plan, release, state):
                would.append("restart " + " ".join(plan.instances))
            res.operations = changes + would
            res.changed = len(res.operations)
            res.status, res.healthy = "dry", not ops.pending(plan, release, state)
            res.detail = "; ".join(would) if would else "nothing to switch"
            res.release = release.name
    finally:
        run.close()
