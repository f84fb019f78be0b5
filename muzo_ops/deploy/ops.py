"""The pyinfra side of the worker deploy: one fact, the staging operations, and the host script's calls.

Layout on a host::

    /opt/muzo/bin/muzo-host                   the host script (deploy/host/muzo-host), root 0755
    /opt/muzo/releases/<version>-<id>/venv    one venv per release (``.complete`` once installed)
    /opt/muzo/current -> releases/<...>       switched atomically (symlink + rename)
    /etc/muzo/worker.env                      0600 root, read by systemd as a credential
    /etc/muzo/state/                          0700 root: the lease, env files and units by digest
                                              (env/, units/), ``previous`` (for --rollback)
    /run/muzo/started/<unit>                  what each running invocation started with
    /etc/systemd/system/muzo-*.service

Phase 1 (``stage``) takes the host's deploy lease, then changes nothing that
runs: the user, the folders, the release, the env file and units stored by
digest. Phase 2 (``switch``) hands the desired state to ``muzo-host switch``,
which converges, gates and rolls back (see the script's header for its
invariant), then gives the lease back.

The env file's text only ever travels as an SFTP upload of an in-memory file
into the root-only state folder; it is never part of a command, a diff or a
fact's output (the host script prints only SHA-256 digests).
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Generator, Sequence
from typing import Any

from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.api.facts import FactBase
from pyinfra.api.operation import OperationMeta, operation
from pyinfra.context import host
from pyinfra.operations import files, server

from muzo_ops.deploy.hoststate import (
    HOST_SCRIPT,
    LEASE_TTL_S,
    Desired,
    HostState,
    host_script_path,
    host_script_sha256,
    host_script_text,
)
from muzo_ops.deploy.plan import HostPlan
from muzo_ops.deploy.release import Release

OpGen = Generator[Any, None, None]

ROOT = "/opt/muzo"
RELEASES = f"{ROOT}/releases"
STATE = "/etc/muzo/state"
KEEP_RELEASES = 3
Labelled = list[tuple[str, OperationMeta]]


class MuzoState(FactBase[HostState]):
    """``muzo-host state``: links, digests, stored copies, the lease and each instance's recorded start."""

    shell_executable = "bash"

    def command(self) -> str:
        return host_script_text()

    @staticmethod
    def default() -> HostState:
        return HostState()

    def process(self, output: Sequence[str]) -> HostState:
        return HostState.parse(output)


_cache: dict[int, tuple[object, object, HostState]] = {}


def remember(real_host: object, stage: object, state: HostState) -> None:
    _cache[id(real_host)] = (real_host, stage, state)


def host_state() -> HostState:
    """The host's ``MuzoState``, read once per host and pyinfra stage (staging reads no value it changes)."""
    from pyinfra.context import ctx_host, ctx_state

    real_host, stage = ctx_host.get(), ctx_state.get().current_stage  # type: ignore[no-untyped-call]
    cached = _cache.get(id(real_host))
    if cached is not None and cached[0] is real_host and cached[1] == stage:
        return cached[2]
    result: HostState = host.get_fact(MuzoState)
    remember(real_host, stage, result)
    return result


def q(text: str) -> str:
    return shlex.quote(text)


def _script(*args: str) -> str:
    return " ".join([HOST_SCRIPT, *map(q, args)])


# ------------------------------------------------------------------ phase 1


def host_script_installed() -> OperationMeta | None:
    """Install deploy/host/muzo-host as /opt/muzo/bin/muzo-host (pyinfra's files.put), unless it is there."""
    if host_state().host_script == host_script_sha256():
        return None
    meta: OperationMeta = files.put(name="muzo-host script", src=str(host_script_path()), dest=HOST_SCRIPT,
                                    user="root", group="root", mode="755", create_remote_dir=True)
    return meta


@operation(is_idempotent=False)
def lease_taken(token: str, owner: str, stale: str = "") -> OpGen:
    """Take the host's deploy lease (exit 3, the holder named, when another deploy holds it)."""
    yield _script("lease", token, str(LEASE_TTL_S), owner, *([stale] if stale else []))


@operation(is_idempotent=False)
def lease_after_leader(token: str, owner: str, stale: str, leader: OperationMeta) -> OpGen:
    """Take the lease once the fleet's first host gave it (so two deploys of one fleet never split it)."""
    if not leader.is_complete() or leader.did_succeed():  # (pyinfra may look at the commands before running)
        yield _script("lease", token, str(LEASE_TTL_S), owner, *([stale] if stale else []))
        return
    held = next((line for line in leader.stderr_lines if "in progress since" in line),
                "muzo: another deploy holds the lease of the first host")
    yield f"echo {q(held)} >&2; exit 3"


@operation(is_idempotent=False)
def lease_given_back(token: str) -> OpGen:
    yield _script("unlease", token)


@operation()
def release_installed(release: Release) -> OpGen:
    """Upload the release bundle and install it into its own venv (``--no-index``), unless present."""
    if release.name in host_state().releases:
        return
    upload = f"{RELEASES}/.upload-{release.name}.tar"
    yield FileUploadCommand(str(release.bundle), upload)
    yield StringCommand(_script("install-release", release.name))


@operation()
def releases_pruned(release: Release, keep: int = KEEP_RELEASES) -> OpGen:
    """Delete the oldest releases beyond ``keep`` (never one that runs, is wanted or is kept for rollback)."""
    doomed = releases_to_delete(release.name, host_state(), keep)
    if doomed:
        yield _script("prune-releases", *doomed)


def releases_to_delete(new: str, state: HostState, keep: int = KEEP_RELEASES) -> list[str]:
    """The oldest complete releases beyond ``keep`` (never new, current, previous, the old layout's previous
    or running), and partial ones."""
    names = list(dict.fromkeys([new, *state.releases]))  # newest first
    protected = {new, state.current, state.previous, *state.legacy_releases,
                 *(i.release for i in state.instances.values())}
    surplus = len(names) - keep
    doomed = [n for n in reversed(names) if n not in protected][:max(0, surplus)]
    return doomed + [n for n in state.partial if n != new]


def _store(kind: str, text: str, digest: str) -> OpGen:
    """Upload ``text`` into the root-only store under its digest, unless it is there."""
    stored = host_state().stored_env if kind == "env" else host_state().stored_unit
    if digest in stored:
        return
    # Into the root-only store (made by the lease), digest checked, then renamed: never readable by others.
    yield FileUploadCommand(io.BytesIO(text.encode()), f"{STATE}/{kind}/.upload-{digest}")
    yield _script("store", kind, digest)


@operation()
def env_stored(plan: HostPlan) -> OpGen:
    """Store the host's env file by digest (0600 root, in the 0700 state folder)."""
    yield from _store("env", plan.env_text, plan.env_sha256)


@operation()
def units_stored(plan: HostPlan) -> OpGen:
    """Store the unit files by digest."""
    for unit in plan.units:
        yield from _store("units", unit.text, unit.sha256)


def take_lease(token: str, owner: str, stale: str, leader: OperationMeta | None) -> OperationMeta:
    """The lease: the leader host (the fleet's first) first, then the others, each given its own."""
    if leader is None:
        return lease_taken(name="deploy lease taken (first host)", token=token, owner=owner, stale=stale)
    return lease_after_leader(name="deploy lease taken", token=token, owner=owner, stale=stale, leader=leader)


def stage(plan: HostPlan, release: Release, token: str, owner: str, stale: str = "",
          give_back: bool = False, leader: OperationMeta | None = None) -> Labelled:
    """Phase 1 on the current host: the lease, then staging; nothing that runs is changed."""
    script = host_script_installed()
    labelled: Labelled = [("host-script", script)] if script is not None else []
    labelled.append(("lease", take_lease(token, owner, stale, leader)))
    if not (host_state().user and host_state().current):  # a host deployed before has both (saves 2 facts)
        labelled += [
            ("user", server.user(name="muzo system user", user="muzo", system=True, shell="/usr/sbin/nologin",
                                 home="/nonexistent", ensure_home=False)),
            ("releases-folder", files.directory(name="release folder", path=RELEASES, user="root", group="root",
                                                mode="755")),
        ]
    labelled += [
        ("release-installed", release_installed(name=f"release {release.name}", release=release)),
        ("releases-pruned", releases_pruned(name=f"keep the last {KEEP_RELEASES} releases", release=release)),
        ("env-staged", env_stored(name="env file staged", plan=plan)),
        ("units-staged", units_stored(name="units staged", plan=plan)),
    ]
    if give_back:
        labelled.append(("lease-given-back", lease_given_back(name="deploy lease given back", token=token)))
    return labelled


# ------------------------------------------------------------------ phase 2


@operation(is_idempotent=False)
def switched(desired: Desired, token: str) -> OpGen:
    """``muzo-host switch``: converge on ``desired``, gate, roll back to what ran healthy at its start."""
    path = f"{STATE}/desired.{token}"
    yield FileUploadCommand(io.BytesIO(desired.file_text().encode()), path)
    yield _script("switch", token, path)


@operation(is_idempotent=False)
def rolled_back(token: str, timeout_s: float) -> OpGen:
    """``muzo-host rollback``: to ``previous``; back to what ran before it when its gate fails."""
    yield _script("rollback", token, str(max(1, int(timeout_s))))


def switch(desired: Desired, token: str) -> tuple[OperationMeta, OperationMeta]:
    """Phase 2 on the current host: the switch (errors kept, so the lease is always given back)."""
    meta = switched(name="switch and health gate", desired=desired, token=token, _ignore_errors=True)
    return meta, lease_given_back(name="deploy lease given back", token=token)


@operation(is_idempotent=False)
def failed_unless_healthy(switch: OperationMeta) -> OpGen:
    """For the plain pyinfra CLI: fail the host (so pyinfra says so) unless the switch ended healthy."""
    values = output_values(switch.stdout_lines) if switch.is_complete() else {}
    outcome = (values.get("result") or ["the switch did not finish"])[-1]
    if outcome != "healthy":
        yield f"echo {q('muzo: ' + outcome + ': ' + '; '.join(values.get('unhealthy', [])))} >&2; exit 1"


def rollback(token: str, owner: str, stale: str, timeout_s: float) -> tuple[OperationMeta, OperationMeta]:
    """On demand (``muzo-ops deploy --rollback``): lease, roll back, give the lease back; (rollback, lease)."""
    host_script_installed()
    lease = take_lease(token, owner, stale, None)
    meta = rolled_back(name="roll back on demand", token=token, timeout_s=timeout_s, _ignore_errors=True)
    lease_given_back(name="deploy lease given back", token=token)
    return meta, lease


def output_values(lines: Sequence[str]) -> dict[str, list[str]]:
    """``key=value`` lines of the host script, by key."""
    values: dict[str, list[str]] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key, []).append(value)
    return values
