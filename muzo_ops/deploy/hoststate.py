"""What a host runs, as ``muzo-host state`` prints it, and what it should run: compared here.

The host script (``deploy/host/muzo-host``, shipped in the wheel as
``muzo_ops/deploy_files/host/muzo-host``) records, for every start of a muzo
unit, the release, env file digest and unit file digest it started with,
keyed by the unit's InvocationID. A host's desired state is (release, env
digest, unit digests, instances); the deploy restarts exactly the instances
whose running start differs from it and gates those that never passed a gate.
Nothing here needs pyinfra.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from muzo_ops.deploy.plan import HostPlan

HOST_SCRIPT = "/opt/muzo/bin/muzo-host"
LEASE_TTL_S = 900


def host_script_path() -> Path:
    """``deploy/host/muzo-host``: in the installed package, or in the checkout beside it."""
    package = Path(__file__).resolve().parent.parent
    for folder in (package / "deploy_files", package.parent / "deploy"):
        candidate = folder / "host" / "muzo-host"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("deploy/host/muzo-host is missing from this muzo-ops")


def host_script_text() -> str:
    return host_script_path().read_text()


def host_script_sha256() -> str:
    return hashlib.sha256(host_script_path().read_bytes()).hexdigest()


@dataclass
class Instance:
    """One muzo unit on a host; ``release``/``env``/``unit`` are what its running invocation started with."""

    name: str
    active: str = "inactive"
    enabled: bool = False
    release: str = ""
    env: str = ""
    unit: str = ""
    restarts: int = 0
    result: str = ""
    gated: bool = False


@dataclass
class Lease:
    token: str = ""
    owner: str = ""
    since: int = 0
    expires: int = 0


@dataclass
class HostState:
    """One ``muzo-host state`` reading."""

    reached: bool = False
    now: int = 0
    machine_id: str = ""
    host_script: str = ""
    current: str = ""
    user: str = ""
    state_dir: str = ""
    releases: list[str] = field(default_factory=list)  # complete ones, newest first
    partial: list[str] = field(default_factory=list)
    env: str = ""
    stored_env: set[str] = field(default_factory=set)
    stored_unit: set[str] = field(default_factory=set)
    unit_files: dict[str, str] = field(default_factory=dict)
    previous: str = ""
    legacy: list[str] = field(default_factory=list)  # files of the old layout still on the host
    legacy_releases: list[str] = field(default_factory=list)  # releases the old layout's files name
    lease: Lease = field(default_factory=Lease)
    instances: dict[str, Instance] = field(default_factory=dict)

    @classmethod
    def parse(cls, lines: Sequence[str]) -> HostState:
        state = cls(reached=True)
        for line in lines:
            key, _, value = line.partition("=")
            if key == "release":
                state.releases.append(value)
            elif key == "partial":
                state.partial.append(value)
            elif key == "legacy":
                state.legacy.append(value)
            elif key == "legacy_release":
                state.legacy_releases.append(value)
            elif key == "stored_env":
                state.stored_env.add(value)
            elif key == "stored_unit":
                state.stored_unit.add(value)
            elif key == "unit_file":
                name, _, digest = value.partition(" ")
                state.unit_files[name] = digest
            elif key.startswith("lease_"):
                attr = key[len("lease_"):]
                setattr(state.lease, attr, _int(value) if attr in ("since", "expires") else value)
            elif key == "instance":
                state._instance(value.split())
            elif key == "now":
                state.now = _int(value)
            elif key in ("machine_id", "host_script", "current", "user", "state_dir", "env", "previous"):
                setattr(state, key, value)
        return state

    def _instance(self, parts: list[str]) -> None:
        parts = (parts + ["-"] * 9)[:9]
        name, active, enabled, release, env, unit, restarts, result, gated = parts

        def real(text: str) -> str:
            return "" if text == "-" else text

        self.instances[name] = Instance(name, active, enabled == "yes", real(release), real(env), real(unit),
                                        int(restarts) if restarts.isdigit() else 0, real(result), gated == "yes")

    # ------------------------------------------------------------ what runs

    def running_release(self) -> str:
        """The release the active instances started with (one of them), else the ``current`` link."""
        for inst in self.instances.values():
            if inst.active == "active" and inst.release:
                return inst.release
        return self.current

    def running_env(self) -> str:
        for inst in self.instances.values():
            if inst.active == "active" and inst.env:
                return inst.env
        return ""

    def health(self, wanted: Sequence[str] = ()) -> tuple[bool, str]:
        """(healthy, reason): every enabled (and every ``wanted``) muzo instance active."""
        problems = []
        names = [*dict.fromkeys([*wanted, *(n for n, i in self.instances.items() if i.enabled)])]
        for name in names:
            inst = self.instances.get(name)
            if inst is None:
                problems.append(f"{name} is not installed")
            elif inst.active != "active":
                problems.append(f"{name} is {inst.active} ({inst.result}, {inst.restarts} restarts)")
        if not names:
            problems.append("no muzo instance is installed")
        return not problems, "; ".join(problems)


def _int(text: str) -> int:
    """A whole number the host printed; 0 for anything else (a damaged lease file reads as no lease)."""
    return int(text) if text.isdigit() else 0


@dataclass(frozen=True)
class Desired:
    """A host's desired state: (release, env digest, unit digests, instances), and its gate."""

    release: str
    env: str
    units: tuple[tuple[str, str], ...]  # (file, sha256)
    instances: tuple[str, ...]
    http: tuple[tuple[str, int, str], ...]  # (instance, port, path)
    timeout_s: float

    @classmethod
    def of(cls, plan: HostPlan, release: str) -> Desired:
        return cls(release, plan.env_sha256, tuple((u.file, u.sha256) for u in plan.units), plan.instances,
                   tuple((u.instances[0], u.http_port, u.http_path) for u in plan.units if u.http_port),
                   plan.health_timeout_s)

    def file_text(self) -> str:
        """The file ``muzo-host switch`` reads (digests and names only)."""
        lines = [f"release={self.release}", f"env={self.env}", f"timeout={max(1, int(self.timeout_s))}"]
        lines += [f"unit={name}={digest}" for name, digest in self.units]
        lines += [f"instance={i}" for i in self.instances] + [f"enabled={i}" for i in self.instances]
        lines += [f"http={i} {port} {path}" for i, port, path in self.http]
        return "\n".join(lines) + "\n"

    def unit_digest(self, instance: str) -> str:
        file = f"{instance.split('@')[0]}@.service" if "@" in instance else instance
        return dict(self.units).get(file, "")

    def differences(self, state: HostState) -> list[str]:
        """What phase 2 would do on a host in ``state`` (empty: it runs exactly this, gated)."""
        would: list[str] = []
        if state.current != self.release:
            would.append(f"switch release {state.current or '(none)'} -> {self.release}")
        if state.env != self.env:
            would.append("switch env file")
        for name, digest in self.units:
            if state.unit_files.get(name) != digest:
                would.append(f"switch unit {name}")
        for name in state.unit_files:
            if name not in dict(self.units):
                would.append(f"remove unit {name}")
        for name, inst in state.instances.items():
            if name not in self.instances and (inst.active != "inactive" or inst.enabled):
                would.append(f"retire {name}")
        for name in self.instances:
            found = state.instances.get(name)
            if found is None or found.active != "active":
                would.append(f"start {name}")
            elif (found.release, found.env, found.unit) != (self.release, self.env, self.unit_digest(name)):
                would.append(f"restart {name} (it runs {describe_start(found, self)})")
            elif not found.gated:
                would.append(f"gate {name}")
            if found is None or not found.enabled:
                would.append(f"enable {name}")
        return would


def describe_start(inst: Instance, want: Desired) -> str:
    if not inst.release:
        return "a start this deploy did not record"
    parts = []
    if inst.release != want.release:
        parts.append(f"release {inst.release}")
    if inst.env != want.env:
        parts.append(f"env {inst.env[:12]}")
    if inst.unit != want.unit_digest(inst.name):
        parts.append(f"unit {inst.unit[:12]}")
    return ", ".join(parts) or "what is wanted"


def lease_owner() -> str:
    """Who holds a lease this process takes: user, machine and process id."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def lease_is_stale(lease: Lease, now: int) -> bool:
    """A lease nobody holds any more: expired, or taken by a process of this machine that is gone."""
    if not lease.token or lease.expires <= now:
        return True
    owner = lease.owner.rsplit(" pid ", 1)
    if len(owner) != 2 or owner[0].split("@", 1)[-1] != socket.gethostname() or not owner[1].isdigit():
        return False
    try:
        os.kill(int(owner[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
