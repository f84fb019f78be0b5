"""The pyinfra side of the worker deploy: one fact, the operations, and the two phases.

Layout on a host::

    /opt/muzo/releases/<version>-<id>/venv   one venv per release (``.complete`` once installed)
    /opt/muzo/current -> releases/<...>      switched atomically (symlink + rename)
    /opt/muzo/previous -> releases/<...>     what ``current`` was before the last switch
    /etc/muzo/worker.env                     0600 root, read by systemd as a credential
    /etc/muzo/state/                         0700 root: staged (``.next``) and previous (``.prev``) copies
    /etc/systemd/system/muzo-worker@.service

Phase 1 (``stage``) changes nothing that runs: the user, the folders, the
release, the staged env file and unit. Phase 2 (``switch``) snapshots what is
live, switches, reloads systemd and restarts only when the release, the env
file or the unit changed (``_if``), then runs the health gate; a host that
fails it is rolled back to the snapshot and then marked failed.

The env file's text only ever travels as an SFTP upload of an in-memory file
into the root-only state folder; it is never part of a command, a diff or a
fact's output (facts print only SHA-256 digests).
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.api.facts import FactBase
from pyinfra.api.operation import OperationMeta, operation
from pyinfra.context import host
from pyinfra.operations import files, server, systemd

from muzo_ops.deploy.plan import HostPlan
from muzo_ops.deploy.release import Release

OpGen = Generator[Any, None, None]

ROOT = "/opt/muzo"
RELEASES = f"{ROOT}/releases"
ETC = "/etc/muzo"
STATE = f"{ETC}/state"
ENV_FILE = f"{ETC}/worker.env"
UNIT_FILE = "/etc/systemd/system/muzo-worker@.service"
KEEP_RELEASES = 3
NOTHING_TO_ROLL_BACK = "nothing to roll back to"

_STATE_SCRIPT = r"""
sha() { if [ -f "$1" ]; then sha256sum "$1" | cut -d' ' -f1; fi; }
echo "current=$(readlink /opt/muzo/current 2>/dev/null | sed 's,.*/,,')"
echo "previous=$(readlink /opt/muzo/previous 2>/dev/null | sed 's,.*/,,')"
echo "user=$(id -u muzo 2>/dev/null)"
echo "state_dir=$(stat -c %a:%U /etc/muzo/state 2>/dev/null)"
for r in $(ls -1t /opt/muzo/releases 2>/dev/null); do
  if [ -f "/opt/muzo/releases/$r/.complete" ]; then echo "release=$r"; else echo "partial=$r"; fi
done
echo "env=$(sha /etc/muzo/worker.env)"
echo "env_next=$(sha /etc/muzo/state/worker.env.next)"
echo "env_prev=$(sha /etc/muzo/state/worker.env.prev)"
echo "unit=$(sha /etc/systemd/system/muzo-worker@.service)"
echo "unit_next=$(sha /etc/muzo/state/muzo-worker@.service.next)"
echo "unit_prev=$(sha /etc/muzo/state/muzo-worker@.service.prev)"
for u in $(systemctl list-units 'muzo-worker@*' --all --plain --no-legend 2>/dev/null | cut -d' ' -f1); do
  echo "unit_state=$u $(systemctl is-active "$u" 2>/dev/null)"
done
for u in /etc/systemd/system/multi-user.target.wants/muzo-worker@*.service; do
  if [ -e "$u" ] || [ -L "$u" ]; then echo "enabled=${u##*/}"; fi
done
true
"""


@dataclass
class HostState:
    """What a host has now (from one ``MuzoState`` fact)."""

    current: str = ""
    previous: str = ""
    user: str = ""
    state_dir: str = ""
    releases: list[str] = field(default_factory=list)  # complete ones, newest first
    partial: list[str] = field(default_factory=list)
    env: str = ""
    env_next: str = ""
    env_prev: str = ""
    unit: str = ""
    unit_next: str = ""
    unit_prev: str = ""
    active: dict[str, str] = field(default_factory=dict)  # unit -> active/activating/failed/...
    enabled: list[str] = field(default_factory=list)


class MuzoState(FactBase[HostState]):
    """Release links, digests of the live/staged/previous env file and unit, and the instances."""

    def command(self) -> str:
        return _STATE_SCRIPT

    @staticmethod
    def default() -> HostState:
        return HostState()

    def process(self, output: Sequence[str]) -> HostState:
        state = HostState()
        for line in output:
            key, _, value = line.partition("=")
            if key == "release":
                state.releases.append(value)
            elif key == "partial":
                state.partial.append(value)
            elif key == "unit_state":
                name, _, active = value.partition(" ")
                state.active[name] = active
            elif key == "enabled":
                state.enabled.append(value)
            elif key in HostState.__dataclass_fields__:
                setattr(state, key, value)
        return state


_cache: dict[int, tuple[object, object, HostState]] = {}


def host_state() -> HostState:
    """The host's ``MuzoState``, read once per host and pyinfra stage.

    Sound because no operation here changes what another one reads: staging
    touches only ``.next`` files and new releases (which pruning accounts for),
    and the switch operations each compare a live value with the wanted one.
    """
    from pyinfra.context import ctx_host, ctx_state

    real_host, stage = ctx_host.get(), ctx_state.get().current_stage  # type: ignore[no-untyped-call]
    cached = _cache.get(id(real_host))
    if cached is not None and cached[0] is real_host and cached[1] == stage:
        return cached[2]
    result: HostState = host.get_fact(MuzoState)
    _cache[id(real_host)] = (real_host, stage, result)
    return result


def q(text: str) -> str:
    return shlex.quote(text)


# ------------------------------------------------------------------ phase 1


@operation()
def release_installed(release: Release) -> OpGen:
    """Upload the release bundle and install it into its own venv (``--no-index``), unless present."""
    state = host_state()
    if release.name in state.releases:
        return
    target = f"{RELEASES}/{release.name}"
    upload = f"{RELEASES}/.upload-{release.name}.tar"
    yield FileUploadCommand(str(release.bundle), upload)
    venv = f"{q(target)}/venv"
    install = "install --quiet --disable-pip-version-check --no-index --no-deps " + f"{q(target)}/wheels/*.whl"
    # Debian ships pip as a wheel: run it from there into a venv without pip (seconds faster than
    # ensurepip, and no pip or setuptools in the release); plain ``venv`` where it is missing.
    yield StringCommand(" && ".join([
        f"rm -rf {q(target)}", f"mkdir -m 0755 {q(target)}", f"tar -xf {q(upload)} -C {q(target)}",
        f"rm -f {q(upload)}",
        "pipwhl=$(ls /usr/share/python-wheels/pip-*.whl 2>/dev/null | head -n 1)",
        f'if [ -n "$pipwhl" ]; then python3 -m venv --without-pip {venv} && {venv}/bin/python "$pipwhl/pip" '
        f"{install}; else python3 -m venv {venv} && {venv}/bin/python -m pip {install}; fi",
        f"rm -rf {q(target)}/wheels", f"touch {q(target)}/.complete",
    ]))


@operation()
def releases_pruned(release: Release, keep: int = KEEP_RELEASES) -> OpGen:
    """Delete the oldest releases beyond ``keep`` (never the new, current or previous one)."""
    doomed = releases_to_delete(release.name, host_state(), keep)
    if doomed:
        yield "rm -rf " + " ".join(q(f"{RELEASES}/{n}") for n in doomed)


def releases_to_delete(new: str, state: HostState, keep: int = KEEP_RELEASES) -> list[str]:
    """The oldest complete releases beyond ``keep`` (never ``new``, current or previous), and partial ones."""
    names = list(dict.fromkeys([new, *state.releases]))  # newest first
    protected = {new, state.current, state.previous}
    surplus = len(names) - keep
    doomed = [n for n in reversed(names) if n not in protected][:max(0, surplus)]
    return doomed + [n for n in state.partial if n != new]


def _stage(kind: str, text: str, digest: str, mode: str) -> OpGen:
    state = host_state()
    live_sha = getattr(state, kind)
    next_sha = getattr(state, f"{kind}_next")
    name = "worker.env" if kind == "env" else "muzo-worker@.service"
    staged = f"{STATE}/{name}.next"
    if digest == live_sha:
        if next_sha:
            yield f"rm -f {q(staged)}"
        return
    if digest == next_sha:
        return
    upload = f"{STATE}/.upload-{name}"
    # Into the root-only 0700 folder, narrowed, then renamed: never readable by others.
    yield FileUploadCommand(io.BytesIO(text.encode()), upload)
    yield f"chown root:root {q(upload)} && chmod {mode} {q(upload)} && mv -f {q(upload)} {q(staged)}"


@operation()
def env_staged(plan: HostPlan) -> OpGen:
    """Stage the host's env file in the state folder (0600 root) when it differs from the live one."""
    yield from _stage("env", plan.env_text, plan.env_sha256, "0600")


@operation()
def unit_staged(plan: HostPlan) -> OpGen:
    """Stage the unit template when it differs from the installed one."""
    yield from _stage("unit", plan.unit_text, plan.unit_sha256, "0644")


Labelled = list[tuple[str, OperationMeta]]


def stage(plan: HostPlan, release: Release) -> Labelled:
    """Phase 1 on the current host: nothing that runs is changed."""
    return [
        ("user", server.user(name="muzo system user", user="muzo", system=True, shell="/usr/sbin/nologin",
                             home="/nonexistent", ensure_home=False)),
        ("releases-folder", files.directory(name="release folder", path=RELEASES, user="root", group="root",
                                            mode="755")),
        ("state-folder", files.directory(name="state folder (root only)", path=STATE, user="root",
                                         group="root", mode="700")),
        ("release-installed", release_installed(name=f"release {release.name}", release=release)),
        ("releases-pruned", releases_pruned(name=f"keep the last {KEEP_RELEASES} releases", release=release)),
        ("env-staged", env_staged(name="env file staged", plan=plan)),
        ("unit-staged", unit_staged(name="unit staged", plan=plan)),
    ]


# ------------------------------------------------------------------ phase 2


def pending(plan: HostPlan, release: Release, state: HostState) -> bool:
    """Whether phase 2 has anything to do on a host in ``state``."""
    removed = [u for u in {*state.active, *state.enabled} if u not in plan.instances]
    return (state.current != release.name or state.env != plan.env_sha256 or state.unit != plan.unit_sha256
            or any(state.active.get(i) != "active" for i in plan.instances)
            or any(i not in state.enabled for i in plan.instances) or bool(removed))


@operation()
def snapshot(plan: HostPlan, release: Release) -> OpGen:
    """Keep what is live (release, env file, unit) as the rollback target, before anything switches."""
    state = host_state()
    if state.current == release.name and state.env == plan.env_sha256 and state.unit == plan.unit_sha256:
        return
    yield _snapshot_script()


def _snapshot_script() -> str:
    return "; ".join([
        "set -e",
        f"if [ -L {ROOT}/current ]; then ln -sfn \"$(readlink {ROOT}/current)\" {ROOT}/.previous.tmp "
        f"&& mv -T {ROOT}/.previous.tmp {ROOT}/previous; else rm -f {ROOT}/previous; fi",
        f"if [ -f {ENV_FILE} ]; then cp -p {ENV_FILE} {STATE}/.prev.tmp && mv -f {STATE}/.prev.tmp "
        f"{STATE}/worker.env.prev; else rm -f {STATE}/worker.env.prev; fi",
        f"if [ -f {q(UNIT_FILE)} ]; then cp -p {q(UNIT_FILE)} {STATE}/.prev.tmp && mv -f {STATE}/.prev.tmp "
        f"{q(STATE + '/muzo-worker@.service.prev')}; else rm -f {q(STATE + '/muzo-worker@.service.prev')}; fi",
    ])


@operation()
def release_switched(release: Release) -> OpGen:
    """Point ``current`` at the release (a new symlink renamed over the old one)."""
    if host_state().current != release.name:
        yield (f"ln -sfn releases/{q(release.name)} {ROOT}/.current.tmp && "
               f"mv -T {ROOT}/.current.tmp {ROOT}/current")


@operation()
def env_switched(plan: HostPlan) -> OpGen:
    """Rename the staged env file over the live one."""
    state = host_state()
    if state.env != plan.env_sha256:
        yield f"mv -f {STATE}/worker.env.next {ENV_FILE}"


@operation()
def unit_switched(plan: HostPlan) -> OpGen:
    """Rename the staged unit over the installed one."""
    state = host_state()
    if state.unit != plan.unit_sha256:
        yield f"mv -f {q(STATE + '/muzo-worker@.service.next')} {q(UNIT_FILE)}"


@operation()
def instances_retired(plan: HostPlan) -> OpGen:
    """Stop and disable the instances of queues the host no longer runs."""
    state = host_state()
    removed = sorted(u for u in {*state.active, *state.enabled}
                     if u not in plan.instances and (state.active.get(u) not in (None, "inactive")
                                                     or u in state.enabled))
    if removed:
        yield "systemctl disable --now " + " ".join(q(u) for u in removed)


@operation()
def instances_enabled(plan: HostPlan) -> OpGen:
    """Enable one instance per queue (started at boot)."""
    state = host_state()
    missing = [i for i in plan.instances if i not in state.enabled]
    if missing:
        yield "systemctl enable --quiet " + " ".join(q(u) for u in missing)


@operation()
def instances_restarted(plan: HostPlan) -> OpGen:
    """Restart every instance (only run ``_if`` the release, env file or unit changed).

    Waits for READY=1 up to the health timeout; whether it came is the health gate's call.
    """
    yield restart_command(plan.instances, plan.health_timeout_s)


def restart_command(instances: Sequence[str], timeout_s: float) -> str:
    units = " ".join(q(u) for u in instances)
    return f"timeout {max(1, int(timeout_s))} systemctl restart {units} || true"


@operation()
def instances_started(plan: HostPlan) -> OpGen:
    """Start instances that are not running although nothing changed."""
    state = host_state()
    down = [i for i in plan.instances if state.active.get(i) != "active"]
    if down:
        yield restart_command(down, plan.health_timeout_s).replace(" restart ", " start ", 1)


def gate_script(instances: Sequence[str], timeout_s: float) -> str:
    """Poll until every instance is active (Type=notify: READY=1 received) and stays so; exit 1 otherwise."""
    units = " ".join(q(u) for u in instances)
    return f"""
deadline=$(( $(date +%s) + {max(1, int(timeout_s))} ))
while :; do
  bad=""
  for u in {units}; do [ "$(systemctl is-active "$u")" = active ] || bad="$bad $u"; done
  if [ -z "$bad" ]; then
    sleep 1; bad=""
    for u in {units}; do [ "$(systemctl is-active "$u")" = active ] || bad="$bad $u"; done
    [ -z "$bad" ] && echo "healthy: {units}" && exit 0
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    for u in $bad; do
      echo "unhealthy: $u $(systemctl show -p ActiveState,SubState,Result,NRestarts --value "$u" | tr '\\n' ' ')" >&2
    done
    exit 1
  fi
  sleep 0.3
done
"""


@operation(is_idempotent=False)
def health_gate(plan: HostPlan) -> OpGen:
    """Every instance active (READY=1 reached) within the timeout, and still active a second later."""
    yield StringCommand(gate_script(plan.instances, plan.health_timeout_s))


def rollback_script(instances: Sequence[str], timeout_s: float, on_demand: bool = False) -> str:
    """Swap live and snapshot (release, env file, unit), reload, restart, gate; no snapshot: stop the units."""
    units = " ".join(q(u) for u in instances)
    unit_prev = q(STATE + "/muzo-worker@.service.prev")
    return f"""
set -e
if [ ! -L {ROOT}/previous ] && [ {"1" if on_demand else "0"} = 1 ]; then
  echo "nothing to roll back to: no previous release on this host" >&2
  exit 1
fi
if [ ! -L {ROOT}/previous ]; then
  systemctl disable --now {units} || true
  rm -f {ROOT}/current
  echo "{NOTHING_TO_ROLL_BACK}: stopped {units}"
  exit 0
fi
old=$(readlink {ROOT}/current || true)
ln -sfn "$(readlink {ROOT}/previous)" {ROOT}/.current.tmp && mv -T {ROOT}/.current.tmp {ROOT}/current
if [ -n "$old" ]; then ln -sfn "$old" {ROOT}/.previous.tmp && mv -T {ROOT}/.previous.tmp {ROOT}/previous; fi
if [ -f {STATE}/worker.env.prev ]; then
  cp -p {ENV_FILE} {STATE}/.swap.tmp
  mv -f {STATE}/worker.env.prev {ENV_FILE}
  mv -f {STATE}/.swap.tmp {STATE}/worker.env.prev
fi
if [ -f {unit_prev} ]; then
  cp -p {q(UNIT_FILE)} {STATE}/.swap.tmp
  mv -f {unit_prev} {q(UNIT_FILE)}
  mv -f {STATE}/.swap.tmp {unit_prev}
fi
systemctl daemon-reload
{restart_command(instances, timeout_s)}
echo "rolled back to $(readlink {ROOT}/current | sed 's,.*/,,')"
{gate_script(instances, timeout_s)}
"""


@operation(is_idempotent=False)
def rolled_back(plan: HostPlan, on_demand: bool = False) -> OpGen:
    """Switch the host back to its snapshot (run ``_if`` the health gate failed, or on demand)."""
    yield StringCommand(rollback_script(plan.instances, plan.health_timeout_s, on_demand))


@operation(is_idempotent=False)
def failed(message: str) -> OpGen:
    """Fail the host with ``message`` (after a rollback), so the run reports it."""
    yield f"echo {q(message)} >&2; exit 1"


@dataclass
class SwitchOps:
    """The phase-2 operations of one host, for counting changes and reading the gate."""

    changes: Labelled
    gate: OperationMeta
    rollback: OperationMeta


def switch(plan: HostPlan, release: Release) -> SwitchOps:
    """Phase 2 on the current host: snapshot, switch, reload/restart on change, gate, roll back on failure."""
    snap = snapshot(name="snapshot of the live release, env file and unit", plan=plan, release=release)
    rel = release_switched(name=f"current -> {release.name}", release=release)
    env = env_switched(name="env file switched", plan=plan)
    unit = unit_switched(name="unit switched", plan=plan)
    changed: Callable[[], bool] = lambda: rel.did_change() or env.did_change() or unit.did_change()  # noqa: E731
    reload = systemd.daemon_reload(name="systemd daemon-reload", _if=unit.did_change)
    retired = instances_retired(name="instances of removed queues stopped", plan=plan)
    enabled = instances_enabled(name="instances enabled", plan=plan)
    restart = instances_restarted(name="instances restarted", plan=plan, _if=changed)
    started = instances_started(name="stopped instances started", plan=plan, _if=lambda: not changed())
    gate = health_gate(name="health gate", plan=plan, _if=lambda: changed() or started.did_change(),
                       _ignore_errors=True)
    back = rolled_back(name="roll back", plan=plan, _if=gate.did_error)
    fail = failed(name="fail the host after the health gate", _if=gate.did_error,
                  message=f"muzo: health gate failed on {plan.name}; rolled back")
    return SwitchOps([("snapshot", snap), ("release-switched", rel), ("env-switched", env),
                      ("unit-switched", unit), ("daemon-reload", reload), ("instances-retired", retired),
                      ("instances-enabled", enabled), ("restarted", restart), ("started", started),
                      ("rolled-back", back), ("failed", fail)], gate, back)


def rollback(plan: HostPlan) -> OperationMeta:
    """On demand: swap the host back to its snapshot (``muzo-ops deploy --rollback``)."""
    return rolled_back(name="roll back on demand", plan=plan, on_demand=True)
