"""Rendering env files and the docs page from the schema with Jinja2.

``render`` writes ``.env.example``, ``.env.template`` and
``docs/ENVIRONMENT_VARIABLES.md``; ``render --check`` reports the ones that
differ from what the schema gives. ``init-env`` renders ``.env`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from muzo_ops.constants import DOCS_ENV_PAGE, EXAMPLE_ENV_FILE, TEMPLATE_ENV_FILE
from muzo_ops.env import checks, schema
from muzo_ops.env.envfile import format_line
from muzo_ops.env.rules import UNWAIVABLE

if TYPE_CHECKING:
    import jinja2

# Committed file -> the template it is rendered from.
RENDERED_FILES: dict[str, str] = {
    EXAMPLE_ENV_FILE: "env.example.j2",
    TEMPLATE_ENV_FILE: "env.template.j2",
    DOCS_ENV_PAGE: "ENVIRONMENT_VARIABLES.md.j2",
}

# (code, severity, rule) for the docs page: the registry every check declares its code in.
RULES: tuple[tuple[str, str, str], ...] = tuple((r.code, r.severity, r.rule) for r in checks.RULES.values())


def template_dir() -> Path:
    """The templates: inside the installed package, or ``templates/`` of a checkout."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "templates"
    return packaged if packaged.is_dir() else package.parent / "templates"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["dotenv_line"] = lambda name, value: format_line(name, value).rstrip("\n")
    env.filters["md"] = _md
    return env


def render(template: str, **context: object) -> str:
    """Render ``template`` with the schema in the context."""
    env = _environment()
    base: dict[str, object] = {
        "groups": schema.grouped(),
        "variables": schema.VARIABLES,
        "rules": RULES,
        "unwaivable": sorted(UNWAIVABLE.items()),
    }
    base.update(context)
    return env.get_template(template).render(**base)


def render_env(values: Mapping[str, str], environment: schema.Environment) -> str:
    """The text of a real ``.env`` holding ``values``."""
    return render("env.j2", values=dict(values), environment=environment.value)


def render_committed(name: str) -> str:
    """The text ``render`` gives for committed file ``name``."""
    return render(RENDERED_FILES[name])


def _check_root(root: str) -> None:
    """UsageError unless ``root`` is an existing folder (a typo must not create a new tree)."""
    if not os.path.isdir(root):
        from muzo_ops.errors import UsageError

        raise UsageError(f"--root {root}: no such folder; give the repository root (the folder with "
                         "pyproject.toml and docs/)")


def drifted(root: str) -> list[str]:
    """The committed files under ``root`` that differ from the schema's rendering."""
    _check_root(root)
    out: list[str] = []
    for name in RENDERED_FILES:
        path = os.path.join(root, name)
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                current = handle.read()
        except OSError:
            current = None
        if current != render_committed(name):
            out.append(name)
    return out


def write_all(root: str) -> list[str]:
    """Write every committed rendered file under ``root``; the names written."""
    from muzo_ops.constants import DEFAULT_ENV_FILE
    from muzo_ops.files import atomic

    _check_root(root)
    written = []
    for name in RENDERED_FILES:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        text = render_committed(name)
        # under the lock of the folder's env file, as init-env writes .env.example
        atomic.write(path, text, mode=0o644, lock_of=os.path.join(root, DEFAULT_ENV_FILE))
        written.append(name)
    return written
