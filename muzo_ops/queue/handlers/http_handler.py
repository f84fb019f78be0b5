"""HTTP handlers: a signed POST per job (``--handler GENERATION=https://web.internal/api/jobs/generation``).

The body is the job (``protocol.request_body``), ``Content-Type:
application/json``, ``Muzo-Signature`` (``signing``) and ``Idempotency-Key:
<job id>`` (delivery is at least once). The answer:

- 2xx: done; the JSON body is the result (empty: null);
- 409, 425, 429, 5xx, a timeout or a connection error: retry, not before
  ``Retry-After`` (seconds or an HTTP date) when given;
- any other 4xx: fatal, FAILED at once;
- anything else (a redirect): a failure, retried by the type's policy.

TLS is verified; redirects are not followed (a signed job goes only where
it was configured to go).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from muzo_ops.constants import HANDLER_ERROR_BODY_CHARS, HANDLER_HTTP_CONNECT_TIMEOUT_S, SIGNATURE_HEADER, VERSION
from muzo_ops.errors import ConfigError
from muzo_ops.queue.handlers import protocol, signing
from muzo_ops.queue.jobs import FatalJobError, Job, RetryJob

RETRY_STATUSES = frozenset({409, 425, 429})


class HandlerResponseError(Exception):
    """An HTTP handler's answer that is neither done, retry nor fatal (retried by the policy)."""


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds from now (a number of seconds or an HTTP date), or None."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text[:12])
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _where(url: str) -> str:
    """The URL without credentials, query or fragment (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class HttpHandler:
    """POSTs each job to ``url``; ``run(job)`` is the worker's coroutine handler."""

    def __init__(self, url: str, *, secret: str, connect_timeout_s: float = HANDLER_HTTP_CONNECT_TIMEOUT_S) -> None:
        if not secret:
            raise ConfigError(f"HTTP handler {_where(url)} signs every call: set {signing.SECRET_VARIABLE} "
                              "(muzo-ops secrets generate) in the worker's env file and the web app's")
        self.url = url
        self.where = _where(url)
        self._secret = secret
        self._timeout = httpx.Timeout(None, connect=connect_timeout_s)  # the type's timeout bounds the rest
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False, verify=True)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run(self, job: Job) -> Any:
        """One job: the result, or RetryJob / FatalJobError / HandlerResponseError."""
        body = protocol.request_body(job)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signing.header(self._secret, body),
                   "Idempotency-Key": job.id, "User-Agent": f"muzo-ops/{VERSION}"}
        try:
            response = await self._http().post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise RetryJob(f"POST {self.where} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise RetryJob(f"POST {self.where} failed: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            try:
                return protocol.parse_result(response.content, f"the answer of {self.where}")
            except protocol.NotJsonError as exc:
                raise HandlerResponseError(str(exc)) from None
        said = response.text[:HANDLER_ERROR_BODY_CHARS].strip()
        said = f": {said}" if said else ""
        if status in RETRY_STATUSES or 500 <= status < 600:
            after = retry_after(response.headers.get("Retry-After"))
            when = f", retry after {after:g} s" if after is not None else ""
            raise RetryJob(f"POST {self.where} answered {status}{when}{said}", after_seconds=after)
        if 400 <= status < 500:
            raise FatalJobError(f"POST {self.where} answered {status} (fatal){said}")
        raise HandlerResponseError(f"POST {self.where} answered {status}: handler URLs are not redirected, "
                                   f"configure the final URL{said}")
