"""What one worker host should run: its queues, its env file text and its unit.

Everything here is computed on the control machine before any host is
touched. The env file is rendered from the schema (worker variables in
schema order, then variables the schema does not know, which handler packages
may need) and checked with ``check_values``; a host whose values have an
error stops the deploy before it starts. Nothing here needs pyinfra.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from muzo_ops.deploy.release import DeployError

QUEUE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
WATCHDOG_SECONDS = 30
STOP_MARGIN_SECONDS = 30
DEFAULT_HEALTH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class HostPlan:
    """The rendered inputs of one host (``env_text`` holds secrets: never print it)."""

    name: str
    queues: tuple[str, ...]
    env_text: str
    unit_text: str
    handler_packages: tuple[str, ...]
    health_timeout_s: float

    @property
    def env_sha256(self) -> str:
        return hashlib.sha256(self.env_text.encode()).hexdigest()

    @property
    def unit_sha256(self) -> str:
        return hashlib.sha256(self.unit_text.encode()).hexdigest()

    @property
    def instances(self) -> tuple[str, ...]:
        return tuple(f"muzo-worker@{q}.service" for q in self.queues)

    def __repr__(self) -> str:  # never the env text
        return f"HostPlan({self.name!r}, queues={self.queues!r})"


def read_env_file(path: str) -> dict[str, str]:
    """The values of the control machine's env file (python-dotenv's reading, no process environment),
    dotenvx-encrypted values decrypted: hosts get plain values in their 0600 credential file."""
    from muzo_ops.env import decrypt, envfile

    env = envfile.read(path)
    values, encrypted = decrypt(env.values({}), path, env.text())
    if encrypted:
        raise DeployError(f"{path}: {', '.join(encrypted)} encrypted and no private key found: set "
                          "DOTENV_PRIVATE_KEY… or put .env.keys beside the file before deploying")
    return values


def _queues(host: str, data: Mapping[str, Any]) -> tuple[str, ...]:
    raw = data.get("muzo_queues") or "generation"
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    queues = tuple(dict.fromkeys(str(q).strip().lower() for q in items if str(q).strip()))
    for queue in queues:
        if not QUEUE_RE.match(queue):
            raise DeployError(f"host {host}: muzo_queues has {queue!r}, not a queue name; "
                              "use names like generation,mockup")
    if not queues:
        raise DeployError(f"host {host}: muzo_queues is empty; name at least one queue")
    return queues


def host_values(host: str, base: Mapping[str, str], data: Mapping[str, Any]) -> dict[str, str]:
    """The env values for ``host``: the env file, then ``muzo_env``, queues, concurrency, handlers."""
    values = dict(base)
    overrides = data.get("muzo_env") or {}
    if not isinstance(overrides, Mapping):
        raise DeployError(f"host {host}: muzo_env must be a dict of NAME: value")
    for key, value in overrides.items():
        values[str(key)] = "" if value is None else str(value)
    values["WORKER_QUEUES"] = ",".join(_queues(host, data))
    concurrency = data.get("muzo_concurrency")
    if concurrency is not None:
        values["WORKER_CONCURRENCY"] = str(concurrency)
    handlers = data.get("muzo_handlers")
    if handlers:
        if not isinstance(handlers, Mapping):
            raise DeployError(f"host {host}: muzo_handlers must be a dict like {{'GENERATION': 'pkg.mod:fn'}}")
        values["MUZO_WORKER_HANDLERS"] = ",".join(f"{str(k).upper()}={v}" for k, v in sorted(handlers.items()))
    return values


def render_env(host: str, values: Mapping[str, str]) -> str:
    """The env file text: worker variables in schema order, then unknown ones; web-only ones left out."""
    from muzo_ops.env import envfile, schema
    from muzo_ops.errors import UnrepresentableValueError

    known = {v.name for v in schema.VARIABLES}
    order = [v.name for v in schema.for_app(schema.App.WORKER)]
    names = [n for n in order if values.get(n, "") != ""]
    names += sorted(n for n in values if n not in known)
    lines = [f"# muzo worker environment for {host}, rendered by `muzo-ops deploy`; edits here are replaced.\n"]
    try:
        lines += [envfile.format_line(name, values[name]) for name in names]
    except UnrepresentableValueError as exc:
        raise DeployError(f"host {host}: {exc}") from None
    return "".join(lines)


def check_host_values(host: str, values: Mapping[str, str]) -> None:
    """DeployError naming every variable with an error (the library check, on the values)."""
    from muzo_ops.env import check_values
    from muzo_ops.env.schema import App

    report = check_values(values, app=App.WORKER)
    if not report.ok:
        problems = "; ".join(f"{p.variable or 'file'}: {p.message}" for p in report.errors)
        raise DeployError(f"host {host}: the worker env has errors ({problems}); "
                          "fix the env file or the host's muzo_env")


def render_unit(values: Mapping[str, str]) -> str:
    import jinja2

    from muzo_ops.env.render import template_dir

    try:
        drain = float(values.get("WORKER_DRAIN_TIMEOUT_SECONDS") or 30)
    except ValueError:
        drain = 30.0
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("muzo-worker@.service.j2").render(
        watchdog_seconds=WATCHDOG_SECONDS, drain_seconds=f"{drain:g}",
        stop_seconds=int(drain) + STOP_MARGIN_SECONDS)


def plan_host(host: str, base: Mapping[str, str], data: Mapping[str, Any]) -> HostPlan:
    """Render and check everything ``host`` needs; DeployError before anything is touched."""
    if data.get("_sudo") or data.get("_su_user") or data.get("_doas"):
        raise DeployError(f"host {host}: sudo/su/doas are not supported (pyinfra would pass the env file "
                          "through a temporary file the SSH user can read); connect as root: ssh_user root")
    values = host_values(host, base, data)
    check_host_values(host, values)
    packages = data.get("muzo_handler_packages") or ()
    if isinstance(packages, str):
        packages = (packages,)
    timeout = float(data.get("muzo_health_timeout") or DEFAULT_HEALTH_TIMEOUT_S)
    return HostPlan(host, _queues(host, data), render_env(host, values), render_unit(values),
                    tuple(str(Path(p).expanduser()) for p in packages), timeout)
