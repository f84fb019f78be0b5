"""The ``Muzo-Signature`` header of HTTP handler calls (the scheme Stripe signs its webhooks with).

``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body bytes>" keyed with MUZO_HANDLER_SIGNING_SECRET>``.
The receiver recomputes v1 over the bytes it received, compares in constant
time, and refuses a ``t`` further than ``SIGNATURE_TOLERANCE_S`` from its
clock (a replayed call). docs/HANDLERS.md has the TypeScript verifier.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from muzo_ops.constants import SIGNATURE_TOLERANCE_S

SECRET_VARIABLE = "MUZO_HANDLER_SIGNING_SECRET"
PREVIOUS_SECRET_VARIABLE = "MUZO_HANDLER_SIGNING_SECRET_PREVIOUS"


def digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for ``body`` signed now (or at ``timestamp``)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={digest(secret, t, body)}"


def verify(header_value: str, body: bytes, secrets: list[str], now: float | None = None,
           tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """Whether ``header_value`` signs ``body`` with one of ``secrets`` within the tolerance (Python receivers)."""
    fields: dict[str, list[str]] = {}
    for part in header_value.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isascii() or not stamps[0].isdigit() or len(stamps[0]) > 12:
        return False
    t = int(stamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    given = fields.get("v1", [])
    return any(hmac.compare_digest(digest(secret, t, body), candidate)
               for secret in secrets if secret for candidate in given)
