"""The job dashboard: see and operate the queue in a browser, safe by default.

``create_app(values)`` returns the ASGI app (mountable inside another
Starlette app); ``serve`` runs it with uvicorn (``muzo-ops dashboard``).
Importing this package imports nothing heavy: starlette, jinja2 and
pymongo load when an app is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from muzo_ops.dashboard.app import create_app
    from muzo_ops.dashboard.server import check_bind, serve

__all__ = ["check_bind", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from muzo_ops.dashboard.app import create_app

        return create_app
    if name in ("serve", "check_bind"):
        from muzo_ops.dashboard import server

        return getattr(server, name)
    raise AttributeError(name)
