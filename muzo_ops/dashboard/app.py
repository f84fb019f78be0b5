"""The job dashboard as an ASGI app: ``create_app(values)``, mountable inside another Starlette app.

Routes (stable: scripts and tests use them): ``GET /`` overview, ``GET
/jobs?status=&type=&q=&after=`` list, ``GET /jobs/<id>`` detail, ``POST
/jobs/<id>/retry|cancel|delete``, ``POST /queues/<type>/retry-failed``,
``GET /events`` (server-sent events), ``GET /api/overview`` (JSON),
``GET /healthz`` (no credentials; ``ok`` while the process answers),
``GET /readyz`` (no credentials; 200 while MongoDB answers). Every query
and update is the store's, through ``muzo_ops.queue.operators``; nothing
here builds one. Every request answers within the app's bound whatever
the database does (``deadline``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from muzo_ops.dashboard.deadline import DEFAULT_TIMEOUT_S, Deadline, TooLate
from muzo_ops.dashboard.guard import READY_PATH, Credentials, Guard
from muzo_ops.dashboard.live import DEFAULT_POLL_S, ChangeFeed
from muzo_ops.errors import UsageError
from muzo_ops.logs import Logger
from muzo_ops.queue import operators
from muzo_ops.queue.jobs import JobStatus, JobType
from muzo_ops.queue.opsstore import STATUSES, QueueCounts, ensure_operator_indexes, is_pymongo_error
from muzo_ops.redact.redactor import Redactor

if TYPE_CHECKING:
    from jinja2 import Environment
    from pymongo.collection import Collection

DEFAULT_CACHE_S = 3.0
DEFAULT_CAP = 10_000  # shown as "10,000+" above it
LOGGER_NAME = "muzo-dashboard"
MAX_FORM_BYTES = 4096
INDEX_RETRY_S = 10.0  # after MongoDB did not answer the index check, a request tries it again this much later


@dataclass
class Dashboard:
    """What the routes share: the collection, its counts cache, the live feed, who may act."""

    jobs: Collection[dict[str, Any]]
    counts: QueueCounts
    feed: ChangeFeed
    credentials: Credentials
    redactor: Redactor
    logger: Logger
    allow_actions: bool
    templates: Environment
    deadline: Deadline

    _ready: bool = False
    _pinged: tuple[float, bool] = (-1.0, False)  # when /readyz last asked MongoDB, and whether it answered
    _indexes: str = "unchecked"  # unchecked, checking, done, failed (MongoDB did not answer)
    _indexes_failed_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ready(self, background: bool = False) -> None:
        """The live feed running and the indexes checked: at start-up (lifespan), else from the first request
        (a mounted app's lifespan is not run), in the ``background`` so that request does not wait for it.
        A check MongoDB did not answer is tried again from a request ``INDEX_RETRY_S`` later."""
        with self._lock:
            if not self._ready:
                self._ready = True
                self.feed.start()
            due = self._indexes == "unchecked" or (
                self._indexes == "failed" and time.monotonic() - self._indexes_failed_at >= INDEX_RETRY_S)
            if not due:
                return
            self._indexes = "checking"
        if background:
            threading.Thread(target=self._check_indexes, name="dashboard-indexes", daemon=True).start()
        else:
            self._check_indexes()

    def _check_indexes(self) -> None:
        outage = False
        try:
            created = self.deadline.call(ensure_operator_indexes, self.jobs)
            if created:
                self.logger.info("dashboard created indexes", indexes=created)
        except Exception as exc:
            if not is_pymongo_error(exc):
                self._indexes = "done"
                raise
            from muzo_ops.mongo.errors import error_line, is_outage

            outage = is_outage(exc)  # else (no right to create them, say) asking again would not help
            self.logger.warn("dashboard could not check its indexes", reason=error_line(exc),
                             again=f"in {INDEX_RETRY_S:g} s" if outage else "no")
        self._indexes_failed_at = time.monotonic()
        self._indexes = "failed" if outage else "done"

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        user = request.scope.get("state", {}).get("user", "")
        html = self.templates.get_template(name).render(
            base=request.scope.get("root_path", ""), user=user, allow_actions=self.allow_actions,
            csrf=self.credentials.csrf_token(user), mode=self.feed.mode,
            feed_version=request.scope.get("state", {}).get("feed_version", self.feed.version), poll_s=self.feed.poll_s,
            types=[t.value for t in JobType], **context)
        return HTMLResponse(self.redactor(html), status_code=status)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status, message=self.redactor(message), code=status)


def _templates() -> Environment:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    folder = resources.files("muzo_ops.dashboard") / "templates"
    env = Environment(loader=FileSystemLoader(str(folder)), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["count"] = operators.format_count
    env.filters["pretty"] = _pretty
    env.filters["age"] = _age
    return env


def _pretty(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def _age(seconds: float) -> str:
    if seconds <= 0:
        return "none due"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _dash(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    if dash._indexes in ("unchecked", "failed"):
        dash.ready(background=True)
    # the live feed's version before anything is read: a change while the page is drawn is sent at once
    request.scope.setdefault("state", {})["feed_version"] = dash.feed.version
    return dash


# ---------------------------------------------------------------- pages


def bounded(handler: Callable[[Request], Response]) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` (which reads MongoDB) as an endpoint that answers within the bound: 503 in one line after it."""
    async def endpoint(request: Request) -> Response:
        dash = _dash(request)
        try:
            return await dash.deadline.run(handler, request)
        except TooLate as late:
            dash.logger.warn("dashboard request outlived its bound", path=request.url.path,
                             seconds=dash.deadline.timeout_s)
            if handler is overview_api:
                return JSONResponse(_down_overview(dash, str(late)).to_dict(), status_code=503)
            return dash.error(request, 503, f"{late}: reload in a moment")

    return endpoint


def overview_page(request: Request) -> Response:
    dash = _dash(request)
    view = operators.overview(dash.counts, dash.redactor)
    notice = request.query_params.get("retried")
    return dash.page(request, "overview.html", 200 if view.up else 503, view=view, drawn_at=operators.iso(
        operators_now()), notice=f"{notice} FAILED job(s) back to PENDING" if notice and notice.isdigit() else "")


def operators_now() -> dt.datetime:
    from muzo_ops.queue.store import utcnow

    return utcnow()


def _down_overview(dash: Dashboard, error: str) -> operators.Overview:
    """The overview's shape when MongoDB did not answer in time: every count 0, ``up`` false, the error line."""
    return operators.Overview(up=False, cap=dash.counts.cap, counts={t.value: dict.fromkeys(STATUSES, 0)
                                                                     for t in dash.counts.types},
                              oldest_due_age_s={}, finished_last_hour={}, failed_last_hour={}, running_past_lock=0,
                              workers=[], error=error)


def overview_api(request: Request) -> Response:
    dash = _dash(request)
    view = operators.overview(dash.counts, dash.redactor)
    data = operators.plain(view.to_dict())
    from muzo_ops.redact.documents import mask_document

    return JSONResponse(mask_document(data, dash.redactor), status_code=200 if view.up else 503)


def list_page(request: Request) -> Response:
    dash = _dash(request)
    params = request.query_params
    try:
        filters = operators.ListFilter.parse(params.get("status"), params.get("type"), params.get("q"),
                                             params.get("after"))
    except UsageError as exc:
        return dash.error(request, 400, str(exc))
    try:
        page = operators.list_jobs(dash.jobs, filters, dash.redactor)
    except Exception as exc:
        return _database_error(dash, request, exc)
    next_link = f"?{urlencode(filters.params(page.next_after))}" if page.next_after else ""
    self_url = request.scope.get("root_path", "") + "/jobs" + (f"?{request.url.query}" if request.url.query else "")
    return dash.page(request, "list.html", page=page, filters=filters, next_link=next_link, self_url=self_url,
                     statuses=[s.value for s in JobStatus], notice=params.get("notice", ""))


def job_page(request: Request) -> Response:
    dash = _dash(request)
    try:
        job_id = operators.parse_job_id(request.path_params["job_id"])
    except UsageError as exc:
        return dash.error(request, 400, str(exc))
    try:
        job = operators.show(dash.jobs, job_id, dash.redactor)
    except operators.ActionRefused as refused:
        return dash.error(request, refused.http_status, str(refused))
    except Exception as exc:
        return _database_error(dash, request, exc)
    done = request.query_params.get("done", "")
    notice = {"retry": "Retried: back to PENDING, due now.", "cancel": "Cancelled."}.get(done, "")
    return dash.page(request, "job.html", job=job, notice=notice)


def _database_error(dash: Dashboard, request: Request, exc: Exception, unknown: str = "") -> Response:
    """503 in one line for a database failure (``unknown``: what the operator cannot know now, said after)."""
    if isinstance(exc, TooLate):
        line = str(exc)
    elif is_pymongo_error(exc):
        from muzo_ops.mongo.errors import error_line

        line = f"MongoDB: {error_line(exc)}"
    else:
        raise exc
    return dash.error(request, 503, f"{line}. {unknown}" if unknown else line)


def unknown_outcome(action: str, reload: str) -> str:
    """What a timed-out or failed action tells the operator: it may or may not have been applied."""
    return (f"Whether the {action} was applied is unknown (the database may have done it before the answer "
            f"was lost): reload {reload} to see. Doing it again is safe: it applies only to what you saw.")


# ---------------------------------------------------------------- actions


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


async def _action_form(request: Request) -> tuple[dict[str, str], str] | Response:
    """(the POSTed form, the user) when actions are on and the CSRF token is right; else the refusal (403)."""
    dash = _dash(request)
    form = await _form(request)
    if not dash.allow_actions:
        return dash.error(request, 403, "actions are off: start the dashboard with --allow-actions")
    user: str = request.scope.get("state", {}).get("user", "")
    if not dash.credentials.csrf_ok(user, form.get("csrf", "")):
        return dash.error(request, 403, "the form's CSRF token is missing or wrong: reload the page")
    return form, user


async def job_action(request: Request) -> Response:
    dash = _dash(request)
    checked = await _action_form(request)
    if isinstance(checked, Response):
        return checked
    form, user = checked
    name = request.path_params["action"]
    try:
        action = operators.Action(name)
        job_id = operators.parse_job_id(request.path_params["job_id"])
    except (ValueError, UsageError):
        return dash.error(request, 404, "no such action")
    try:
        await dash.deadline.run(operators.act, dash.jobs, action, job_id, form.get("version", ""), user)
    except operators.ActionRefused as exc:
        dash.logger.info("dashboard action refused", user=user, action=action.value, jobId=str(job_id),
                         reason=str(exc), status=exc.http_status)
        return dash.error(request, exc.http_status, str(exc))
    except Exception as exc:
        response = _database_error(dash, request, exc, unknown_outcome(
            action.value, "the job" if action is not operators.Action.DELETE else "the list"))
        dash.logger.warn("dashboard action outcome unknown", user=user, action=action.value, jobId=str(job_id))
        return response
    dash.logger.info("dashboard action", user=user, action=action.value, jobId=str(job_id))
    base = request.scope.get("root_path", "")
    if action is operators.Action.DELETE:
        return RedirectResponse(f"{base}/jobs?{urlencode({'notice': f'deleted job {job_id}'})}", 303)
    return RedirectResponse(f"{base}/jobs/{job_id}?done={action.value}", 303)


async def retry_failed_action(request: Request) -> Response:
    dash = _dash(request)
    checked = await _action_form(request)
    if isinstance(checked, Response):
        return checked
    form, user = checked
    try:
        job_type = JobType.parse(request.path_params["job_type"])
        seen_at = dt.datetime.fromisoformat(form.get("seen", "").replace("Z", "+00:00"))
    except (UsageError, ValueError):
        return dash.error(request, 400, "unknown job type, or a form without the time it was drawn: reload")
    if seen_at.tzinfo is None:
        return dash.error(request, 400, "the form's time has no zone: reload")
    try:  # a zone can push the time past the calendar's ends (9999-12-31T23:59-23:59)
        seen_at = seen_at.astimezone(dt.UTC)
    except OverflowError:
        return dash.error(request, 400, "the form's time is out of range: reload")
    try:
        count = await dash.deadline.run(operators.retry_all_failed, dash.jobs, job_type, seen_at)
    except Exception as exc:
        response = _database_error(dash, request, exc, unknown_outcome(
            f"retry of the FAILED {job_type.value} jobs", "the overview (some, all or none may be back to PENDING)"))
        dash.logger.warn("dashboard action outcome unknown", user=user, action="retry-failed", type=job_type.value)
        return response
    dash.logger.info("dashboard action", user=user, action="retry-failed", type=job_type.value, count=count)
    return RedirectResponse(f"{request.scope.get('root_path', '')}/?retried={count}", 303)


# ---------------------------------------------------------------- readiness

READY_CACHE_S = 1.0  # /readyz asks MongoDB at most once a second, whoever calls it


async def readyz(request: Request) -> Response:
    """200 ``ready`` while MongoDB answers a ping within the bound, else 503 ``not ready``; no credentials, so
    it says nothing more (the reason is in the log)."""
    dash = _dash(request)
    asked_at, answered = dash._pinged
    if time.monotonic() - asked_at >= READY_CACHE_S:
        try:
            await dash.deadline.run(ping, dash.jobs)
            answered = True
        except Exception as exc:
            if not isinstance(exc, TooLate) and not is_pymongo_error(exc):
                raise
            answered = False
        dash._pinged = (time.monotonic(), answered)
    body = b"ready\n" if answered else b"not ready: MongoDB does not answer\n"
    return Response(body, status_code=200 if answered else 503, media_type="text/plain")


def ping(jobs: Collection[dict[str, Any]]) -> None:
    jobs.database.command("ping")


# ---------------------------------------------------------------- live


async def events(request: Request) -> Response:
    dash = _dash(request)
    since = request.query_params.get("since", "")
    stream = dash.feed.events(request.is_disconnected, trailing_s=dash.counts.cache_s,
                              since=int(since) if since.isascii() and since.isdigit() and len(since) < 16 else None)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"x-accel-buffering": "no"})


# ---------------------------------------------------------------- the app


def credentials_from(values: Mapping[str, str]) -> Credentials:
    """DASHBOARD_USER (default ``ops``) and DASHBOARD_PASSWORD (None when unset or empty)."""
    return Credentials(values.get("DASHBOARD_USER") or "ops", values.get("DASHBOARD_PASSWORD") or None)


def create_app(values: Mapping[str, str], *, allow_actions: bool = False,
               jobs: Collection[dict[str, Any]] | None = None, redactor: Redactor | None = None,
               logger: Logger | None = None, change_streams: bool = True, poll_s: float = DEFAULT_POLL_S,
               cache_s: float = DEFAULT_CACHE_S, cap: int = DEFAULT_CAP,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> Guard:
    """The dashboard for env ``values`` (DATABASE_URL, DASHBOARD_USER, DASHBOARD_PASSWORD) as an ASGI app.

    ``jobs``: a ``Job`` collection to use instead of DATABASE_URL's.
    ``change_streams`` False polls every ``poll_s`` even where change
    streams exist. Every known secret of ``values`` is masked in every page.
    ``timeout_s``: every request answers within it, whatever MongoDB does.
    """
    if redactor is None:
        redactor = Redactor()
    redactor.add_values(values)
    logger = logger or Logger(LOGGER_NAME, values.get("LOG_LEVEL") or "info", redactor=redactor)
    if jobs is None:
        from muzo_ops.queue.admin import connect_from_values

        jobs = connect_from_values(values, timeout_s=timeout_s).jobs
    deadline = Deadline(timeout_s)
    credentials = credentials_from(values)
    counts = QueueCounts(jobs, cache_s=cache_s, cap=cap, timeout_s=deadline.database_s)
    feed = ChangeFeed(jobs, logger, poll_s=poll_s, change_streams=change_streams, stall_s=deadline.database_s)
    dash = Dashboard(jobs, counts, feed, credentials, redactor, logger, allow_actions, _templates(), deadline)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(dash.ready)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(feed.stop)

    static = resources.files("muzo_ops.dashboard") / "static"
    app = Starlette(routes=[
        Route("/", bounded(overview_page), methods=["GET"]),
        Route("/api/overview", bounded(overview_api), methods=["GET"]),
        Route("/jobs", bounded(list_page), methods=["GET"]),
        Route("/jobs/{job_id}", bounded(job_page), methods=["GET"]),
        Route(READY_PATH, readyz, methods=["GET"]),
        Route("/jobs/{job_id}/{action}", job_action, methods=["POST"]),
        Route("/queues/{job_type}/retry-failed", retry_failed_action, methods=["POST"]),
        Route("/events", events, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ], lifespan=lifespan)
    app.state.dashboard = dash
    return Guard(app, credentials)


__all__ = ["DEFAULT_CACHE_S", "DEFAULT_CAP", "Dashboard", "create_app", "credentials_from"]
