"""Attacks on the dashboard's promises (docs/DASHBOARD.md): secrets, fences, auth, hostile documents, bad input."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from bson import Binary, ObjectId
from pymongo.collection import Collection
from starlette.testclient import TestClient
from starlette.types import Message

from muzo_ops.dashboard import check_bind, create_app
from muzo_ops.errors import UsageError
from muzo_ops.logs import Logger
from muzo_ops.redact.redactor import Redactor
from tests.dashboard_helpers import DASHBOARD_PASSWORD, NEXTAUTH_SECRET, SECRETS, basic, env_values, fresh_jobs
from tests.helpers import assert_no_secret
from tests.servers import Secantus
from tests.workers import now, prisma_job

Doc = dict[str, Any]

# an env-file secret with characters that URL-encoding changes
ODD_SECRET = "p@ss:w/rd+Zq9!x7"
ALL_SECRETS = [*SECRETS, ODD_SECRET, urllib.parse.quote(ODD_SECRET, safe=""), urllib.parse.quote_plus(ODD_SECRET)]
HEADERS = ("content-security-policy", "x-frame-options", "referrer-policy")


class Adv:
    def __init__(self, client: TestClient, jobs: Collection[Doc], log: io.StringIO) -> None:
        self.client, self.jobs, self.log = client, jobs, log


def build(jobs: Collection[Doc], url: str, log: io.StringIO, *, password: str | None = DASHBOARD_PASSWORD,
          **options: Any) -> TestClient:
    values = {**env_values(url, password), "EMAIL_SERVER_PASSWORD": ODD_SECRET}
    redactor = Redactor()
    logger = Logger("muzo-dashboard", "info", stream=log, redactor=redactor)
    options = {"change_streams": False, "poll_s": 60.0, "allow_actions": True, **options}
    app = create_app(values, jobs=jobs, redactor=redactor, logger=logger, **options)
    headers = {"Authorization": basic()} if password else {}
    client = TestClient(app, headers=headers, base_url="http://127.0.0.1:8090", raise_server_exceptions=False)

    def checked(response: Any) -> None:
        response.read()
        text = response.text + str(response.headers)
        for secret in ALL_SECRETS:
            assert secret not in text, (response.request.url, secret, text[max(0, text.find(secret) - 200):][:400])
        for name in HEADERS:
            assert name in response.headers, (response.status_code, response.request.url, name)

    client.event_hooks["response"].append(checked)
    return client


@pytest.fixture
def adv(secantus: Secantus) -> Iterator[Adv]:
    with fresh_jobs(secantus) as (jobs, _commands, url):
        log = io.StringIO()
        with build(jobs, url, log) as client:
            yield Adv(client, jobs, log)
        assert_no_secret(log.getvalue(), ALL_SECRETS)


def one_line(text: str) -> bool:
    return "Traceback" not in text and len(text) < 5000


# ---------------------------------------------------------------- invariant 6: bad input


@pytest.mark.parametrize("path", [
    "/jobs?after=" + "a" * 24 + "%0A",          # a trailing newline passes a `$`-anchored regex
    "/jobs?q=" + "a" * 24 + "%0A",
    "/jobs?after=%00" + "a" * 23,
    "/jobs?after=" + "１" * 24,                  # non-ASCII digits
    "/jobs?q=" + "x" * 30_000,
    "/jobs?status=" + "P" * 30_000,
    "/jobs?type=%00",
    "/jobs?status=PENDING&status=DONE",
    "/jobs?after[$gt]=1",
    "/jobs/" + "a" * 24 + "%0A",
    "/jobs/%00",
    "/jobs/" + "f" * 10_000,
], ids=lambda p: p[:40])
def test_bad_input_is_400_or_404(adv: Adv, path: str) -> None:
    r = adv.client.get(path)
    assert r.status_code in (200, 400, 404), (path, r.status_code, r.text[:300])  # lenient is fine, 500 is not
    assert one_line(r.text) or r.status_code == 200


def test_bad_basic_credentials_are_401_not_500(adv: Adv) -> None:
    for raw in (b"\xff\xfe:" + DASHBOARD_PASSWORD.encode(), b"ops", b"ops:" + b"\xff" * 3, b"", b":"):
        header = "Basic " + base64.b64encode(raw).decode()
        r = adv.client.get("/", headers={"Authorization": header})
        assert r.status_code == 401, (raw, r.status_code)
    for header in ("Basic", "Basic ====", "Basic a", "basic " + base64.b64encode(b"ops:x").decode(),
                   "Basic " + "A" * 100_000):
        r = adv.client.get("/", headers={"Authorization": header})
        assert r.status_code == 401, (header[:20], r.status_code)


# ---------------------------------------------------------------- invariant 3: headers and auth


def test_security_headers_on_every_kind_of_answer(adv: Adv) -> None:
    anonymous = {"Authorization": ""}
    answers = [adv.client.get("/nope"), adv.client.get("/nope", headers=anonymous),
               adv.client.get("/static/nope.js"), adv.client.get("/static/../app.py"),
               adv.client.put("/jobs"), adv.client.delete(f"/jobs/{ObjectId()}"),
               adv.client.options("/"), adv.client.head("/"), adv.client.head("/healthz"),
               adv.client.post(f"/jobs/{ObjectId()}/retry", content=b"\xff" * 10,
                               headers={"Content-Type": "multipart/form-data; boundary=x"}),
               adv.client.post(f"/jobs/{ObjectId()}/retry", content=b"csrf=%ZZ&&==",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})]
    for r in answers:
        assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:300])
    # the event hook checked the headers of each


def test_no_page_without_credentials(adv: Adv) -> None:
    anonymous = {"Authorization": ""}
    for path in ("/static/dashboard.css", "/healthz/../", "//", "/jobs/", "/api/overview/",
                 "/events?since=0", "/%2e%2e/", "/HEALTHZ"):
        r = adv.client.get(path, headers=anonymous)
        assert r.status_code in (401, 404, 307), (path, r.status_code)
        assert r.text.strip() != "ok" or path == "/healthz", path


def test_bind_refusal_is_not_fooled(secantus: Secantus) -> None:
    for host in ("0", "0.0.0.0 ", "::", "[::]", "::ffff:0.0.0.0", "0x0", "", "*", "192.168.1.1",
                 "127.0.0.1.nip.io", "0000:0000::"):
        with pytest.raises(UsageError):
            check_bind(host, {"DATABASE_URL": "mongodb://x/y"})


def test_host_header_check_without_password(secantus: Secantus) -> None:
    with fresh_jobs(secantus) as (jobs, _commands, url), build(jobs, url, io.StringIO(), password=None) as client:
        for host in ("127.0.0.1.attacker.example", "localhost.attacker.example", "attacker.example",
                     "127.0.0.1@attacker.example", "evil.example:127.0.0.1", "127.0.0.1 .evil", ""):
            r = client.get("/", headers={"Host": host})
            assert r.status_code in (400, 421), (host, r.status_code)


# ---------------------------------------------------------------- invariant 1: secrets everywhere


def test_secret_in_keys_urlencoded_and_in_every_field(adv: Adv) -> None:
    quoted = urllib.parse.quote(ODD_SECRET, safe="")
    payload = {ODD_SECRET: "key is the secret", "url": f"https://x.example/cb?pw={quoted}",
               "form": f"a=1&pw={urllib.parse.quote_plus(ODD_SECRET)}", "raw": f"x{ODD_SECRET}y",
               "Authorization": "Bearer abc.def.ghi", "AUTHORIZATION2": {"x": 1}, "X-Api-Key": "plain-key-1",
               "client_secret": ["a", {"b": "c"}], "headers": [{"PASSWORD": "pw-in-array-1"}],
               "Credentials": {"user": "u", "pass": "pw-in-object-1"}, "nested": {"deeper": {"Token": 42}},
               "sessionCookie": "cookie-val-1", "privateKey": "pk-val-1", "db": {"passwd": "passwd-val-1"}}
    jobs = [
        prisma_job("MOCKUP", payload, status="FAILED", attempts=1,
                   lastError={"name": f"E{NEXTAUTH_SECRET}", "message": quoted,
                              "stack": f"at f ({ODD_SECRET})\n  at g"}),
        prisma_job(NEXTAUTH_SECRET, {}, status="DONE", updatedAt=now()),   # secret as the type
        prisma_job("MOCKUP", {}, status=NEXTAUTH_SECRET),                  # secret as the status
        prisma_job("MOCKUP", {}, status="RUNNING", lockedBy=f"host/{quoted}", lockedUntil=now()),
        {**prisma_job("MOCKUP", {}), "_id": f"id-{NEXTAUTH_SECRET}"},      # secret in an id
        {**prisma_job("MOCKUP", {}), "_id": {"secret": "id-obj-secret-1"}},
    ]
    adv.jobs.insert_many(jobs)
    extra = ["pw-in-array-1", "pw-in-object-1", "plain-key-1", "cookie-val-1", "pk-val-1", "passwd-val-1",
             "abc.def.ghi", "id-obj-secret-1"]
    texts = []
    paths = ("/", "/api/overview", "/jobs", "/jobs?status=FAILED", "/jobs?status=RUNNING",
             f"/jobs/{jobs[0]['_id']}", f"/jobs/{jobs[3]['_id']}", "/jobs?status=DONE")
    for path in paths:
        r = adv.client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        texts.append(r.text)
    for path, text in zip(paths, texts, strict=True):
        for secret in [*ALL_SECRETS, *extra]:
            assert secret not in text, (path, secret, text[max(0, text.find(secret) - 200):][:300])
    detail = texts[5]
    assert "key is the secret" in detail, detail[detail.find("payload"):][:1500]  # the rest is still shown


def fragments(secret: str, size: int = 12) -> list[str]:
    """Every run of ``size`` characters of ``secret``: a cut or escaped echo must not show any."""
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def assert_no_fragment(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        for piece in fragments(secret):
            assert piece not in text, (secret, piece, text[max(0, text.find(piece) - 100):][:300])


def test_error_pages_do_not_echo_secrets(adv: Adv) -> None:
    """Input echoed in an error line is cut (40 characters) or repr-escaped: neither may show a secret's part."""
    quoted = urllib.parse.quote(NEXTAUTH_SECRET)
    for path in (f"/jobs?q={quoted}", f"/jobs?status={quoted}", f"/jobs?type={quoted}",
                 f"/jobs?after={quoted}", f"/jobs/{quoted}", f"/jobs?q={urllib.parse.quote(ODD_SECRET, safe='')}"):
        r = adv.client.get(path)
        assert r.status_code in (400, 404), path
        assert_no_fragment(r.text, [NEXTAUTH_SECRET, ODD_SECRET])
    r = adv.client.post(f"/queues/{quoted}/retry-failed", data={"csrf": "x"})
    assert r.status_code in (400, 403)
    assert_no_fragment(r.text, [NEXTAUTH_SECRET])
    # a hostile status echoed in a 409 ("job … is <status>: retry applies to FAILED jobs only")
    job, other = prisma_job("MOCKUP", status=NEXTAUTH_SECRET), prisma_job("MOCKUP", status="FAILED")
    adv.jobs.insert_many([job, other])
    from tests.dashboard_helpers import form_fields
    csrf = form_fields(adv.client.get(f"/jobs/{other['_id']}").text, f"/jobs/{other['_id']}/retry")["csrf"]
    for action in ("retry", "cancel", "delete"):
        r = adv.client.post(f"/jobs/{job['_id']}/{action}", data={"csrf": csrf, "version": "x:1"})
        assert r.status_code == 409, (action, r.status_code)
        assert_no_fragment(r.text, [NEXTAUTH_SECRET])
    assert_no_fragment(adv.log.getvalue(), [NEXTAUTH_SECRET, ODD_SECRET])


def test_cli_errors_do_not_echo_secrets(tmp_path: Any, secantus: Secantus) -> None:
    from tests.helpers import run_cli
    from tests.test_dashboard_cli import write_env

    with fresh_jobs(secantus) as (jobs, _commands, url):
        job = prisma_job("MOCKUP", status=NEXTAUTH_SECRET)
        jobs.insert_one(job)
        env = write_env(tmp_path / ".env", {**env_values(url), "EMAIL_SERVER_PASSWORD": ODD_SECRET})
        runs = [run_cli("jobs", "show", NEXTAUTH_SECRET, "--env-file", str(env)),
                run_cli("jobs", "list", "--status", NEXTAUTH_SECRET, "--env-file", str(env)),
                run_cli("jobs", "list", "--type", ODD_SECRET, "--env-file", str(env)),
                run_cli("jobs", "cancel", str(job["_id"]), "--env-file", str(env))]
        assert [r.returncode for r in runs] == [2, 2, 2, 1], [(r.returncode, r.stderr) for r in runs]
        for r in runs:
            assert_no_fragment(r.stdout + r.stderr, [NEXTAUTH_SECRET, ODD_SECRET])


def test_finished_last_hour_with_hostile_types(adv: Adv) -> None:
    t = now()
    adv.jobs.insert_many([
        {**prisma_job("MOCKUP", status="DONE", updatedAt=t), "type": {"$x": "<script>alert(1)</script>"}},
        {**prisma_job("MOCKUP", status="FAILED", updatedAt=t), "type": ["a", "b"]},
        {**prisma_job("MOCKUP", status="DONE", updatedAt=t), "type": ObjectId()},
        {**prisma_job("MOCKUP", status="DONE", updatedAt=t), "type": None},
        {**prisma_job("MOCKUP", status="DONE", updatedAt=t), "type": Binary(b"\x00\xff")},
        {**prisma_job("MOCKUP", status="DONE", updatedAt=t), "type": "<img src=x onerror=alert(1)>"},
        prisma_job("MOCKUP", status="DONE", updatedAt=t),
        {**prisma_job("MOCKUP", status="RUNNING", lockedUntil=t), "lockedBy": {"w": [1, 2]}},
        {**prisma_job("MOCKUP", status="RUNNING", lockedUntil=t), "lockedBy": 12},
        {**prisma_job("MOCKUP", status="RUNNING", lockedUntil=t), "lockedBy": "<b>w</b>", "lockedAt": "soon"},
    ])
    for path in ("/api/overview", "/", "/jobs", "/jobs?status=DONE"):
        r = adv.client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        if path != "/api/overview":  # JSON (nosniff) is not markup
            assert "<script>alert" not in r.text and "<img src=x" not in r.text and "<b>w</b>" not in r.text


def test_dates_out_of_python_range_do_not_break_pages(adv: Adv) -> None:
    # SecantusDB refuses dates outside Python's range: the extremes it keeps
    far = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    before = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    t = now()
    hostile = [
        {**prisma_job("MOCKUP"), "availableAt": before, "createdAt": far},          # oldest due: out of range
        {**prisma_job("MOCKUP", status="RUNNING"), "lockedAt": far, "lockedUntil": before, "lockedBy": "w-far",
         "updatedAt": far},
        {**prisma_job("MOCKUP", status="DONE"), "updatedAt": t.replace(microsecond=999_999)},
        {**prisma_job("MOCKUP", status="FAILED"), "updatedAt": far},
    ]
    ok = prisma_job("GENERATION", status="FAILED")
    adv.jobs.insert_many([*hostile, ok])
    for path in ("/", "/api/overview", "/jobs", "/jobs?status=FAILED", "/jobs?status=RUNNING",
                 *(f"/jobs/{d['_id']}" for d in hostile)):
        r = adv.client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert str(ok["_id"]) in adv.client.get("/jobs").text


def test_hostile_ids_do_not_stop_paging(adv: Adv) -> None:
    """50 documents whose _id sorts above every ObjectId (dates): the "Older" link still reaches the real jobs."""
    real = [prisma_job("MOCKUP") for _ in range(5)]
    hostile = [{**prisma_job("MOCKUP"), "_id": dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)}
               for i in range(50)]
    adv.jobs.insert_many([*real, *hostile])
    seen: set[str] = set()
    path, pages = "/jobs", 0
    while path and pages < 5:
        r = adv.client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        seen.update(re.findall(r'href="[^"]*/jobs/([0-9a-f]{24})"', r.text))
        more = re.search(r'id="next" href="([^"]+)"', r.text)
        path, pages = (more.group(1).replace("&amp;", "&") if more else ""), pages + 1
    assert {str(d["_id"]) for d in real} <= seen


def test_huge_and_deep_documents(adv: Adv) -> None:
    deep: Any = {"leaf": "<script>x</script>", "password": "deep-pw-1"}
    for _ in range(95):
        deep = {"d": [deep]}
    big = prisma_job("MOCKUP", {"blob": "A" * (10 * 1024 * 1024 - 4096)}, status="FAILED")
    nested = prisma_job("MOCKUP", {"deep": deep}, status="FAILED")
    nan = {**prisma_job("MOCKUP", status="FAILED"), "attempts": float("nan"), "maxAttempts": float("inf")}
    adv.jobs.insert_many([nested, nan])
    adv.jobs.insert_one(big)
    for doc in (big, nested, nan):
        r = adv.client.get(f"/jobs/{doc['_id']}")
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert "deep-pw-1" not in r.text and "<script>x" not in r.text
    assert adv.client.get("/jobs").status_code == 200
    assert adv.client.get("/").status_code == 200


def test_action_refusals_do_not_echo_secrets(adv: Adv) -> None:
    job = prisma_job("MOCKUP", status=f"S-{NEXTAUTH_SECRET}")
    adv.jobs.insert_one(job)
    page = adv.client.get(f"/jobs/{job['_id']}")
    assert page.status_code == 200
    from tests.dashboard_helpers import form_fields
    csrf = form_fields(adv.client.get("/").text, "/retry-failed")["csrf"] if "retry-failed" in \
        adv.client.get("/").text else ""
    for action in ("retry", "cancel", "delete"):
        r = adv.client.post(f"/jobs/{job['_id']}/{action}", data={"csrf": csrf, "version": "x:1"})
        assert r.status_code in (403, 409), (action, r.status_code)
    assert "S-" in json.dumps(adv.jobs.find_one({"_id": job["_id"]}), default=str)


class StatusSeen(Exception):
    """Raised by a test's ASGI ``send`` once the status is known."""


def test_events_cursor_of_unicode_digits_is_not_500(adv: Adv) -> None:
    """``since`` of digits Python's isdigit accepts but int() refuses (a superscript two)."""
    for since in ("%C2%B2", "%E2%91%A0", "%C2%B9%C2%B2"):
        # called through the ASGI interface: the answer's status is all that is read (the stream never ends)
        statuses: list[int] = []

        async def call(since: str = since, statuses: list[int] = statuses) -> None:
            scope = {"type": "http", "method": "GET", "path": "/events", "raw_path": b"/events",
                     "query_string": f"since={since}".encode(), "root_path": "", "scheme": "http",
                     "server": ("127.0.0.1", 8090), "client": ("127.0.0.1", 1), "http_version": "1.1",
                     "headers": [(b"host", b"127.0.0.1:8090"), (b"authorization", basic().encode())]}
            sent: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive() -> Message:
                if sent:
                    return sent.pop()
                await anyio.sleep(0.2)
                return {"type": "http.disconnect"}

            async def send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])
                    raise StatusSeen

            with anyio.move_on_after(5), contextlib.suppress(Exception):
                await adv.client.app(scope, receive, send)

        anyio.run(call)
        assert statuses and statuses[0] in (200, 400), (since, statuses)


def test_form_fields_sent_as_files_are_not_500(adv: Adv) -> None:
    failed = prisma_job("MOCKUP", status="FAILED")
    adv.jobs.insert_one(failed)
    from tests.dashboard_helpers import form_fields
    form = form_fields(adv.client.get(f"/jobs/{failed['_id']}").text, f"/jobs/{failed['_id']}/retry")
    over = form_fields(adv.client.get("/").text, "/queues/MOCKUP/retry-failed")
    attempts = [
        (f"/jobs/{failed['_id']}/retry", {"version": form["version"]}, {"csrf": ("c.txt", form["csrf"].encode())}),
        (f"/jobs/{failed['_id']}/retry", {"csrf": form["csrf"]}, {"version": ("v.txt", form["version"].encode())}),
        ("/queues/MOCKUP/retry-failed", {"csrf": over["csrf"]}, {"seen": ("s.txt", over["seen"].encode())}),
        ("/queues/MOCKUP/retry-failed", {"seen": over["seen"]}, {"csrf": ("c.txt", over["csrf"].encode())}),
    ]
    for path, data, files in attempts:
        r = adv.client.post(path, data=data, files=files, follow_redirects=False)
        assert r.status_code in (400, 403, 409), (path, list(files), r.status_code, r.text[:200])
    assert adv.jobs.find_one({"_id": failed["_id"]})["status"] == "FAILED"


def test_reflected_parameters_and_links_are_inert(adv: Adv) -> None:
    hostile = '"><img src=x onerror=alert(1)><a href="javascript:alert(1)">'
    job = prisma_job("GENERATION", {"inputImageUrl": "javascript:alert(1)", "prompt": hostile},
                     status="FAILED", lastError={"name": hostile, "message": hostile, "stack": f"</pre>{hostile}"})
    adv.jobs.insert_one(job)
    quoted = urllib.parse.quote(hostile)
    for path in (f"/?retried={quoted}", f"/jobs/{job['_id']}?done={quoted}", f"/jobs/{job['_id']}",
                 "/jobs", f"/jobs?status=FAILED&type=GENERATION&x={quoted}"):
        r = adv.client.get(path)
        assert r.status_code in (200, 400), (path, r.status_code)
        assert "<img src=x" not in r.text and 'href="javascript:' not in r.text.lower(), path


def test_csrf_only_from_the_form_body(adv: Adv) -> None:
    failed = prisma_job("MOCKUP", status="FAILED")
    adv.jobs.insert_one(failed)
    from tests.dashboard_helpers import form_fields
    form = form_fields(adv.client.get(f"/jobs/{failed['_id']}").text, f"/jobs/{failed['_id']}/retry")
    query = urllib.parse.urlencode(form)
    attempts = [adv.client.post(f"/jobs/{failed['_id']}/retry?{query}"),
                adv.client.post(f"/jobs/{failed['_id']}/retry", content=json.dumps(form),
                                headers={"Content-Type": "application/json"}),
                adv.client.post(f"/jobs/{failed['_id']}/retry", headers={"X-CSRF-Token": form["csrf"]},
                                data={"version": form["version"]})]
    assert [r.status_code for r in attempts] == [403, 403, 403]
    assert adv.jobs.find_one({"_id": failed["_id"]})["status"] == "FAILED"


def test_retry_all_races_itself_and_a_single_retry(adv: Adv) -> None:
    """Two operators press "Retry all failed" while a third retries one of the jobs: every job is retried once
    (one errorHistory entry), the counts add up, nothing else moves."""
    import threading

    from tests.dashboard_helpers import form_fields

    t = now() - dt.timedelta(minutes=1)
    failed = [prisma_job("MOCKUP", status="FAILED", attempts=3, updatedAt=t,
                         lastError={"name": "E", "message": f"m{i}"}) for i in range(30)]
    adv.jobs.insert_many(failed)
    bulk = form_fields(adv.client.get("/").text, "/queues/MOCKUP/retry-failed")
    single = form_fields(adv.client.get(f"/jobs/{failed[7]['_id']}").text, f"/jobs/{failed[7]['_id']}/retry")
    start = threading.Barrier(3)
    answers: list[Any] = []

    def press(path: str, form: dict[str, str]) -> None:
        start.wait()
        answers.append((path, adv.client.post(path, data=form, follow_redirects=False)))

    threads = [threading.Thread(target=press, args=("/queues/MOCKUP/retry-failed", bulk)) for _ in range(2)]
    threads.append(threading.Thread(target=press, args=(f"/jobs/{failed[7]['_id']}/retry", single)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    retried = 0
    single_won = False
    for path, r in answers:
        if path.startswith("/queues"):
            assert r.status_code == 303, r.text[:200]
            retried += int(r.headers["location"].rsplit("=", 1)[1])
        else:
            assert r.status_code in (303, 409), r.text[:200]
            single_won = r.status_code == 303
    assert retried + int(single_won) == 30, (retried, single_won)
    for doc in adv.jobs.find({}):
        assert doc["status"] == "PENDING" and doc["attempts"] == 0
        assert len(doc["errorHistory"]) == 1, doc["errorHistory"]


def test_truncated_fields_never_cut_a_secret(adv: Adv, tmp_path: Any) -> None:
    """A secret placed where a list or the overview cuts a long field: masked before the cut, no part shows."""
    from tests.helpers import run_cli
    from tests.test_dashboard_cli import write_env

    docs = []
    for offset in (10, 30, 50, 55, 58, 70, 100, 190, 250):
        pad = "x" * offset
        docs.append(prisma_job("MOCKUP", status="RUNNING", lockedBy=pad + NEXTAUTH_SECRET, lockedUntil=now(),
                               lastError={"name": pad + NEXTAUTH_SECRET, "message": pad + ODD_SECRET}))
        docs.append(prisma_job("MOCKUP", status="FAILED", updatedAt=now(),
                               lastError={"name": "E", "message": pad + NEXTAUTH_SECRET + " and " + ODD_SECRET}))
    adv.jobs.insert_many(docs)
    for path in ("/", "/api/overview", "/jobs", "/jobs?status=RUNNING", "/jobs?status=FAILED"):
        r = adv.client.get(path)
        assert r.status_code == 200
        assert_no_fragment(r.text, [NEXTAUTH_SECRET, ODD_SECRET])
    url = adv.jobs.database.client.address  # the same server, through the command line
    env = write_env(tmp_path / ".env", {**env_values(f"mongodb://{url[0]}:{url[1]}/{adv.jobs.database.name}"
                                                     "?directConnection=true"), "EMAIL_SERVER_PASSWORD": ODD_SECRET})
    for args in (("list",), ("list", "--format", "json"), ("list", "--status", "RUNNING")):
        proc = run_cli("jobs", *args, "--env-file", str(env))
        assert proc.returncode == 0, proc.stderr
        assert_no_fragment(proc.stdout + proc.stderr, [NEXTAUTH_SECRET, ODD_SECRET])


def test_cli_show_and_actions_mask_like_the_page(tmp_path: Any, secantus: Secantus) -> None:
    """``jobs show`` and the actions' own output: env secrets (URL-encoded too) and secret-named keys masked."""
    from tests.helpers import run_cli
    from tests.test_dashboard_cli import write_env

    quoted = urllib.parse.quote(ODD_SECRET, safe="")
    with fresh_jobs(secantus) as (jobs, _commands, url):
        odd = {"note": f"a {NEXTAUTH_SECRET} b {quoted}", "apiKey": "cli-api-key-1", "lockedBy": quoted}
        pending = prisma_job("MOCKUP", odd, lastError={"name": quoted, "message": NEXTAUTH_SECRET})
        failed = prisma_job("MOCKUP", odd, status="FAILED", lockedBy=f"w/{quoted}",
                            lastError={"name": "E", "message": f"x {quoted}"})
        done = prisma_job("MOCKUP", odd, status="DONE", result={"token": "cli-token-1", "u": quoted})
        jobs.insert_many([pending, failed, done])
        env = write_env(tmp_path / ".env", {**env_values(url), "EMAIL_SERVER_PASSWORD": ODD_SECRET})
        runs = [run_cli("jobs", *args, "--env-file", str(env)) for args in (
            ("show", str(failed["_id"])), ("show", str(done["_id"]), "--format", "json"),
            ("list", "--format", "json"), ("cancel", str(pending["_id"])), ("retry", str(failed["_id"])),
            ("delete", str(done["_id"])))]
        assert [r.returncode for r in runs] == [0, 0, 0, 0, 0, 0], [(r.returncode, r.stderr) for r in runs]
        for r in runs:
            assert_no_fragment(r.stdout + r.stderr, [NEXTAUTH_SECRET, ODD_SECRET, quoted, "cli-api-key-1",
                                                      "cli-token-1"])


def test_retry_all_with_a_time_at_the_edge_of_the_calendar(adv: Adv) -> None:
    """A forged form's ``seen`` whose UTC value falls outside the calendar: 400 in one line, nothing written."""
    failed = prisma_job("MOCKUP", status="FAILED")
    adv.jobs.insert_one(failed)
    from tests.dashboard_helpers import form_fields
    form = form_fields(adv.client.get("/").text, "/queues/MOCKUP/retry-failed")
    for seen in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59.999999+00:00",
                 "2026-13-01T00:00:00Z", "nan", "2026-01-01T00:00:00+24:00"):
        r = adv.client.post("/queues/MOCKUP/retry-failed", data={**form, "seen": seen}, follow_redirects=False)
        assert r.status_code in (303, 400), (seen, r.status_code, r.text[:200])
        assert one_line(r.text)
    assert adv.jobs.find_one({"_id": failed["_id"]})["status"] in ("FAILED", "PENDING")


def test_forged_versions_are_409_not_500(adv: Adv) -> None:
    """The fence's ``version`` (``updatedAt`` ms : attempts) at the edges the form's pattern lets through."""
    failed = prisma_job("MOCKUP", status="FAILED")
    adv.jobs.insert_one(failed)
    from tests.dashboard_helpers import form_fields
    csrf = form_fields(adv.client.get(f"/jobs/{failed['_id']}").text, f"/jobs/{failed['_id']}/retry")["csrf"]
    for version in ("999999999999999:1", "1:9999999999999999999", "1:-9999999999999999999", "0:0",
                    "253402300800000:0", "-:9223372036854775808"):
        for action in ("retry", "delete"):
            r = adv.client.post(f"/jobs/{failed['_id']}/{action}", data={"csrf": csrf, "version": version},
                                follow_redirects=False)
            assert r.status_code == 409, (version, action, r.status_code, r.text[:200])
    assert adv.jobs.find_one({"_id": failed["_id"]})["status"] == "FAILED"


def test_a_job_updated_before_1970_can_still_be_acted_on(adv: Adv) -> None:
    """Its version's stamp is negative: the form the page drew must pass the fence's own pattern."""
    old = prisma_job("MOCKUP", status="FAILED", updatedAt=dt.datetime(1960, 5, 1, tzinfo=dt.UTC))
    adv.jobs.insert_one(old)
    from tests.dashboard_helpers import form_fields
    form = form_fields(adv.client.get(f"/jobs/{old['_id']}").text, f"/jobs/{old['_id']}/retry")
    r = adv.client.post(f"/jobs/{old['_id']}/retry", data=form, follow_redirects=False)
    assert r.status_code == 303, (form, r.status_code, r.text[:200])
    assert adv.jobs.find_one({"_id": old["_id"]})["status"] == "PENDING"
