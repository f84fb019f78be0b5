"""What exec and HTTP handlers receive and answer: the job as one JSON object, the result as JSON.

The request (stdin of an exec handler, the body of an HTTP one)::

    {"id": "<24 hex>", "type": "GENERATION", "payload": {…}, "attempt": 1,
     "maxAttempts": 3, "projectId": "<24 hex>" or null}

``attempt`` counts from 1: the attempt now running. BSON values JSON has
no word for travel as text: an ObjectId as its 24 hex characters, a date
as ISO 8601 in UTC, a Decimal128 as its decimal text, binary as base64.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from muzo_ops.constants import HANDLER_MAX_OUTPUT_BYTES
from muzo_ops.queue.jobs import Job, PayloadError


def _bson_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)  # ObjectId, Decimal128, Int64 subclasses are ints already


def request_body(job: Job) -> bytes:
    """The job as one JSON object, ASCII only (the same bytes whatever decodes them).

    PayloadError (fatal: no retry can change the payload) for a NaN or an
    infinity, which JSON has no word for, or a payload nested too deep.
    """
    try:
        return json.dumps({
            "id": job.id, "type": job.type.value, "payload": job.payload, "attempt": job.attempts,
            "maxAttempts": job.max_attempts, "projectId": job.project_id,
        }, default=_bson_default, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
    except ValueError as exc:
        raise PayloadError("the payload holds NaN or Infinity, which JSON cannot carry to the handler") from exc
    except RecursionError as exc:
        raise PayloadError("the payload is nested too deep to send as JSON") from exc


class NotJsonError(ValueError):
    """A handler's output that is not one JSON value."""


def parse_result(output: bytes, where: str) -> Any:
    """One JSON value (empty or blank: None); NotJsonError names ``where`` and never quotes the text."""
    if len(output) > HANDLER_MAX_OUTPUT_BYTES:
        raise NotJsonError(f"{where} was {len(output)} bytes, over the {HANDLER_MAX_OUTPUT_BYTES} bytes a "
                           "result may take")
    if not output.strip():
        return None
    try:
        return json.loads(output)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise NotJsonError(f"{where} was not JSON ({len(output)} bytes): print one JSON value, or "
                           "nothing for null") from exc


def retry_after_from(output: bytes) -> float | None:
    """``{"retryAfterSeconds": S}`` in an exec handler's output: S (a number from 0), else None."""
    try:
        value = json.loads(output) if output.strip() else None
    except (ValueError, RecursionError):
        return None
    seconds = value.get("retryAfterSeconds") if isinstance(value, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and 0 <= seconds < float("inf"):
        return float(seconds)
    return None
