"""``muzo-ops deploy``: pyinfra's Python API driven in two phases, batch by batch.

1. Check the inventory's host data and render and check every host's env file
   (no host touched on an error), build the releases on this machine.
2. Phase 1 on all hosts in parallel (one pyinfra run): read each host's state
   (refusing one machine listed twice), take its deploy lease, stage.
3. Phase 2, ``serial`` hosts per pyinfra run, on the hosts whose running
   state differs from the desired one: ``muzo-host switch`` converges, gates
   and rolls back to what ran healthy at its start; the lease is given back.
   The rollout stops after a batch with a host that is not healthy.

Invariant: whatever stops a run (a crash, SSH lost, the host's sshd gone,
SIGTERM or SIGINT), the result has one entry per host saying what it runs now
(the release its instances started with; nothing, with ``healthy`` None, for a
host that could not be asked); a rerun restarts exactly what runs something
else than asked and gates it. Only SIGKILL ends it without a result.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra.api.config import Config
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.facts import get_facts
from pyinfra.api.operations import run_ops
from pyinfra.api.state import State, StateStage
from pyinfra.context import host as current_host
from pyinfra_cli.inventory import make_inventory  # type: ignore[import-untyped]

from muzo_ops.deploy import ops
from muzo_ops.deploy.hoststate import Desired, HostState, lease_is_stale, lease_owner
from muzo_ops.deploy.plan import HostPlan, plan_host, read_env_file, validate_host_data
from muzo_ops.deploy.release import DeployError, Release, build_release
from muzo_ops.deploy.result import OK_STATUSES as OK_STATUSES  # re-exported: the CLI and bench read them here
from muzo_ops.deploy.result import DeployResult as DeployResult
from muzo_ops.deploy.result import HostResult as HostResult
from muzo_ops.deploy.stopping import stop_signals, stopped_by

Progress = Callable[[str], None]
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
    data = {h.name: h.data.dict() for h in inv if h.name in names}
    for name in names:
        validate_host_data(name, data[name])
    return Target(inventory, names, data)


def _inventory(path: str, state: Any) -> Any:
    """pyinfra's own inventory loading (the CLI's), which runs the file in a state's context."""
    from pyinfra.context import ctx_state

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
    """pyinfra's own progress lines on stderr with ``verbose``; else only its errors. gevent never
    prints a greenlet's traceback (a lost connection is reported per host)."""
    import gevent  # type: ignore[import-untyped]

    log = logging.getLogger("pyinfra")
    if verbose and not log.handlers:
        from pyinfra_cli.log import setup_logging  # type: ignore[import-untyped]

        setup_logging(logging.INFO)
    log.setLevel(logging.INFO if verbose else logging.CRITICAL)
    gevent.get_hub().print_exception = lambda *_args: None


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
        self.states: dict[str, HostState] = {}
        with contextlib.suppress(PyinfraError):  # "No hosts remaining!": each unreachable host is reported
            connect_all(self.state)

    def failed(self, name: str) -> bool:
        return any(h.name == name for h in self.state.failed_hosts)

    def read_states(self) -> dict[str, HostState]:
        """Every live host's ``muzo-host state``, in parallel (kept for the operations)."""
        self.state.set_stage(StateStage.Prepare)
        if self.state.active_hosts:
            with contextlib.suppress(PyinfraError):
                facts = get_facts(self.state, ops.MuzoState)  # type: ignore[no-untyped-call]
                for host, value in facts.items():
                    if isinstance(value, HostState) and value.reached:
                        ops.remember(host, StateStage.Prepare, value)
                        self.states[host.name] = value
        return self.states

    def prepare(self, deploy: Callable[[], None]) -> None:
        self.state.set_stage(StateStage.Prepare)
        live = [h for h in self.hosts if h not in self.state.failed_hosts and h.name in self.states]
        if live:
            add_deploy(self.state, deploy, host=live)

    def execute(self) -> None:
        self.state.set_stage(StateStage.Execute)
        with contextlib.suppress(PyinfraError):  # "No hosts remaining!": every host failed, each is reported
            run_ops(self.state)

    def close(self) -> None:
        self.state.set_stage(StateStage.Disconnect)
        with contextlib.suppress(Exception):
            disconnect_all(self.state)


def _run_once(target: Target, names: Sequence[str], deploy: Callable[[], None] | None = None, *,
              check_machines: bool = False) -> tuple[_Run, dict[str, HostState]]:
    """One pyinfra run over ``names``: read each host's state (refusing one machine under two names
    when ``check_machines``), then run ``deploy`` on them if given; connections closed either way."""
    run = _Run(target, names)
    try:
        states = run.read_states()
        if check_machines:
            same_machines(states)
        if deploy is not None:
            run.prepare(deploy)
            run.execute()
    finally:
        run.close()
    return run, states


def _changed(metas: ops.Labelled) -> list[str]:
    return [label for label, m in metas if m.is_complete() and m.did_change()
            and label not in ("lease", "lease-given-back")]


def plan_hosts(target: Target, env_file: str, waivers: Mapping[str, str] | None = None) -> dict[str, HostPlan]:
    """Render and check every host's env file and unit: DeployError before any host is touched."""
    base = read_env_file(env_file)
    return {name: plan_host(name, base, target.data[name], waivers) for name in target.names}


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


def same_machines(states: dict[str, HostState]) -> None:
    """DeployError when two inventory names reach one machine (same /etc/machine-id)."""
    seen: dict[str, str] = {}
    for name, state in states.items():
        if not state.machine_id:
            continue
        if state.machine_id in seen:
            raise DeployError(f"inventory hosts {seen[state.machine_id]} and {name} are one machine (machine-id "
                              f"{state.machine_id[:12]}…); list each machine once")
        seen[state.machine_id] = name


def _refusal(meta: Any) -> str:
    """The lease holder's line from a failed ``lease`` operation, or ''."""
    with contextlib.suppress(Exception):
        for line in meta.stderr_lines:
            if "in progress since" in line:
                return str(line).removeprefix("muzo: ")
    return ""


def describe(res: HostResult, state: HostState | None, wanted: Sequence[str], before: HostState | None = None) -> None:
    """Fill in what the host runs now from a fresh reading (None: it could not be asked; ``release``
    then stays empty, and the reason says what it ran when this run read it first, if it did)."""
    if state is None:
        res.healthy, res.release, res.env = None, "", ""
        asked = "the host could not be asked what it runs"
        if before is not None:
            asked += (f" (at the start of this run: release {before.running_release() or '(none)'}, env "
                      f"{before.running_env()[:12] or '(none)'})")
        res.detail = f"{res.detail}; {asked}" if res.detail else asked
        return
    res.release, res.env = state.running_release(), state.running_env()
    res.healthy, reason = state.health(wanted)
    if not res.healthy:
        res.detail = f"{res.detail}; {reason}" if res.detail and reason not in res.detail else (res.detail or reason)


def deploy(inventory: str, env_file: str, *, dry: bool = False, serial: int = 1, limit: Sequence[str] = (),
           lock: Path | None = None, source: Path | None = None, progress: Progress = lambda _: None,
           verbose: bool = False, waivers: Mapping[str, str] | None = None) -> DeployResult:
    """Deploy the worker to the inventory's hosts (see the module text). DeployError: nothing touched.
    ``waivers`` (code → reason) accept env check problems of those codes, as ``check-env --allow`` does."""
    start = time.monotonic()
    _quiet_pyinfra(verbose)
    target = load_target(inventory, limit)
    plans = plan_hosts(target, env_file, waivers)
    lock = lock or Path(inventory).resolve().parent / "muzo-worker.lock"
    result = DeployResult({n: HostResult() for n in target.names})
    book = _Book(settled=set(), inflight=set(), seen={})
    with stop_signals() as caught:
        try:
            releases = build_releases(plans, lock, progress, source)
            desired = {n: Desired.of(plans[n], releases[n].name) for n in target.names}
            for name in target.names:
                result.hosts[name].desired_release = releases[name].name
            if dry:
                _dry(target, desired, result)
                result.seconds = time.monotonic() - start
                return result
            token, owner = uuid.uuid4().hex, lease_owner()
            book.inflight = set(target.names)
            pending = _phase1(target, plans, releases, desired, token, owner, result, book)
            progress(f"phase 1 (staged on {len(target.names)} hosts) done at {time.monotonic() - start:.1f} s")
            _phase2(target, pending, desired, token, serial, result, book, progress, start)
        except DeployError:
            raise
        except (Exception, KeyboardInterrupt) as exc:  # a crash or a signal: every host gets its entry
            _stopped(result, book, stopped_by(exc, caught))
        _report(target, result, book.settled, plans, book.seen)
    result.seconds = time.monotonic() - start
    return result


@dataclass
class _Book:
    """Where a run is: hosts whose entry is final, hosts being worked on, each host's reading at the start."""

    settled: set[str]
    inflight: set[str]
    seen: dict[str, HostState]


def _stopped(result: DeployResult, book: _Book, why: str) -> None:
    """Entries of the hosts a stopped run left: failed where it was at work, not reached after."""
    for name, res in result.hosts.items():
        if name in book.settled:
            continue
        if name in book.inflight:
            res.status, res.detail = "failed", f"the deploy stopped ({why}) while at work on this host"
        else:
            res.status, res.detail = "not-reached", f"the deploy stopped ({why}) before this host"


def _phase1(target: Target, plans: dict[str, HostPlan], releases: dict[str, Release],
            desired: dict[str, Desired], token: str, owner: str, result: DeployResult, book: _Book) -> list[str]:
    """Lease and staging everywhere at once; the hosts with something to switch."""
    metas: dict[str, ops.Labelled] = {}
    give_back: dict[str, bool] = {}
    leader: list[Any] = []  # the first host's lease operation: the others take theirs after it

    def phase1() -> None:
        name = current_host.name
        state = ops.host_state()
        stale = state.lease.token if state.lease.token and lease_is_stale(state.lease, state.now) else ""
        give_back[name] = not desired[name].differences(state)
        metas[name] = ops.stage(plans[name], releases[name], token, owner, stale, give_back[name],
                                leader[0] if leader else None)
        if not leader:
            leader.append(dict(metas[name])["lease"])

    run, states = _run_once(target, target.names, phase1, check_machines=True)
    book.seen.update(states)
    book.inflight.clear()
    settled = book.settled
    pending = []
    for name in target.names:
        res = result.hosts[name]
        labelled = dict(metas.get(name, []))
        res.operations = _changed(metas.get(name, []))
        res.changed = len(res.operations)
        if name not in states:
            res.status, res.detail = "unreachable", "could not connect or read its state"
        elif run.failed(name):
            refusal = _refusal(labelled.get("lease"))
            res.status = "refused" if refusal else "failed"
            res.detail = refusal or "phase 1 (staging) failed"
            if refusal:
                settled.add(name)
        elif give_back[name]:
            res.status = "unchanged"
            describe(res, states[name], desired[name].instances)
            settled.add(name)
        else:
            pending.append(name)
    if any(result.hosts[n].status in ("failed", "unreachable", "refused") for n in target.names):
        for name in pending:  # nothing switches when a host could not be staged; give the leases back
            result.hosts[name].detail = "the rollout stopped before this host"
        _give_back(target, pending, token)
        return []
    return pending


def _phase2(target: Target, pending: list[str], desired: dict[str, Desired], token: str, serial: int,
            result: DeployResult, book: _Book, progress: Progress, start: float) -> None:
    switched: dict[str, tuple[Any, Any]] = {}

    def phase2() -> None:
        name = current_host.name
        switched[name] = ops.switch(desired[name], token)

    step = max(1, serial)
    for first in range(0, len(pending), step):
        batch = pending[first:first + step]
        book.inflight = set(batch)
        run, _states = _run_once(target, batch, phase2)
        stop = False
        for name in batch:
            stop = not _read_switch(result.hosts[name], switched.get(name), run.failed(name)) or stop
            book.settled.add(name)
        book.inflight = set()
        progress(f"batch {', '.join(batch)} done at {time.monotonic() - start:.1f} s")
        if stop:
            rest = pending[first + step:]
            for name in rest:
                result.hosts[name].detail = "the rollout stopped before this host"
            _give_back(target, rest, token)
            return


def _read_switch(res: HostResult, metas: tuple[Any, Any] | None, failed: bool) -> bool:
    """Fill ``res`` from ``muzo-host switch``'s output; whether the host ended healthy."""
    meta = metas[0] if metas else None
    if meta is None or not meta.is_complete():
        res.status, res.detail = "failed", "the connection was lost before the switch ran"
        return False
    values = ops.output_values(meta.stdout_lines)
    ops_done = values.get("op", [])
    res.operations += ops_done
    res.changed = len(res.operations)
    outcome = (values.get("result") or [""])[-1]
    unhealthy = "; ".join(values.get("unhealthy", []))
    start_reason = (values.get("start_reason") or [""])[-1]
    res.old_layout = old_layout(values, outcome)
    if outcome == "healthy":
        res.status = "deployed"
        return True
    res.rolled_back = outcome == "rolled-back"
    res.status = {"rolled-back": "rolled-back", "unhealthy": "unhealthy"}.get(outcome, "failed")
    res.detail = {
        "": "the switch stopped before it finished (connection lost or the host script failed)"
             + (f": {meta.stderr.strip()[-300:]}" if meta.stderr.strip() else ""),
        "rolled-back": f"health gate failed ({unhealthy}); rolled back to what ran before",
        "rollback-unhealthy": f"health gate failed ({unhealthy}); rolled back, and that is not healthy either",
        "unhealthy": f"nothing was switched; instances are not healthy: {unhealthy}",
        "first-deploy-stopped": f"health gate failed on the first deploy ({unhealthy}): nothing to roll back "
                                "to, units stopped and disabled",
        "unhealthy-nothing-to-roll-back": f"health gate failed ({unhealthy}); nothing ran healthy before this "
                                          f"deploy, so nothing was rolled back ({start_reason})",
    }.get(outcome, outcome)
    del failed
    return False


def old_layout(values: Mapping[str, list[str]], outcome: str) -> dict[str, Any] | None:
    """What ``muzo-host switch`` said of a host still holding the old layout's files (``legacy=`` lines):
    they go only once the new release passed its gate; what ran before never passed one, so nothing is
    rolled back to it automatically and ``--rollback`` has nothing to go back to after this deploy."""
    leftovers = values.get("legacy", [])
    if not leftovers:
        return None
    ran = (values.get("legacy_release") or [""])[-1] or "(none)"
    env = (values.get("legacy_env") or [""])[-1][:12] or "(none)"
    cleaned = outcome == "healthy"
    if cleaned:
        rollback = (f"none: what ran before (release {ran}) never passed a health gate; --rollback has "
                    "nothing to go back to until the next deploy that switches something")
    else:
        rollback = (f"none was made: what ran before (release {ran}, env {env}) never passed a health gate; "
                    f"the old layout's files are kept, and that release and env file (in {ops.STATE}/env/) "
                    "are still on the host to go back to by hand")
    return {"leftovers": leftovers, "cleaned": cleaned, "ran_before": ran, "rollback": rollback}


def _give_back(target: Target, names: Sequence[str], token: str) -> None:
    """Give back the leases of hosts this run will not switch."""
    if not names:
        return
    def give() -> None:
        ops.lease_given_back(name="deploy lease given back", token=token)

    _run_once(target, names, give)


def _report(target: Target, result: DeployResult, settled: set[str], plans: dict[str, HostPlan],
            seen: Mapping[str, HostState] | None = None) -> None:
    """What every host whose entry is not final runs now (one more reading of each; a second signal
    skips it: those hosts are reported as not asked, with what they ran at the start, from ``seen``)."""
    names = [n for n in target.names if n not in settled or result.hosts[n].status != "unchanged"]
    names = [n for n in names if result.hosts[n].status not in ("unchanged", "refused")]
    if not names:
        return
    states: dict[str, HostState] = {}
    with contextlib.suppress(Exception, KeyboardInterrupt):
        run = _Run(target, names)
        try:
            states = run.read_states()
        finally:
            run.close()
    for name in names:
        describe(result.hosts[name], states.get(name), plans[name].instances, (seen or {}).get(name))


def rollback(inventory: str, env_file: str, *, serial: int = 1, limit: Sequence[str] = (),
             progress: Progress = lambda _: None, verbose: bool = False,
             waivers: Mapping[str, str] | None = None) -> DeployResult:
    """Switch the chosen hosts back to what ran before their last deploy; a rollback whose gate
    fails goes back to what ran before it. Batch by batch; stops after a host that is not healthy."""
    start = time.monotonic()
    _quiet_pyinfra(verbose)
    target = load_target(inventory, limit)
    plans = plan_hosts(target, env_file, waivers)
    result = DeployResult({n: HostResult() for n in target.names})
    token, owner = uuid.uuid4().hex, lease_owner()
    metas: dict[str, tuple[Any, Any]] = {}
    settled: set[str] = set()

    def back() -> None:
        state = ops.host_state()
        stale = state.lease.token if state.lease.token and lease_is_stale(state.lease, state.now) else ""
        metas[current_host.name] = ops.rollback(token, owner, stale, plans[current_host.name].health_timeout_s)

    with stop_signals() as caught:
        try:
            _rollback_batches(target, serial, back, metas, result, settled, progress, start)
        except DeployError:
            raise
        except (Exception, KeyboardInterrupt) as exc:
            for name in target.names:
                if result.hosts[name].status == "not-reached":
                    result.hosts[name].detail = f"the rollback stopped ({stopped_by(exc, caught)})"
                    if metas.get(name):
                        result.hosts[name].status = "failed"
        _report(target, result, settled, plans)
    result.seconds = time.monotonic() - start
    return result


def _rollback_batches(target: Target, serial: int, back: Callable[[], None], metas: dict[str, tuple[Any, Any]],
                      result: DeployResult, settled: set[str], progress: Progress, start: float) -> None:
    """The on-demand rollback, batch by batch; stops after a host that is not healthy."""
    for first in range(0, len(target.names), max(1, serial)):
        batch = target.names[first:first + max(1, serial)]
        _run_once(target, batch, back, check_machines=True)
        stop = False
        for name in batch:
            res = result.hosts[name]
            meta = metas.get(name, (None, None))[0]
            values = ops.output_values(meta.stdout_lines) if meta is not None and meta.is_complete() else {}
            outcome = (values.get("result") or [""])[-1]
            res.operations = values.get("op", []) + [f"rollback {o}" for o in values.get("rollback_op", [])]
            res.changed = len(res.operations)
            res.rolled_back = outcome == "rolled-back"
            res.status = "rolled-back-on-demand" if res.rolled_back else "failed"
            res.detail = {"rolled-back": "", "nothing-to-roll-back": "nothing to roll back to on this host",
                          "reverted": "the rollback's health gate failed; back to what ran before it",
                          "": "the rollback stopped before it finished"}.get(outcome, outcome)
            refusal = _refusal(metas[name][1]) if name in metas else ""
            if refusal:
                res.status, res.detail = "refused", refusal
                settled.add(name)
            stop = stop or not res.rolled_back
        progress(f"batch {', '.join(batch)} rolled back at {time.monotonic() - start:.1f} s")
        if stop:
            break


def _dry(target: Target, desired: dict[str, Desired], result: DeployResult) -> None:
    """What each host would do (one reading of its state; nothing changed, no lease taken)."""
    _run, states = _run_once(target, target.names, check_machines=True)
    for name in target.names:
        res = result.hosts[name]
        state = states.get(name)
        if state is None:
            res.status, res.detail = "unreachable", "could not connect or read its state"
            continue
        want = desired[name]
        would = []
        if want.release not in state.releases:
            would.append(f"install release {want.release}")
        if want.env not in state.stored_env:
            would.append("stage env file")
        would += want.differences(state)
        if state.lease.token and not lease_is_stale(state.lease, state.now):
            would.insert(0, f"wait: deploy by {state.lease.owner} in progress")
        res.operations = would
        res.changed = len(would)
        res.status = "dry"
        res.detail = "; ".join(would) if would else "nothing to switch"
        describe(res, state, want.instances)
        if not would:
            res.detail = "nothing to switch"
