"""The dashboard's answer bound (docs/DASHBOARD.md, "Answers within a bound") under fault injection.

Invariant: every request (a page, /api/overview, an action, /healthz, /readyz) answers within the
bound (``--timeout``, default 5 s) whatever the database does; an action either changed its job or
not, and when the answer cannot say which, the page says so and asks for a reload. The faults, on the
real SecantusDB of the session, against a served ``muzo-ops dashboard`` process: SIGSTOP shorter than
every timeout, SIGSTOP longer than every timeout, kill -9 and a restart. Assertions allow 3x the bound
(a loaded 2-core machine); the figures are printed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bson import ObjectId
from pymongo.collection import Collection

from tests.dashboard_helpers import basic, env_values, form_fields, fresh_jobs
from tests.helpers import assert_no_secret
from tests.servers import Secantus, free_port, stop_pid, wait_port
from tests.test_dashboard_adversarial import ALL_SECRETS
from tests.test_dashboard_cli import write_env
from tests.workers import prisma_job

Doc = dict[str, Any]
RELOAD = "reload"


@dataclass
class Served:
    base: str
    port: int
    proc: subprocess.Popen[bytes]
    out: Path
    timeout_s: float

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": basic()}


@contextmanager
def served(tmp_path: Path, url: str, timeout_s: float | None) -> Iterator[Served]:
    """``muzo-ops dashboard --allow-actions [--timeout T]`` on a free port until the block ends."""
    env = write_env(tmp_path / ".env", env_values(url))
    port = free_port()
    out = tmp_path / f"dashboard-{port}.out"
    extra = ["--timeout", f"{timeout_s:g}"] if timeout_s is not None else []
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "dashboard", "--env-file", str(env), "--host",
                                 "127.0.0.1", "--port", str(port), "--allow-actions", *extra], stdout=sink,
                                stderr=subprocess.STDOUT, env={**os.environ})
    try:
        wait_port(port, 30, proc)
        yield Served(f"http://127.0.0.1:{port}", port, proc, out, timeout_s or 5.0)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        stop_pid(proc)
        assert_no_secret(out.read_text(), ALL_SECRETS)


@dataclass
class Answer:
    kind: str
    status: int | str
    seconds: float
    text: str


@dataclass
class Jobs:
    """Jobs each action can apply to, and the forms their pages drew (one set per burst)."""

    failed: list[Doc] = field(default_factory=list)
    pending: list[Doc] = field(default_factory=list)
    for_all: list[Doc] = field(default_factory=list)  # what retry-failed (MOCKUP) applies to
    forms: dict[str, dict[str, str]] = field(default_factory=dict)  # "retry <id>" -> the form's fields


def prepare(dash: Served, jobs: Collection[Doc], bursts: int) -> Jobs:
    prepared = Jobs()
    # one type per action, so that no two actions of a burst race for the same job
    prepared.failed = [prisma_job("GENERATION", status="FAILED", attempts=3) for _ in range(bursts)]
    prepared.pending = [prisma_job("FULFILLMENT", status="PENDING") for _ in range(bursts)]
    prepared.for_all = [prisma_job("MOCKUP", status="FAILED", attempts=3) for _ in range(bursts)]
    jobs.insert_many([*prepared.failed, *prepared.pending, *prepared.for_all])
    with httpx.Client(headers=dash.auth, timeout=60) as client:
        for doc, action in [*((d, "retry") for d in prepared.failed), *((d, "cancel") for d in prepared.pending)]:
            page = client.get(f"{dash.base}/jobs/{doc['_id']}")
            assert page.status_code == 200, page.text[:300]
            prepared.forms[f"{action} {doc['_id']}"] = form_fields(page.text, f"/jobs/{doc['_id']}/{action}")
        overview = client.get(f"{dash.base}/")
        assert overview.status_code == 200
        prepared.forms["retry-failed"] = form_fields(overview.text, "/queues/MOCKUP/retry-failed")
    return prepared


def burst(dash: Served, prepared: Jobs, i: int) -> list[Answer]:
    """Every kind of request at once, each on its own connection; the answers (and how long each took)."""
    failed, pending = prepared.failed[i]["_id"], prepared.pending[i]["_id"]
    asks: list[tuple[str, str, str, dict[str, str] | None]] = [
        ("healthz", "GET", "/healthz", None), ("readyz", "GET", "/readyz", None),
        ("overview", "GET", "/", None), ("api", "GET", "/api/overview", None),
        ("list", "GET", "/jobs?status=FAILED", None), ("job", "GET", f"/jobs/{failed}", None),
        ("retry", "POST", f"/jobs/{failed}/retry", prepared.forms[f"retry {failed}"]),
        ("cancel", "POST", f"/jobs/{pending}/cancel", prepared.forms[f"cancel {pending}"]),
        ("retry-failed", "POST", "/queues/MOCKUP/retry-failed", prepared.forms["retry-failed"])]
    answers: list[Answer] = []

    def ask(kind: str, method: str, path: str, form: dict[str, str] | None) -> None:
        started = time.monotonic()
        try:
            with httpx.Client(headers=dash.auth, timeout=120) as client:
                r = client.request(method, dash.base + path, data=form, follow_redirects=False)
            answers.append(Answer(kind, r.status_code, time.monotonic() - started, r.text))
        except httpx.HTTPError as exc:
            answers.append(Answer(kind, type(exc).__name__, time.monotonic() - started, ""))

    threads = [threading.Thread(target=ask, args=a) for a in asks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(answers, key=lambda a: [x[0] for x in asks].index(a.kind))


def show(label: str, answers: list[Answer]) -> None:
    print(label, " ".join(f"{a.kind}={a.status}/{a.seconds:.2f}s" for a in answers))


def assert_within_bound(dash: Served, answers: list[Answer]) -> None:
    late = [(a.kind, a.status, round(a.seconds, 2)) for a in answers if a.seconds > 3 * dash.timeout_s]
    assert not late, f"answers later than 3x the {dash.timeout_s:g} s bound: {late}"


def assert_down(answers: list[Answer], cached: bool = False) -> None:
    """The database did not answer: one-line 503s, and each action's page says its outcome is unknown.

    ``cached``: the overview's counts may still be within their cache period (3 s), then shown (200)."""
    by = {a.kind: a for a in answers}
    assert by["healthz"].status == 200 and by["healthz"].text == "ok\n"
    assert by["readyz"].status == 503 and by["readyz"].text.startswith("not ready")
    for kind in ("overview", "api", "list", "job"):
        allowed = (200, 503) if cached and kind in ("overview", "api") else (503,)
        assert by[kind].status in allowed, (kind, by[kind].status, by[kind].text[:300])
    if by["api"].status == 503:
        assert by["api"].text.startswith("{") and '"up":false' in by["api"].text.replace(" ", "")
    for kind in ("retry", "cancel", "retry-failed"):
        assert by[kind].status == 503, (kind, by[kind].status)
        message = re.search(r'<p class="message">(.*?)</p>', by[kind].text, re.S)
        assert message and "unknown" in message.group(1) and RELOAD in message.group(1), by[kind].text[-600:]


def assert_whole(jobs: Collection[Doc], prepared: Jobs) -> None:
    """Each action either changed its job or not: never half (one command each, all or nothing)."""
    for doc in prepared.failed:
        now = jobs.find_one({"_id": doc["_id"]})
        assert now is not None and (now["status"], now["attempts"]) in (("FAILED", 3), ("PENDING", 0)), now
    for doc in prepared.for_all:
        now = jobs.find_one({"_id": doc["_id"]})
        assert now is not None and (now["status"], now["attempts"]) in (("FAILED", 3), ("PENDING", 0)), now
    for doc in prepared.pending:
        now = jobs.find_one({"_id": doc["_id"]})
        assert now is not None and now["status"] in ("PENDING", "FAILED"), now
        if now["status"] == "FAILED":
            assert now["lastError"]["name"] == "Cancelled"


def wait_back(dash: Served, seconds: float = 60.0) -> float:
    """Seconds until /readyz and every page answer 200 again."""
    started = time.monotonic()
    with httpx.Client(headers=dash.auth, timeout=60) as client:
        while True:
            codes = [client.get(dash.base + p).status_code for p in ("/readyz", "/", "/api/overview", "/jobs")]
            if codes == [200, 200, 200, 200]:
                return time.monotonic() - started
            assert time.monotonic() - started < seconds, codes
            time.sleep(0.5)


class EventStream:
    """One /events connection read in the background: the events it got, with when."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {basic()}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.sock.settimeout(0.5)
        self.seen = b""
        self.closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                self.closed = True
                return
            self.seen += chunk

    def changes(self) -> int:
        return self.seen.count(b"event: change")

    def hears_change(self, jobs: Collection[Doc], within: float = 30.0) -> bool:
        """Whether this stream is sent ``change`` after a job is enqueued now."""
        before = self.changes()
        deadline = time.monotonic() + within
        while self.changes() == before and time.monotonic() < deadline:
            jobs.insert_one(prisma_job("MOCKUP"))  # more than one: a change stream may be reopening
            time.sleep(1.0)
        return self.changes() > before

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_database_frozen_longer_than_every_timeout(tmp_path: Path, secantus: Secantus) -> None:
    """SIGSTOP longer than the bound, the live feed's stall limit and pymongo's own timeouts: every kind of
    request, at once, at the start of the freeze and well into it, answers within the bound (3x allowed):
    one-line 503s, actions saying their outcome is unknown, /healthz 200, /readyz 503; jobs all or nothing;
    after SIGCONT every page and /readyz come back and the same event stream hears changes again."""
    assert secantus.proc is not None
    with fresh_jobs(secantus) as (jobs, _commands, url), served(tmp_path, url, None) as dash:
        prepared = prepare(dash, jobs, 2)
        stream = EventStream(dash.port)
        try:
            assert stream.hears_change(jobs)
            os.kill(secantus.proc.pid, signal.SIGSTOP)
            try:
                first = burst(dash, prepared, 0)
                time.sleep(max(0.0, 12.0 - max(a.seconds for a in first)))  # past the stall and socket timeouts
                later = burst(dash, prepared, 1)
                started = time.monotonic()
                opened = EventStream(dash.port)  # a new event stream, frozen: its hello comes at once
                while b"event: hello" not in opened.seen and time.monotonic() - started < 3 * dash.timeout_s:
                    time.sleep(0.05)
                hello_s = time.monotonic() - started
                opened.close()
            finally:
                os.kill(secantus.proc.pid, signal.SIGCONT)
            print(f"frozen: a new /events stream said hello after {hello_s:.2f} s")
            assert b"event: hello" in opened.seen
            show("frozen, at once:", first)
            show("frozen, 12 s in:", later)
            assert_within_bound(dash, [*first, *later])
            assert_down(first, cached=True)
            assert_down(later)
            print(f"back after {wait_back(dash):.1f} s")
            assert_whole(jobs, prepared)
            assert not stream.closed and stream.hears_change(jobs)  # the live feed survived and recovered
        finally:
            stream.close()


def test_database_frozen_shorter_than_every_timeout(tmp_path: Path, secantus: Secantus) -> None:
    """SIGSTOP for a second (shorter than the 5 s bound): every request waits for the database and answers as
    usual, within the bound: pages 200, actions done (303), /readyz 200; the event stream stays live."""
    assert secantus.proc is not None
    with fresh_jobs(secantus) as (jobs, _commands, url), served(tmp_path, url, None) as dash:
        prepared = prepare(dash, jobs, 1)
        stream = EventStream(dash.port)
        try:
            time.sleep(3.5)  # past the counts cache: the overview asks the database during the freeze
            os.kill(secantus.proc.pid, signal.SIGSTOP)
            timer = threading.Timer(1.0, os.kill, (secantus.proc.pid, signal.SIGCONT))
            timer.start()
            try:
                answers = burst(dash, prepared, 0)
            finally:
                timer.join()
                os.kill(secantus.proc.pid, signal.SIGCONT)
            show("frozen 1 s:", answers)
            assert_within_bound(dash, answers)
            assert {a.kind: a.status for a in answers} == {
                "healthz": 200, "readyz": 200, "overview": 200, "api": 200, "list": 200, "job": 200,
                "retry": 303, "cancel": 303, "retry-failed": 303}, [(a.kind, a.status, a.text[-300:]) for a in answers]
            assert jobs.find_one({"_id": prepared.failed[0]["_id"]})["status"] == "PENDING"
            assert jobs.find_one({"_id": prepared.pending[0]["_id"]})["status"] == "FAILED"
            assert jobs.find_one({"_id": prepared.for_all[0]["_id"]})["status"] == "PENDING"
            assert not stream.closed and stream.hears_change(jobs)
        finally:
            stream.close()


def test_database_killed_and_restarted(tmp_path: Path, secantus: Secantus) -> None:
    """kill -9 the database: every request answers within the bound (503, /healthz 200, /readyz 503), jobs all
    or nothing; restarted on the same port and storage: every page, /readyz and the event stream come back."""
    assert secantus.proc is not None
    with fresh_jobs(secantus) as (jobs, _commands, url), served(tmp_path, url, 2.0) as dash:
        prepared = prepare(dash, jobs, 1)
        stream = EventStream(dash.port)
        try:
            time.sleep(3.5)  # past the counts cache (3 s): the overview asks the database
            secantus.kill9()
            try:
                answers = burst(dash, prepared, 0)
            finally:
                secantus.start()
            show("killed (bound 2 s):", answers)
            assert_within_bound(dash, answers)
            by = {a.kind: a for a in answers}
            assert by["healthz"].status == 200 and by["readyz"].status == 503
            assert all(by[k].status == 503 for k in ("overview", "api", "list", "job", "retry", "cancel",
                                                     "retry-failed")), [(a.kind, a.status) for a in answers]
            print(f"back after {wait_back(dash):.1f} s")
            assert_whole(jobs, prepared)
            assert not stream.closed and stream.hears_change(jobs, within=60)
        finally:
            stream.close()


def test_a_short_bound_holds_too(tmp_path: Path, secantus: Secantus) -> None:
    """--timeout 1: frozen longer than it, every request answers within 3 s (the client's own 5 s timeouts
    and the change stream's limit are longer: the bound is the request's, not the client's)."""
    assert secantus.proc is not None
    with fresh_jobs(secantus) as (jobs, _commands, url), served(tmp_path, url, 1.0) as dash:
        prepared = prepare(dash, jobs, 1)
        time.sleep(3.5)  # past the counts cache (3 s): the overview asks the database
        os.kill(secantus.proc.pid, signal.SIGSTOP)
        try:
            answers = burst(dash, prepared, 0)
        finally:
            os.kill(secantus.proc.pid, signal.SIGCONT)
        show("frozen (bound 1 s):", answers)
        assert_within_bound(dash, answers)
        assert_down(answers)
        wait_back(dash)
        assert_whole(jobs, prepared)


def test_unknown_job_id_is_still_404_after_a_freeze(tmp_path: Path, secantus: Secantus) -> None:
    """After SIGCONT the answers are the ordinary ones again (no cached failure outlives the freeze)."""
    assert secantus.proc is not None
    with fresh_jobs(secantus) as (_jobs, _commands, url), served(tmp_path, url, 1.0) as dash:
        os.kill(secantus.proc.pid, signal.SIGSTOP)
        try:
            with httpx.Client(headers=dash.auth, timeout=60) as client:
                frozen = client.get(f"{dash.base}/jobs/{ObjectId()}")
        finally:
            os.kill(secantus.proc.pid, signal.SIGCONT)
        assert frozen.status_code == 503
        wait_back(dash)
        with httpx.Client(headers=dash.auth, timeout=60) as client:
            assert client.get(f"{dash.base}/jobs/{ObjectId()}").status_code == 404


def test_mounted_app_first_request_with_the_database_frozen(secantus: Secantus) -> None:
    """A mounted app (its lifespan never runs) checks its indexes from its first request: with the database
    frozen that check must not hold the request (nor the event loop) past the bound. The collection's client
    here has no socket timeout at all: only the dashboard's own deadline bounds the wait."""
    import io

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from muzo_ops.dashboard import create_app
    from muzo_ops.logs import Logger

    assert secantus.proc is not None
    with fresh_jobs(secantus) as (jobs, _commands, url):
        failed = prisma_job("MOCKUP", status="FAILED")
        jobs.insert_one(failed)
        inner = create_app(env_values(url), jobs=jobs, change_streams=False, poll_s=60.0, timeout_s=1.0,
                           logger=Logger("muzo-dashboard", stream=io.StringIO()))
        client = TestClient(Starlette(routes=[Mount("/ops", app=inner)]), base_url="http://127.0.0.1",
                            headers={"Authorization": basic()})  # no `with`: no lifespan, as when mounted
        os.kill(secantus.proc.pid, signal.SIGSTOP)
        thaw = threading.Timer(30.0, os.kill, (secantus.proc.pid, signal.SIGCONT))  # never hang the session
        thaw.start()
        try:
            started = time.monotonic()
            page = client.get(f"/ops/jobs/{failed['_id']}")
            took = time.monotonic() - started
            health = client.get("/ops/healthz")
        finally:
            thaw.cancel()
            os.kill(secantus.proc.pid, signal.SIGCONT)
        print(f"mounted, first request, frozen (bound 1 s): {page.status_code} in {took:.2f} s")
        assert page.status_code == 503 and took < 3.0, (page.status_code, took)
        assert health.text == "ok\n"
        deadline = time.monotonic() + 30
        while client.get(f"/ops/jobs/{failed['_id']}").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # the check MongoDB did not answer is tried again from a later request (10 s on) once it is back
        while "type_1_status_1__id_1" not in jobs.index_information():
            assert time.monotonic() < deadline + 30, "the indexes were never checked again"
            client.get(f"/ops/jobs/{failed['_id']}")
            time.sleep(1.0)
