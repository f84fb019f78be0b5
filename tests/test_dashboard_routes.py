"""Every dashboard route under Starlette's TestClient against a real SecantusDB."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.dbref import DBRef
from pymongo import monitoring
from pymongo.collection import Collection
from starlette.testclient import TestClient

from muzo_ops.dashboard import check_bind, create_app
from muzo_ops.dashboard.guard import CSP
from muzo_ops.errors import UsageError
from muzo_ops.logs import Logger
from muzo_ops.queue.operators import format_count
from muzo_ops.redact.redactor import Redactor
from tests.dashboard_helpers import (
    DASHBOARD_PASSWORD,
    NEXTAUTH_SECRET,
    SECRETS,
    Commands,
    basic,
    env_values,
    form_fields,
    fresh_jobs,
    secret_payload,
)
from tests.helpers import assert_no_secret
from tests.servers import Secantus
from tests.workers import mockup_payload, now, prisma_job

Doc = dict[str, Any]


@dataclass
class Dash:
    client: TestClient
    jobs: Collection[Doc]
    commands: Commands
    log: io.StringIO
    url: str

    def text(self) -> str:
        return self.log.getvalue()


def make(jobs: Collection[Doc], url: str, log: io.StringIO, *, password: str | None = DASHBOARD_PASSWORD,
         allow_actions: bool = True, **options: Any) -> TestClient:
    values = env_values(url, password)
    redactor = Redactor()
    logger = Logger("muzo-dashboard", "info", stream=log, redactor=redactor)
    options = {"change_streams": False, "poll_s": 60.0, **options}
    app = create_app(values, allow_actions=allow_actions, jobs=jobs, redactor=redactor, logger=logger, **options)
    headers = {"Authorization": basic()} if password else {}
    client = TestClient(app, headers=headers, base_url="http://127.0.0.1:8090")

    def no_secret(response: Any) -> None:  # every response of every test is searched for the known secrets
        response.read()
        assert_no_secret(response.text + str(response.headers), SECRETS)

    client.event_hooks["response"].append(no_secret)
    return client


@pytest.fixture
def dash(secantus: Secantus) -> Iterator[Dash]:
    with fresh_jobs(secantus) as (jobs, commands, url):
        log = io.StringIO()
        with make(jobs, url, log) as client:
            commands.take()
            yield Dash(client, jobs, commands, log, url)
        assert_no_secret(log.getvalue(), SECRETS)


# ---------------------------------------------------------------- auth, headers, bind


def test_basic_auth_headers_and_healthz(dash: Dash) -> None:
    anonymous = {"Authorization": ""}
    for path in ("/", "/jobs", f"/jobs/{ObjectId()}", "/api/overview", "/events", "/static/htmx.min.js"):
        r = dash.client.get(path, headers=anonymous)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Basic ")
    for header in (basic("ops", "wrong-password-000"), basic("root", DASHBOARD_PASSWORD), "Basic !!!",
                   "Bearer x", basic("ops", DASHBOARD_PASSWORD + "x"), basic("ops", DASHBOARD_PASSWORD[:-1])):
        assert dash.client.get("/", headers={"Authorization": header}).status_code == 401
    r = dash.client.post(f"/jobs/{ObjectId()}/retry", headers=anonymous, data={"csrf": "x"})
    assert r.status_code == 401
    health = dash.client.get("/healthz", headers=anonymous)
    assert health.status_code == 200 and health.text == "ok\n"
    for r in (health, dash.client.get("/"), dash.client.get("/", headers=anonymous)):
        assert r.headers["content-security-policy"] == CSP
        assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP and "script-src 'self'" in CSP
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
    page = dash.client.get("/").text
    assert "<script>" not in page and "onclick" not in page and "style=" not in page  # nothing inline
    js = dash.client.get("/static/htmx.min.js")
    assert js.status_code == 200 and js.text.startswith("/*! htmx 2.") and "Zero-Clause BSD" in js.text


def test_without_password_local_only(secantus: Secantus) -> None:
    with pytest.raises(UsageError, match=r"binds 127\.0\.0\.1 only"):
        check_bind("0.0.0.0", {"DATABASE_URL": "mongodb://x/y"})
    with pytest.raises(UsageError):
        check_bind("::", {"DASHBOARD_PASSWORD": ""})
    check_bind("127.0.0.1", {})
    check_bind("0.0.0.0", {"DASHBOARD_PASSWORD": DASHBOARD_PASSWORD})
    with fresh_jobs(secantus) as (jobs, _commands, url), make(jobs, url, io.StringIO(), password=None) as client:
        assert client.get("/").status_code == 200  # nobody is asked on 127.0.0.1
        rebound = client.get("/", headers={"Host": "attacker.example:8090"})
        assert rebound.status_code == 421  # a DNS name pointing here does not reach it
        assert client.get("/", headers={"Host": "localhost:8090"}).status_code == 200


# ---------------------------------------------------------------- overview


def test_overview_counts_capped_and_cached(secantus: Secantus) -> None:
    assert format_count(10_000, 10_000) == "10,000+" and format_count(9_999, 10_000) == "9,999"
    with fresh_jobs(secantus) as (jobs, commands, url):
        t = now()
        jobs.insert_many(
            [prisma_job("MOCKUP", status="DONE", updatedAt=t) for _ in range(7)]
            + [prisma_job("MOCKUP", status="FAILED", updatedAt=t - dt.timedelta(hours=2)) for _ in range(2)]
            + [prisma_job("GENERATION", availableAt=t - dt.timedelta(seconds=120)),
               prisma_job("GENERATION", availableAt=t + dt.timedelta(hours=1)),
               prisma_job("MOCKUP", status="RUNNING", lockedBy="worker-a", updatedAt=t,
                          lockedUntil=t - dt.timedelta(seconds=5)),
               prisma_job("MOCKUP", status="RUNNING", lockedBy="worker-b", updatedAt=t,
                          lockedUntil=t + dt.timedelta(minutes=5)),
               # no lock date: not past its lock (a null sorts below every date; the count must not take it)
               prisma_job("GENERATION", status="RUNNING", lockedBy="worker-c", updatedAt=t, lockedUntil=None)])
        with make(jobs, url, io.StringIO(), cap=5, cache_s=60) as client:
            data = client.get("/api/overview").json()
            assert data["counts"]["MOCKUP"] == {"PENDING_DUE": 0, "PENDING_SCHEDULED": 0, "RUNNING": 2,
                                                "DONE": 5, "FAILED": 2}
            assert data["capped"]["MOCKUP"]["DONE"] is True and data["capped"]["MOCKUP"]["FAILED"] is False
            assert data["counts"]["GENERATION"]["PENDING_DUE"] == 1
            assert data["counts"]["GENERATION"]["PENDING_SCHEDULED"] == 1
            assert 100 <= data["oldestDueSeconds"] < 400
            assert data["finishedLastHour"] == {"MOCKUP": 5} and data["failedLastHour"] == {}
            assert data["runningPastLock"] == 1
            assert sorted(w["id"] for w in data["workers"]) == ["worker-a", "worker-b", "worker-c"]
            page = client.get("/").text
            assert re.search(r'data-count="DONE"><a [^>]*>5\+</a>', page)  # at the cap: "5+"
            assert "worker-a" in page and "Retry all failed" in page
            jobs.insert_one(prisma_job("MOCKUP", status="FAILED"))
            commands.take()
            assert client.get("/api/overview").json()["counts"]["MOCKUP"]["FAILED"] == 2  # cached
            assert commands.take() == []


def test_page_costs_a_fixed_number_of_commands(secantus: Secantus) -> None:
    """At 60 and at 1,260 jobs every page sends the same commands (counted by pymongo's command monitoring)."""
    seen: list[dict[str, list[str]]] = []
    bodies: list[Doc] = []

    class Bodies(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            bodies.append(dict(event.command))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    with fresh_jobs(secantus, Bodies()) as (jobs, commands, url), make(jobs, url, io.StringIO(), cache_s=0.0) as client:
        for size in (60, 1200):
            jobs.insert_many([prisma_job("MOCKUP", mockup_payload(i), status=("DONE", "FAILED", "PENDING")[i % 3],
                                         updatedAt=now()) for i in range(size)])
            some = jobs.find_one({"status": "FAILED"})
            commands.take()
            costs = {}
            for path in ("/", "/jobs", "/jobs?status=FAILED", "/jobs?status=DONE&type=MOCKUP",
                         f"/jobs?q={some['_id']}", f"/jobs/{some['_id']}", "/api/overview"):
                assert client.get(path).status_code == 200, path
                costs[path] = commands.take()
            first = client.get("/jobs").text
            after = re.search(r'href="[^"]*/jobs\?([^"]*after=[0-9a-f]{24})"', first)
            assert after
            commands.take()
            assert client.get("/jobs?" + after.group(1).replace("&amp;", "&")).status_code == 200
            costs["next page"] = commands.take()
            seen.append(costs)
    assert seen[0] == seen[1]
    # 3 types x (6 capped counts + 2 finds: dated and undated due) + 3: the last hour (2), the workers with
    # their jobs past the lock (1)
    assert len(seen[0]["/"]) == 27
    assert all(names == ["find"] for path, names in seen[0].items() if path not in ("/", "/api/overview"))
    # every read is bounded: each aggregate (counts too) stops at a $limit before it groups; each find has a limit
    for body in bodies:
        if "aggregate" in body:
            stages = [next(iter(stage)) for stage in body["pipeline"]]
            assert "$group" not in stages or "$limit" in stages[:stages.index("$group")], stages
        if "find" in body:
            assert 0 < body.get("limit", 0) <= 51, body


# ---------------------------------------------------------------- list


def test_list_filters_and_cursor_paging(dash: Dash) -> None:
    project = ObjectId()
    docs = [prisma_job("MOCKUP", mockup_payload(i)) for i in range(120)]
    docs += [prisma_job("GENERATION", status="FAILED", projectId=project) for _ in range(3)]
    docs += [prisma_job("MOCKUP", status="DONE") for _ in range(4)]
    dash.jobs.insert_many(docs)

    def ids(page: str) -> list[str]:
        return re.findall(r'<a class="id" href="[^"]*/jobs/([0-9a-f]{24})">', page)

    seen: list[str] = []
    path = "/jobs?status=PENDING&type=MOCKUP"
    while path:
        r = dash.client.get(path)
        assert r.status_code == 200
        seen += ids(r.text)
        more = re.search(r'id="next" href="([^"]+)"', r.text)
        path = more.group(1).replace("&amp;", "&") if more else ""
    assert seen == sorted((str(d["_id"]) for d in docs[:120]), reverse=True)  # newest first, each once
    assert len(ids(dash.client.get("/jobs").text)) == 50
    assert sorted(ids(dash.client.get("/jobs?status=failed").text)) == sorted(str(d["_id"]) for d in docs[120:123])
    assert len(ids(dash.client.get("/jobs?type=GENERATION").text)) == 3
    assert ids(dash.client.get(f"/jobs?q={docs[5]['_id']}").text) == [str(docs[5]["_id"])]
    assert len(ids(dash.client.get(f"/jobs?q={project}").text)) == 3
    assert ids(dash.client.get(f"/jobs?q={project}&status=DONE").text) == []
    for bad in ("/jobs?status=WAITING", "/jobs?type=NOPE", "/jobs?after=123", "/jobs?q=not-an-id"):
        r = dash.client.get(bad)
        assert r.status_code == 400, bad
        assert "expected 24 hexadecimal" in r.text or "unknown" in r.text


# ---------------------------------------------------------------- detail and masking


def test_detail_masks_every_secret(dash: Dash) -> None:
    job = prisma_job("MOCKUP", secret_payload(), status="FAILED", attempts=3, result={"token": "r-" + "x" * 10},
                     lastError={"name": "RuntimeError", "message": f"upstream said {NEXTAUTH_SECRET}",
                                "stack": f"Traceback\n  key={DASHBOARD_PASSWORD}"})
    dash.jobs.insert_one(job)
    for path in (f"/jobs/{job['_id']}", "/jobs", "/jobs?status=FAILED", "/", "/api/overview"):
        r = dash.client.get(path)
        assert r.status_code == 200
        assert_no_secret(r.text, SECRETS)
    page = dash.client.get(f"/jobs/{job['_id']}").text
    assert '&#34;password&#34;: &#34;***&#34;' in page and '&#34;apiKey&#34;: &#34;***&#34;' in page
    assert "signed with ***" in page and "order-0" in page and "upstream said ***" in page
    for field in ("createdAt", "availableAt", "lockedAt", "updatedAt"):
        assert f"<th>{field}</th>" in page
    assert dash.client.get(f"/jobs/{ObjectId()}").status_code == 404
    assert dash.client.get("/jobs/zzz").status_code == 400


def test_detail_of_hostile_documents(dash: Dash) -> None:
    """Every BSON type in every field: the page renders, masked, and the list too."""
    odd: Doc = {"dec": Decimal128("1.5"), "bin": Binary(b"\x00\x01" * 40), "re": Regex("^a", "i"),
                "code": Code("function(){}"), "ts": Timestamp(1, 2), "min": MinKey(), "max": MaxKey(),
                "i64": Int64(2**62), "nan": float("nan"), "inf": float("-inf"), "ref": DBRef("x", 1),
                "old": dt.datetime(1, 1, 1), "deep": {"a": [[[{"secret": "s3cr3t-deep-value"}]]]},
                "ctl": "\x1b[2J\u202e<script>alert(1)</script>", "uuid": Binary(b"1" * 16, 4)}
    docs = [{"_id": ObjectId(), **odd},  # no type, status or dates at all
            {**prisma_job("MOCKUP", odd), "attempts": "three", "updatedAt": "yesterday", "status": "WEIRD"},
            {**prisma_job("FULFILLMENT", {}), "payload": ["not", "an", "object"], "lastError": "a string"},
            {**prisma_job("GENERATION", {}), "updatedAt": None, "lastError": {"stack": 5}, "result": odd}]
    dash.jobs.insert_many(docs)
    for doc in docs:
        r = dash.client.get(f"/jobs/{doc['_id']}")
        assert r.status_code == 200, r.text[-500:]
        assert "s3cr3t-deep-value" not in r.text and "<script>alert" not in r.text
    assert dash.client.get("/jobs").status_code == 200
    assert dash.client.get("/").status_code == 200


# ---------------------------------------------------------------- actions


def draw(dash: Dash, job_id: ObjectId, action: str) -> dict[str, str]:
    return form_fields(dash.client.get(f"/jobs/{job_id}").text, f"/jobs/{job_id}/{action}")


def test_actions_do_what_they_say(dash: Dash) -> None:
    failed = prisma_job("MOCKUP", status="FAILED", attempts=3, lastError={"name": "Boom", "message": "m"})
    pending = prisma_job("MOCKUP")
    done = prisma_job("MOCKUP", status="DONE", result={"ok": True})
    dash.jobs.insert_many([failed, pending, done])
    page = dash.client.get(f"/jobs/{failed['_id']}").text
    assert ">Retry</button>" in page and ">Delete</button>" in page and ">Cancel</button>" not in page

    r = dash.client.post(f"/jobs/{failed['_id']}/retry", data=draw(dash, failed["_id"], "retry"),
                         follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{failed['_id']}?done=retry"
    after = dash.jobs.find_one({"_id": failed["_id"]})
    assert after["status"] == "PENDING" and after["attempts"] == 0 and after["lockedBy"] is None
    assert after["availableAt"] <= now() and after["errorHistory"] == [{"name": "Boom", "message": "m"}]
    assert after["lastError"] == {"name": "Boom", "message": "m"}  # kept until the next run ends

    r = dash.client.post(f"/jobs/{pending['_id']}/cancel", data=draw(dash, pending["_id"], "cancel"),
                         follow_redirects=False)
    assert r.status_code == 303
    after = dash.jobs.find_one({"_id": pending["_id"]})
    assert after["status"] == "FAILED" and after["lastError"]["message"] == "cancelled by ops"

    r = dash.client.post(f"/jobs/{done['_id']}/delete", data=draw(dash, done["_id"], "delete"),
                         follow_redirects=False)
    assert r.status_code == 303 and dash.jobs.find_one({"_id": done["_id"]}) is None

    lines = [json.loads(line) for line in dash.text().splitlines()]
    acted = [(x["user"], x["action"], x["jobId"]) for x in lines if x["msg"] == "dashboard action"]
    assert acted == [("ops", "retry", str(failed["_id"])), ("ops", "cancel", str(pending["_id"])),
                     ("ops", "delete", str(done["_id"]))]
    assert all("payload" not in x and "order-" not in json.dumps(x) for x in lines)


def test_actions_are_fenced(dash: Dash) -> None:
    t = now()
    running = prisma_job("MOCKUP", status="RUNNING", lockedBy="w1", lockedUntil=t + dt.timedelta(minutes=5),
                         attempts=1)
    failed = prisma_job("MOCKUP", status="FAILED", attempts=3)
    pending = prisma_job("MOCKUP")
    dash.jobs.insert_many([running, failed, pending])
    stale = draw(dash, failed["_id"], "retry")
    csrf = stale["csrf"]
    before = dash.jobs.find_one({"_id": running["_id"]})
    for action in ("retry", "cancel", "delete"):  # whatever the form says, RUNNING is never touched
        r = dash.client.post(f"/jobs/{running['_id']}/{action}", data={"csrf": csrf, "version": "-:-"})
        assert r.status_code == 409 and "RUNNING" in r.text
    assert dash.jobs.find_one({"_id": running["_id"]}) == before

    dash.jobs.update_one({"_id": failed["_id"]}, {"$set": {"updatedAt": now() + dt.timedelta(seconds=1)}})
    r = dash.client.post(f"/jobs/{failed['_id']}/retry", data=stale)
    assert r.status_code == 409 and "changed meanwhile, reload" in r.text
    assert dash.jobs.find_one({"_id": failed["_id"]})["status"] == "FAILED"

    form = draw(dash, pending["_id"], "cancel")  # drawn, then a worker claims it
    dash.jobs.update_one({"_id": pending["_id"]}, {"$set": {"status": "RUNNING", "lockedBy": "w2",
                                                            "attempts": 1, "updatedAt": now()}})
    r = dash.client.post(f"/jobs/{pending['_id']}/cancel", data=form)
    assert r.status_code == 409 and dash.jobs.find_one({"_id": pending["_id"]})["status"] == "RUNNING"

    assert dash.client.post(f"/jobs/{ObjectId()}/retry", data=form).status_code == 404
    assert dash.client.post(f"/jobs/{failed['_id']}/cancel", data={"csrf": csrf, "version": "1:1"}).status_code == 409
    assert dash.client.post(f"/jobs/{failed['_id']}/explode", data=form).status_code == 404
    assert dash.client.post(f"/jobs/{failed['_id']}/retry", data={"csrf": csrf, "version": "<>"}).status_code == 409
    assert dash.client.get(f"/jobs/{failed['_id']}/retry").status_code == 405  # POST only
    assert dash.client.post("/jobs").status_code == 405


def test_csrf_and_actions_off(dash: Dash, secantus: Secantus) -> None:
    failed = prisma_job("MOCKUP", status="FAILED")
    dash.jobs.insert_one(failed)
    form = draw(dash, failed["_id"], "retry")
    for bad in ({**form, "csrf": "0" * 64}, {"version": form["version"]}, {**form, "csrf": ""}):
        r = dash.client.post(f"/jobs/{failed['_id']}/retry", data=bad)
        assert r.status_code == 403 and "CSRF" in r.text
    r = dash.client.post("/queues/MOCKUP/retry-failed", data={"seen": "2100-01-01T00:00:00Z"})
    assert r.status_code == 403
    assert dash.jobs.find_one({"_id": failed["_id"]})["status"] == "FAILED"
    with make(dash.jobs, dash.url, io.StringIO(), allow_actions=False) as readonly:
        page = readonly.get(f"/jobs/{failed['_id']}").text
        assert "<form method=\"post\"" not in page and "read-only" in page
        r = readonly.post(f"/jobs/{failed['_id']}/retry", data=form)
        assert r.status_code == 403 and "--allow-actions" in r.text
    assert dash.jobs.find_one({"_id": failed["_id"]})["status"] == "FAILED"


def test_retry_all_failed_of_one_type(dash: Dash) -> None:
    t = now()
    old = [prisma_job("MOCKUP", status="FAILED", updatedAt=t - dt.timedelta(minutes=5)) for _ in range(3)]
    other = prisma_job("GENERATION", status="FAILED", updatedAt=t - dt.timedelta(minutes=5))
    running = prisma_job("MOCKUP", status="RUNNING", lockedBy="w", updatedAt=t - dt.timedelta(minutes=5))
    dash.jobs.insert_many([*old, other, running])
    form = form_fields(dash.client.get("/").text, "/queues/MOCKUP/retry-failed")
    late = prisma_job("MOCKUP", status="FAILED", updatedAt=now() + dt.timedelta(seconds=2))  # failed after drawing
    dash.jobs.insert_one(late)
    r = dash.client.post("/queues/MOCKUP/retry-failed", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?retried=3"
    assert dash.jobs.count_documents({"_id": {"$in": [d["_id"] for d in old]}, "status": "PENDING"}) == 3
    assert dash.jobs.find_one({"_id": late["_id"]})["status"] == "FAILED"
    assert dash.jobs.find_one({"_id": other["_id"]})["status"] == "FAILED"
    assert dash.jobs.find_one({"_id": running["_id"]})["status"] == "RUNNING"
    assert dash.client.post("/queues/NOPE/retry-failed", data=form).status_code == 400
    assert dash.client.post("/queues/MOCKUP/retry-failed", data={"csrf": form["csrf"]}).status_code == 400


def test_two_operators_race_on_one_job(dash: Dash) -> None:
    """Two retries of the same drawn page at once: exactly one writes, the other is told to reload."""
    for _ in range(5):
        failed = prisma_job("MOCKUP", status="FAILED", attempts=3)
        dash.jobs.insert_one(failed)
        form = draw(dash, failed["_id"], "retry")
        codes: list[int] = []
        start = threading.Barrier(2)

        def post(action: str, fields: dict[str, str] = form, job: Doc = failed, codes: list[int] = codes,
                 start: threading.Barrier = start) -> None:
            start.wait()
            codes.append(dash.client.post(f"/jobs/{job['_id']}/{action}", data=fields,
                                          follow_redirects=False).status_code)

        threads = [threading.Thread(target=post, args=(a,)) for a in ("retry", "delete")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        doc = dash.jobs.find_one({"_id": failed["_id"]})
        if doc is None:  # the delete won: the retry found no job
            assert sorted(codes) == [303, 404]
        else:  # the retry won: the delete found a PENDING job
            assert sorted(codes) == [303, 409] and doc["status"] == "PENDING" and doc["attempts"] == 0


# ---------------------------------------------------------------- live


def test_sse_polling_fallback_forced(secantus: Secantus) -> None:
    with fresh_jobs(secantus) as (jobs, _commands, url), \
            make(jobs, url, io.StringIO(), change_streams=False, poll_s=0.3) as client:
        feed = client.app.app.state.dashboard.feed  # type: ignore[attr-defined]
        deadline = now() + dt.timedelta(seconds=10)
        first = feed.version
        while feed.version < first + 2 and now() < deadline:
            threading.Event().wait(0.1)
        assert feed.mode == "polling" and feed.version >= first + 2


def test_database_stopped_longer_than_the_timeouts(secantus: Secantus) -> None:
    """SIGSTOP the server: pages answer 503 in one line (no secret), an action writes all or nothing; SIGCONT: back."""
    import os
    import signal

    from pymongo import MongoClient

    from muzo_ops.queue.store import CODEC_OPTIONS

    assert secantus.proc is not None
    with fresh_jobs(secantus) as (setup, _commands, url):
        failed = prisma_job("MOCKUP", secret_payload(), status="FAILED", attempts=3)
        setup.insert_one(failed)
        client: MongoClient[Doc] = MongoClient(secantus.uri, serverSelectionTimeoutMS=800, socketTimeoutMS=800,
                                               connectTimeoutMS=800)
        jobs = client[setup.database.name].get_collection("Job", codec_options=CODEC_OPTIONS)
        log = io.StringIO()
        with make(jobs, url, log, cache_s=0.0) as tc:
            form = draw(Dash(tc, jobs, Commands(), log, url), failed["_id"], "retry")
            os.kill(secantus.proc.pid, signal.SIGSTOP)
            try:
                pages = [tc.get(path) for path in ("/", "/jobs", f"/jobs/{failed['_id']}", "/api/overview")]
                action = tc.post(f"/jobs/{failed['_id']}/retry", data=form)
            finally:
                os.kill(secantus.proc.pid, signal.SIGCONT)
            assert [p.status_code for p in pages] == [503, 503, 503, 503]
            assert "MongoDB" in pages[1].text and pages[3].json()["up"] is False
            assert action.status_code == 503
            for r in (*pages, action):
                assert_no_secret(r.text, SECRETS)
            doc = setup.find_one({"_id": failed["_id"]})
            assert (doc["status"], doc["attempts"]) in (("FAILED", 3), ("PENDING", 0))  # one command: all or nothing
            assert tc.get("/jobs").status_code == 200 and tc.get("/").status_code == 200
        client.close()


def test_mounted_inside_another_app(secantus: Secantus) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    with fresh_jobs(secantus) as (jobs, _commands, url):
        failed = prisma_job("MOCKUP", status="FAILED")
        jobs.insert_one(failed)
        inner = create_app(env_values(url), jobs=jobs, allow_actions=True, change_streams=False, poll_s=60.0,
                           logger=Logger("muzo-dashboard", stream=io.StringIO()))
        outer = Starlette(routes=[Route("/", lambda _r: PlainTextResponse("the web app")),
                                  Mount("/ops/jobs", app=inner)])
        with TestClient(outer, base_url="http://127.0.0.1") as client:
            assert client.get("/").text == "the web app"
            assert client.get("/ops/jobs/healthz").text == "ok\n"
            assert client.get("/ops/jobs/").status_code == 401
            auth = {"Authorization": basic()}
            page = client.get(f"/ops/jobs/jobs/{failed['_id']}", headers=auth)
            assert page.status_code == 200
            assert 'href="/ops/jobs/static/dashboard.css"' in page.text
            assert f'action="/ops/jobs/jobs/{failed["_id"]}/retry"' in page.text
            assert client.get("/ops/jobs/static/htmx.min.js", headers=auth).status_code == 200
            r = client.post(f"/ops/jobs/jobs/{failed['_id']}/retry", headers=auth, follow_redirects=False,
                            data=form_fields(page.text, f"/jobs/{failed['_id']}/retry"))
            assert r.status_code == 303 and r.headers["location"] == f"/ops/jobs/jobs/{failed['_id']}?done=retry"
        inner.app.state.dashboard.feed.stop()  # type: ignore[attr-defined]


def test_cancel_races_the_workers_claim(dash: Dash, secantus: Secantus) -> None:
    """The worker's own claim and an operator's cancel at once: exactly one wins; never a cancelled RUNNING job."""
    import asyncio

    from pymongo import AsyncMongoClient

    from muzo_ops.queue.jobs import JobType
    from muzo_ops.queue.store import JobStore

    outcomes = set()
    for _ in range(6):
        job = prisma_job("MOCKUP")
        dash.jobs.delete_many({})
        dash.jobs.insert_one(job)
        form = draw(dash, job["_id"], "cancel")
        start = threading.Barrier(2)
        results: dict[str, Any] = {}

        def claim(results: dict[str, Any] = results, start: threading.Barrier = start) -> None:
            async def run() -> Any:
                client: AsyncMongoClient[Doc] = AsyncMongoClient(secantus.uri)
                store = JobStore(client[dash.jobs.database.name])
                start.wait()
                claimed = await store.claim("race-worker", [JobType.MOCKUP], 60.0)
                await client.close()
                return claimed

            results["claim"] = asyncio.run(run())

        def cancel(results: dict[str, Any] = results, start: threading.Barrier = start,
                   form: dict[str, str] = form, job: Doc = job) -> None:
            start.wait()
            results["cancel"] = dash.client.post(f"/jobs/{job['_id']}/cancel", data=form,
                                                 follow_redirects=False).status_code

        threads = [threading.Thread(target=claim), threading.Thread(target=cancel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        doc = dash.jobs.find_one({"_id": job["_id"]})
        if results["cancel"] == 303:
            assert results["claim"] is None and doc["status"] == "FAILED" and doc["lockedBy"] is None
        else:
            assert results["cancel"] == 409 and results["claim"] is not None
            assert doc["status"] == "RUNNING" and doc["lockedBy"] == "race-worker" and doc["lastError"] is None
        outcomes.add(results["cancel"])
    assert outcomes <= {303, 409}


def test_secrets_with_markup_characters_stay_hidden(secantus: Secantus) -> None:
    """A secret holding quotes, ampersands and backslashes: neither it nor its HTML- or JSON-escaped form shows."""
    import html

    odd = 'q"&<\\odd-secret-77>'
    with fresh_jobs(secantus) as (jobs, _commands, url):
        job = prisma_job("MOCKUP", {**secret_payload(), "note": f"x{odd}y"}, status="RUNNING", lockedBy=f"w-{odd}",
                         lastError={"name": "E", "message": odd, "stack": odd})
        jobs.insert_one(job)
        log = io.StringIO()
        values = {**env_values(url), "NEXTAUTH_SECRET": odd}
        app = create_app(values, jobs=jobs, change_streams=False, poll_s=60.0,
                         logger=Logger("muzo-dashboard", stream=log, redactor=Redactor()))
        with TestClient(app, headers={"Authorization": basic()}, base_url="http://127.0.0.1") as client:
            texts = [client.get(path).text for path in ("/", "/api/overview", "/jobs", f"/jobs/{job['_id']}",
                                                         "/jobs?status=RUNNING")]
        forms = {odd, html.escape(odd), html.escape(odd, quote=False), json.dumps(odd)[1:-1],
                 html.escape(json.dumps(odd)[1:-1]), "odd-secret-77"}  # the last: any escaped form
        for text in [*texts, log.getvalue()]:
            assert_no_secret(text, sorted(forms))
        assert "w-***" in texts[0]


def test_running_past_lock_counts_every_worker_not_only_those_shown(secantus: Secantus, monkeypatch: Any) -> None:
    """The overview shows the MAX_WORKERS_SHOWN newest workers, but counts jobs past their lock among all."""
    from muzo_ops.queue import opsstore

    monkeypatch.setattr(opsstore, "MAX_WORKERS_SHOWN", 1)
    with fresh_jobs(secantus) as (jobs, _commands, url):
        t = now()
        jobs.insert_many([prisma_job("MOCKUP", status="RUNNING", lockedBy=f"worker-{i}",
                                     updatedAt=t - dt.timedelta(seconds=i), lockedUntil=t - dt.timedelta(seconds=30))
                          for i in range(3)])
        with make(jobs, url, io.StringIO()) as client:
            data = client.get("/api/overview").json()
        assert [w["id"] for w in data["workers"]] == ["worker-0"]  # the newest heartbeat
        assert data["runningPastLock"] == 3
