"""The dashboard's door: HTTP basic auth in constant time, security headers, CSRF tokens.

An ASGI middleware around the whole app: every response carries the
security headers; ``/healthz`` answers without credentials (and says
nothing but ``ok``: the process answers; it never asks MongoDB), and so
does ``/readyz`` (the app's route: ``ready`` or ``not ready``, whether
MongoDB answers); every other path needs ``DASHBOARD_USER`` and
``DASHBOARD_PASSWORD``. With no password the dashboard runs on 127.0.0.1
only (``server.check_bind``) and answers only requests whose ``Host`` is
127.0.0.1 or localhost, so a web page cannot reach it through a DNS name
that points at this machine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"  # the app's own route (it asks MongoDB); like /healthz, it needs no credentials
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]
LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass
class Credentials:
    """Who may enter; ``password`` None: nobody is asked (127.0.0.1 only)."""

    user: str
    password: str | None
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def check(self, header: bytes | None) -> str | None:
        """The user of a valid ``Authorization: Basic`` header, else None; constant time in the compared values."""
        if self.password is None:
            return self.user
        if not header or header[:6].lower() != b"basic ":
            return None
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        same_user = hmac.compare_digest(user, self.user.encode())
        same_password = hmac.compare_digest(password, self.password.encode())
        return self.user if (same_user & same_password) and sep else None

    def csrf_token(self, user: str) -> str:
        """The hidden form field's value for ``user`` (an HMAC under a key of this process)."""
        return hmac.new(self._key, user.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, user: str, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(user).encode(), token.encode())


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _host(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"host":
            text: str = value.decode("latin-1")
            return text.rsplit(":", 1)[0] if not text.startswith("[") else text
    return ""


class Guard:
    """Security headers on everything; basic auth on everything but ``/healthz``."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        if _route_path(scope) == HEALTH_PATH:
            await _plain(send_secured, 200, b"ok\n")
            return
        if _route_path(scope) == READY_PATH:
            await self.app(scope, receive, send_secured)
            return
        if self.credentials.password is None and _host(scope) not in LOCAL_HOSTS:
            await _plain(send_secured, 421, b"this dashboard answers on 127.0.0.1 only\n")
            return
        header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), None)
        user = self.credentials.check(header)
        if user is None:
            await _plain(send_secured, 401, b"credentials required\n",
                         [(b"www-authenticate", b'Basic realm="muzo jobs", charset="UTF-8"')])
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["user"] = user
        await self.app(scope, receive, send_secured)


async def _plain(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["CSP", "HEALTH_PATH", "READY_PATH", "Credentials", "Guard"]
