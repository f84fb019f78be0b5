"""A deploy's outcome, per host and for the run (what ``--format json`` prints). Nothing here needs pyinfra."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK_STATUSES = ("deployed", "unchanged", "dry", "rolled-back-on-demand")


@dataclass
class HostResult:
    """One host's outcome. ``status``: deployed, unchanged, rolled-back, unhealthy, failed, refused,
    unreachable, not-reached, dry, rolled-back-on-demand. ``release``/``env``/``healthy`` say what it
    runs now (``healthy`` None: not known, the host could not be asked)."""

    changed: int = 0
    operations: list[str] = field(default_factory=list)
    release: str = ""
    env: str = ""
    healthy: bool | None = None
    rolled_back: bool = False
    status: str = "not-reached"
    detail: str = ""
    desired_release: str = ""
    old_layout: dict[str, Any] | None = None  # a first deploy onto a host of the old layout: see old_layout()

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "healthy": self.healthy, "reason": self.detail, "release": self.release,
                "env": self.env[:12], "desired_release": self.desired_release, "rolled_back": self.rolled_back,
                "changed": self.changed, "operations": self.operations, "old_layout": self.old_layout}


@dataclass
class DeployResult:
    hosts: dict[str, HostResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every host fine: an ok status, and (but for --dry, which only says) not read unhealthy after."""
        return all(r.status in OK_STATUSES and (r.status == "dry" or r.healthy is not False)
                   for r in self.hosts.values())

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "hosts": {n: r.to_json() for n, r in self.hosts.items()}}
