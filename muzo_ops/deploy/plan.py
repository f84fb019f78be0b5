"""What one worker host should run: its queues, its env file text and its unit.

Everything here is computed on the control machine before any host is
touched. The env file is rendered from the schema (worker variables in
schema order, then variables the schema does not know, which handler packages
may need) and checked with ``check_values``; a host whose values have an
error stops the deploy before it starts. Nothing here needs pyinfra.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
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
WORKER_TASKS_MAX = 256  # the event loop, pymongo's monitor threads, handler threads, the metrics server
EXPORTER_TASKS_MAX = 64
DASHBOARD_TASKS_MAX = 128
# The exporter's gate asks its /healthz (the process answers; a database outage does not fail it).
EXPORTER_HEALTH_PATH = "/healthz"
BIND_RE = re.compile(r"^[0-9A-Za-z.:\[\]-]{1,64}$")


@dataclass(frozen=True)
class Unit:
    """One systemd unit file a host gets, and the instances of it that run (with their HTTP gate)."""

    file: str  # e.g. muzo-worker@.service
    text: str
    instances: tuple[str, ...]
    http_port: int | None = None  # the health gate also wants GET http://127.0.0.1:PORT/PATH -> 200
    http_path: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class HostPlan:
    """The rendered inputs of one host (``env_text`` holds secrets: never print it)."""

    name: str
    queues: tuple[str, ...]
    env_text: str
    units: tuple[Unit, ...]
    handler_packages: tuple[str, ...]
    health_timeout_s: float

    @property
    def env_sha256(self) -> str:
        return hashlib.sha256(self.env_text.encode()).hexdigest()

    @property
    def unit_text(self) -> str:
        """The worker unit's text."""
        return self.units[0].text

    @property
    def unit_sha256(self) -> str:
        """One digest of every unit file the host gets."""
        return hashlib.sha256("".join(f"{u.file}={u.sha256}\n" for u in self.units).encode()).hexdigest()

    @property
    def instances(self) -> tuple[str, ...]:
        return tuple(i for u in self.units for i in u.instances)

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


def _where(host: str, key: str, value: object) -> str:
    shown = repr(value) if isinstance(value, (int, float, bool)) or value is None else type(value).__name__
    if isinstance(value, str):
        shown = repr(value) if len(value) <= 40 else "a long string"
    return f"inventory host {host}: {key} is {shown}"


def _number(host: str, data: Mapping[str, Any], key: str, low: float, high: float, *,
            whole: bool = False) -> float | None:
    """``data[key]`` as a finite number in [low, high] (a numeric string too); None when unset."""
    value = data.get(key)
    if value is None:
        return None
    kind = "a whole number" if whole else "a number"
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value.strip())
    if number is None or not math.isfinite(number) or not low <= number <= high or (whole and number != int(number)):
        raise DeployError(f"{_where(host, key, value)}, not {kind} from {low:g} to {high:g}; fix the inventory")
    return number


def _strings(host: str, data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """A comma-separated string or a list/tuple of strings; () when unset."""
    value = data.get(key)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise DeployError(f"{_where(host, key, value)}, not a string or a list of strings; fix the inventory")


def _mapping(host: str, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise DeployError(f"{_where(host, key, value)}, not a dict of NAME: value; fix the inventory")
    for name, item in value.items():
        if isinstance(item, float) and not math.isfinite(item):
            raise DeployError(f"inventory host {host}: {key}[{name!r}] is {item!r}; give a finite value")
        if not (item is None or isinstance(item, (str, int, float, bool))):
            raise DeployError(f"inventory host {host}: {key}[{name!r}] is a {type(item).__name__}, "
                              "not a string or number; fix the inventory")
    return value


def _queues(host: str, data: Mapping[str, Any]) -> tuple[str, ...]:
    raw = _strings(host, data, "muzo_queues") or ("generation",)
    queues = tuple(dict.fromkeys(q.lower() for q in raw))
    for queue in queues:
        if not QUEUE_RE.match(queue):
            raise DeployError(f"inventory host {host}: muzo_queues has {queue!r}, not a queue name; "
                              "use names like generation,mockup")
    return queues


def validate_host_data(host: str, data: Mapping[str, Any]) -> None:
    """DeployError (one line) for a host data value of the wrong type or range, before anything runs."""
    _queues(host, data)
    _number(host, data, "muzo_concurrency", 1, 1000, whole=True)
    _number(host, data, "muzo_health_timeout", 1, 3600)
    _number(host, data, "muzo_exporter_port", 1, 65535, whole=True)
    _number(host, data, "muzo_dashboard_port", 1, 65535, whole=True)
    _mapping(host, data, "muzo_env")
    _mapping(host, data, "muzo_handlers")
    _strings(host, data, "muzo_handler_packages")
    for key in ("muzo_exporter_host", "muzo_dashboard_host"):
        value = data.get(key)
        if value is not None and not (isinstance(value, str) and BIND_RE.match(value)):
            raise DeployError(f"{_where(host, key, value)}, not an address to bind (like 127.0.0.1 or 0.0.0.0)")


def host_values(host: str, base: Mapping[str, str], data: Mapping[str, Any]) -> dict[str, str]:
    """The env values for ``host``: the env file, then ``muzo_env``, queues, concurrency, handlers."""
    values = dict(base)
    for key, value in _mapping(host, data, "muzo_env").items():
        values[str(key)] = "" if value is None else str(value)
    values["WORKER_QUEUES"] = ",".join(_queues(host, data))
    concurrency = _number(host, data, "muzo_concurrency", 1, 1000, whole=True)
    if concurrency is not None:
        values["WORKER_CONCURRENCY"] = str(int(concurrency))
    handlers = _mapping(host, data, "muzo_handlers")
    if handlers:
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


def check_host_values(host: str, values: Mapping[str, str], waivers: Mapping[str, str] | None = None) -> None:
    """DeployError naming every variable with an error (the library check, on the values); ``waivers``
    (code → reason, ``deploy --allow``) and the env file's own MUZO_CHECK_WAIVERS accept a code."""
    from muzo_ops.env import check_values
    from muzo_ops.env.schema import App

    report = check_values(values, app=App.WORKER, waivers=waivers)
    if not report.ok:
        problems = "; ".join(f"{p.variable or 'file'}: {p.message}" for p in report.errors)
        raise DeployError(f"host {host}: the worker env has errors ({problems}); "
                          "fix the env file or the host's muzo_env")


def _template(name: str, **context: object) -> str:
    import jinja2

    from muzo_ops.env.render import template_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(name).render(**context)


def render_unit(values: Mapping[str, str]) -> str:
    """The worker's unit template (``muzo-worker@.service``)."""
    try:
        drain = float(values.get("WORKER_DRAIN_TIMEOUT_SECONDS") or 30)
    except ValueError:
        drain = 30.0
    return _template("muzo-worker@.service.j2", watchdog_seconds=WATCHDOG_SECONDS, drain_seconds=f"{drain:g}",
                     stop_seconds=int(drain) + STOP_MARGIN_SECONDS, tasks_max=WORKER_TASKS_MAX,
                     syslog_identifier="muzo-worker", unit_file="muzo-worker@.service")


def render_units(host: str, values: Mapping[str, str], data: Mapping[str, Any],
                 queues: tuple[str, ...]) -> tuple[Unit, ...]:
    """The worker template with one instance per queue, then the exporter and dashboard if asked for."""
    units = [Unit("muzo-worker@.service", render_unit(values), tuple(f"muzo-worker@{q}.service" for q in queues))]
    for kind, path, tasks in (("exporter", EXPORTER_HEALTH_PATH, EXPORTER_TASKS_MAX),
                              ("dashboard", "/healthz", DASHBOARD_TASKS_MAX)):
        port = _number(host, data, f"muzo_{kind}_port", 1, 65535, whole=True)
        if port is None:
            continue
        name = "muzo-jobs-metrics.service" if kind == "exporter" else "muzo-dashboard.service"
        text = _template(f"{name}.j2", host=str(data.get(f"muzo_{kind}_host") or "127.0.0.1"), port=int(port),
                         tasks_max=tasks, syslog_identifier=name.removesuffix(".service"), unit_file=name)
        units.append(Unit(name, text, (name,), int(port), path))
    return tuple(units)


def plan_host(host: str, base: Mapping[str, str], data: Mapping[str, Any],
              waivers: Mapping[str, str] | None = None) -> HostPlan:
    """Render and check everything ``host`` needs; DeployError before anything is touched."""
    if data.get("_sudo") or data.get("_su_user") or data.get("_doas"):
        raise DeployError(f"host {host}: sudo/su/doas are not supported (pyinfra would pass the env file "
                          "through a temporary file the SSH user can read); connect as root: ssh_user root")
    validate_host_data(host, data)
    values = host_values(host, base, data)
    check_host_values(host, values, waivers)
    packages = _strings(host, data, "muzo_handler_packages")
    timeout = _number(host, data, "muzo_health_timeout", 1, 3600) or DEFAULT_HEALTH_TIMEOUT_S
    queues = _queues(host, data)
    return HostPlan(host, queues, render_env(host, values), render_units(host, values, data, queues),
                    tuple(str(Path(p).expanduser()) for p in packages), timeout)
