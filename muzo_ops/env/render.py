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
from muzo_ops.env import schema
from muzo_ops.env.envfile import format_line

if TYPE_CHECKING:
    import jinja2

# Committed file -> the template it is rendered from.
RENDERED_FILES: dict[str, str] = {
    EXAMPLE_ENV_FILE: "env.example.j2",
    TEMPLATE_ENV_FILE: "env.template.j2",
    DOCS_ENV_PAGE: "ENVIRONMENT_VARIABLES.md.j2",
}

# (code, severity, rule) for the docs page; checks.py holds the logic.
RULES: tuple[tuple[str, str, str], ...] = (
    ("missing", "error", "A required variable is unset or empty."),
    ("placeholder", "error", "A value still equals its .env.example placeholder or looks like "
     "one (your-…, …-your-…, replace-me, change-me, xxx, <…>)."),
    ("invalid", "error", "A value breaks its variable's rule (URL scheme, boolean, port, "
     "choice, e-mail, Stripe key prefix, minimum length)."),
    ("mongo-direct-and-replicaset", "error", "DATABASE_URL sets directConnection=true and replicaSet=."),
    ("mongo-timeout-missing", "warning", "DATABASE_URL has no serverSelectionTimeoutMS (use 30000)."),
    ("mongo-timeout-low", "warning", "serverSelectionTimeoutMS is under 10000."),
    ("mongo-tls-insecure", "error", "tlsAllowInvalidCertificates/tlsInsecure=true with "
     "NODE_ENV=production (a warning otherwise)."),
    ("mongo-password-encoding", "error", "The MongoDB user or password has @ : / ? # [ ] or a "
     "bare % that must be percent-encoded."),
    ("secret-in-public", "error", "A Stripe secret key (sk_…/rk_…) in a NEXT_PUBLIC_* variable."),
    ("stripe-mode-mixed", "error", "Stripe test and live keys mixed."),
    ("stripe-publishable-differ", "warning", "The two publishable keys differ."),
    ("nextauth-url-not-https", "error", "NEXTAUTH_URL is not https:// with NODE_ENV=production."),
    ("unknown-variable-typo", "warning", "An unknown variable close to a known name."),
    ("duplicate", "warning", "A variable set twice (the last one wins)."),
    ("mongo-unreachable / mongo-auth-failed / mongo-unauthorized / redis-unreachable / redis-auth-failed",
     "error", "With --connect: the server did not answer, refused the credentials, or the user "
     "may not read the app's database."),
    ("file-permissions", "warning", "The env file is readable by group or others (not 0600)."),
    ("dollar-expansion", "warning", "A `$name` in a value: Next.js expands it, python-dotenv does not."),
    ("deprecated", "warning", "A deprecated variable is set (GENERATION_WORKER_CONCURRENCY: use "
     "WORKER_CONCURRENCY, which wins when both are set)."),
)


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
    }
    base.update(context)
    return env.get_template(template).render(**base)


def render_env(values: Mapping[str, str], environment: schema.Environment) -> str:
    """The text of a real ``.env`` holding ``values``."""
    return render("env.j2", values=dict(values), environment=environment.value)


def render_committed(name: str) -> str:
    """The text ``render`` gives for committed file ``name``."""
    return render(RENDERED_FILES[name])


def drifted(root: str) -> list[str]:
    """The committed files under ``root`` that differ from the schema's rendering."""
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
    from muzo_ops.env.envfile import write_atomic

    written = []
    for name in RENDERED_FILES:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        text = render_committed(name)
        write_atomic(path, text, mode=0o644)
        written.append(name)
    return written
