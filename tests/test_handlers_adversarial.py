"""Adversarial tests of exec and HTTP handlers: hostile children and servers against a real worker.

Each test attacks one promise of docs/HANDLERS.md (the process group ends with the job, no secret in any
output or Job field, the protocol's outcome, bounded memory and time, a verifiable signature).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import handlers_support
from tests.handlers_support import all_output, retry_delay, tls_server, wait_until, worker
from tests.hostile_server import SECRET, HostileServer
from tests.servers import Secantus
from tests.test_handlers_exec import FULFILLMENT_PAYLOAD, _alive
from tests.workers import generation_payload, mockup_payload, prisma_job

CHILD = Path(__file__).resolve().parent / "hostile_child.py"
SECRET_LINE = f"SMTP_PASSWORD='{SECRET}'\n"


def _exec(*args: str) -> str:
    return "MOCKUP=exec:" + " ".join(shlex.quote(a) for a in (sys.executable, str(CHILD), *args))


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _job(mode: str, max_attempts: int = 1, **payload: Any) -> dict[str, Any]:
    return prisma_job("MOCKUP", mockup_payload(mode=mode, **payload), max_attempts=max_attempts)


def _pieces(secret: str, length: int = 8) -> list[str]:
    return [secret[i:i + length] for i in range(len(secret) - length + 1)]


def test_child_that_never_reads_a_huge_job_does_not_wedge_the_worker(tmp_path: Path, secantus: Secantus,
                                                                     dbname: str, jobs: Any) -> None:
    jobs.insert_one(_job("noread", blob="z" * (6 << 20)))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("noread"),
               env_lines="JOB_TIMEOUT_MOCKUP_SECONDS=20\n")
    try:
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == 1, 30, "ended", w)
    finally:
        assert w.terminate() == 0
    doc = jobs.find_one({})
    assert doc["status"] == "DONE", doc["lastError"]
    assert doc["result"] is None


def test_protocol_edges_closed_stdio_bad_utf8_nan(tmp_path: Path, secantus: Secantus, dbname: str,
                                                  jobs: Any) -> None:
    closed, bad, nan, deep = _job("closeio"), _job("badutf8"), _job("nan"), _job("deep", depth=900)
    jobs.insert_many([closed, bad, nan, deep])
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--concurrency", "3")
    try:
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == 4, 30, "ended", w)
    finally:
        assert w.terminate() == 0
    by_id = {d["_id"]: d for d in jobs.find({})}
    assert by_id[closed["_id"]]["status"] == "DONE" and by_id[closed["_id"]]["result"] is None
    assert by_id[bad["_id"]]["status"] == "FAILED"
    assert "was not JSON" in by_id[bad["_id"]]["lastError"]["message"]
    # NaN and Infinity are not JSON (RFC 8259): the documented "one JSON value" refuses them.
    assert by_id[nan["_id"]]["status"] == "FAILED", by_id[nan["_id"]]
    assert "was not JSON" in by_id[nan["_id"]]["lastError"]["message"]
    # JSON the parser takes, nested 900 deep: stored, or refused as unstorable; never a RecursionError of ours
    nested = by_id[deep["_id"]]
    assert nested["status"] == "DONE" or nested["lastError"]["name"] != "RecursionError", nested["lastError"]


def test_gigantic_stdout_and_stderr_keep_the_worker_small(tmp_path: Path, secantus: Secantus, dbname: str,
                                                          jobs: Any) -> None:
    out, err = _job("bigout", mib=400), _job("bigerr", mib=400)
    jobs.insert_many([out, err])
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--concurrency", "2",
               env_lines="JOB_TIMEOUT_MOCKUP_SECONDS=40\n")
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 2, 60, "both FAILED", w)
        peak = _peak_rss_mib(w.proc.pid)
    finally:
        assert w.terminate() == 0
    assert peak < 200, f"the worker's peak RSS was {peak:.0f} MiB for 2 x 400 MiB of output"
    by_id = {d["_id"]: d for d in jobs.find({})}
    assert len(by_id[err["_id"]]["lastError"]["message"]) < 6000
    assert len(str(by_id[out["_id"]]["lastError"])) < 6000


def test_hostile_retry_after_values_stay_within_zero_and_the_cap(tmp_path: Path, secantus: Secantus, dbname: str,
                                                                 jobs: Any) -> None:
    raws = ['{"retryAfterSeconds": -5}', '{"retryAfterSeconds": NaN}', '{"retryAfterSeconds": 1e308}',
            '{"retryAfterSeconds": "30"}', '{"retryAfterSeconds": ' + "9" * 400 + "}",
            '{"retryAfterSeconds": Infinity}', '{"retryAfterSeconds": -Infinity}', '{"retryAfterSeconds": true}',
            '[1,2]', '{"retryAfterSeconds": {"$gt": 1}}']
    docs = [_job("retry", max_attempts=3, raw=raw) for raw in raws]
    jobs.insert_many(docs)
    # base = cap = 20 s: whatever the child says, each retry is due within [0, 20] s of its write
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--retry-base", "20", "--retry-cap", "20",
               "--concurrency", "4")
    try:
        wait_until(lambda: jobs.count_documents({"attempts": {"$gte": 1}, "status": {"$ne": "RUNNING"}}) == len(raws),
                   40, "every first attempt written", w)
        waiting = list(jobs.find({}))
        alive = w.proc.poll() is None
    finally:
        assert w.terminate() == 0
    assert alive
    for doc in waiting:
        delay = retry_delay(doc)
        assert doc["status"] == "PENDING" and doc["attempts"] == 1, doc
        # exit 75 is a retry whatever its stdout says (not a crash of the worker's parsing)
        assert doc["lastError"]["name"] == "RetryJob", (doc["payload"]["raw"][:40], doc["lastError"]["message"][:200])
        assert 0 <= delay <= 20.5, (doc["payload"]["raw"][:40], delay)


def test_a_grandchild_holding_stdout_open_neither_hangs_the_job_nor_outlives_it(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    pid_file = tmp_path / "pids.txt"
    jobs.insert_one(_job("grandchild_stdout", pidFile=str(pid_file)))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--handler-grace", "1",
               env_lines="JOB_TIMEOUT_MOCKUP_SECONDS=30\n")
    try:
        wait_until(pid_file.exists, 20, "pids", w)
        started = time.monotonic()
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == 1, 25, "ended", w)
        took = time.monotonic() - started
        _, grandchild = (int(p) for p in pid_file.read_text().split())
        grandchild_alive = _alive(grandchild)
    finally:
        assert w.terminate() == 0
    doc = jobs.find_one({})
    assert doc["status"] == "DONE" and doc["result"] == {"ok": True}, doc
    assert not grandchild_alive
    assert took < 20  # not the job's 30 s timeout


def _left_after_done(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any,
                     mode: str) -> tuple[list[int], list[int]]:
    """Runs one ``mode`` job that writes its processes' pids, to DONE: (those pids, those still alive then)."""
    pid_file = tmp_path / "pids.txt"
    jobs.insert_one(_job(mode, pidFile=str(pid_file)))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--handler-grace", "1")
    pids: list[int] = []
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE", w)
        pids = [int(p) for p in pid_file.read_text().split()]
        left = [pid for pid in pids if _alive(pid)]
    finally:
        assert w.terminate() == 0
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    return pids, left


def test_double_forked_grandchild_that_ignores_sigterm_dies_with_the_job(tmp_path: Path, secantus: Secantus,
                                                                         dbname: str, jobs: Any) -> None:
    pids, left = _left_after_done(tmp_path, secantus, dbname, jobs, "doublefork")
    assert len(pids) == 2, pids
    assert left == []


def test_drain_of_a_child_that_ignores_sigterm_kills_it_and_releases_the_job(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    pid_file = tmp_path / "pids.txt"
    jobs.insert_one(_job("ignore_term", max_attempts=3, pidFile=str(pid_file)))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--handler-grace", "1",
               "--drain-timeout", "1")
    wait_until(pid_file.exists, 20, "pids", w)
    pids = [int(p) for p in pid_file.read_text().split()]
    started = time.monotonic()
    code = w.terminate(timeout=20)
    took = time.monotonic() - started
    assert code == 0, w.text()[-2000:]
    assert [p for p in pids if _alive(p)] == []
    doc = jobs.find_one({})
    assert doc["status"] == "PENDING" and doc["attempts"] == 0, doc
    assert took < 15


def test_command_missing_not_executable_or_cwd_gone_fails_the_job_not_the_worker(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho null\n")
    script.chmod(0o644)
    gone = tmp_path / "gone"
    gone.mkdir()
    jobs.insert_many([prisma_job("MOCKUP", mockup_payload(), max_attempts=1),
                      prisma_job("GENERATION", generation_payload(), max_attempts=1)])
    w = worker(tmp_path, secantus.url(dbname), "--handler", f"MOCKUP=exec:{tmp_path}/no-such-command --x",
               "--handler", f"GENERATION=exec:{script}", "--handler", f"FULFILLMENT=exec:{sys.executable} -c 0",
               "--handler-cwd", str(gone), queues="mockup,generation,fulfillment")
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 2, 30, "2 FAILED", w)
        gone.rmdir()  # the working directory vanishes under a running worker
        jobs.insert_one(prisma_job("FULFILLMENT", FULFILLMENT_PAYLOAD, max_attempts=1))
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 3, 30, "3 FAILED", w)
        alive = w.proc.poll() is None
    finally:
        w.terminate()
    assert alive
    for doc in jobs.find({}):
        assert doc["lastError"]["message"], doc


def test_secret_split_encoded_or_at_the_tail_boundary_never_reaches_output(tmp_path: Path, secantus: Secantus,
                                                                           dbname: str, jobs: Any) -> None:
    docs = [_job("split_secret"), _job("encoded_secret"), _job("result_secret")]
    docs += [_job("tail_secret", cut=cut) for cut in (1, 5, 20, len(SECRET) - 9)]
    jobs.insert_many(docs)
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--concurrency", "3", env_lines=SECRET_LINE)
    try:
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == len(docs), 40, "ended", w)
    finally:
        assert w.terminate() == 0
    text = all_output(w, jobs)
    from urllib.parse import quote
    for form in (SECRET, quote(SECRET, safe=""), quote(SECRET)):
        leaked = [piece for piece in _pieces(form, 10) if piece in text]
        assert leaked == [], (form, leaked[:3])


# --- HTTP: a hostile server on 127.0.0.1 -------------------------------------------------------------------

SIGNING_LINE = f"MUZO_HANDLER_SIGNING_SECRET={handlers_support.SIGNING_SECRET}\n"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def _http(server: HostileServer, job_type: str, path: str) -> str:
    return f"{job_type}=http://127.0.0.1:{server.server_address[1]}{path}"


def test_http_server_that_stalls_trickles_or_never_answers_ends_at_the_timeout(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any, hostile: HostileServer) -> None:
    docs = [prisma_job("MOCKUP", mockup_payload(), max_attempts=1),
            prisma_job("GENERATION", generation_payload(), max_attempts=1),
            prisma_job("FULFILLMENT", FULFILLMENT_PAYLOAD, max_attempts=1)]
    jobs.insert_many(docs)
    w = worker(tmp_path, secantus.url(dbname), "--handler", _http(hostile, "MOCKUP", "/never"),
               "--handler", _http(hostile, "GENERATION", "/hang"),
               "--handler", _http(hostile, "FULFILLMENT", "/trickle"),
               "--concurrency", "3", queues="mockup,generation,fulfillment",
               env_lines=SIGNING_LINE + "JOB_TIMEOUT_MOCKUP_SECONDS=2\nJOB_TIMEOUT_GENERATION_SECONDS=2\n"
               "JOB_TIMEOUT_FULFILLMENT_SECONDS=2\n")
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 3, 30, "3 FAILED", w)
    finally:
        assert w.terminate(timeout=20) == 0
    for doc in jobs.find({}):
        assert doc["lastError"]["name"] == "JobTimeoutError", doc["lastError"]


def test_http_after_cancelled_and_endless_header_calls_the_next_job_still_gets_through(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any, hostile: HostileServer) -> None:
    """A call cancelled by the timeout mid-answer, or an answer whose headers never end, must not poison
    the handler's kept-alive connection pool for the jobs after it."""
    behaviours = ["/ok", "/hang", "/ok", "/headers-forever", "/ok", "/never", "/ok"]
    docs = [prisma_job("MOCKUP", mockup_payload(i, behave=b), max_attempts=1) for i, b in enumerate(behaviours)]
    w = worker(tmp_path, secantus.url(dbname), "--handler", _http(hostile, "MOCKUP", "/by-payload"),
               env_lines=SIGNING_LINE + "JOB_TIMEOUT_MOCKUP_SECONDS=1.5\n")
    try:
        for doc in docs:  # one after the other, in this order
            jobs.insert_one(doc)
            wait_until(lambda d=doc: jobs.count_documents({"_id": d["_id"], "status": {"$in": ["DONE", "FAILED"]}}),
                       20, f"{doc['payload']['behave']} ended", w)
        peak = _peak_rss_mib(w.proc.pid)
    finally:
        assert w.terminate(timeout=20) == 0
    outcome = {d["payload"]["behave"] + str(d["payload"]["orderId"]): d["status"] for d in jobs.find({})}
    assert [d["status"] for d in jobs.find({"payload.behave": "/ok"})] == ["DONE"] * 4, outcome
    assert jobs.count_documents({"status": "FAILED"}) == 3, outcome
    assert peak < 250, peak


def test_http_huge_answer_keeps_the_worker_small(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any,
                                                 hostile: HostileServer) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(), max_attempts=1))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _http(hostile, "MOCKUP", "/huge/800"),
               env_lines=SIGNING_LINE + "JOB_TIMEOUT_MOCKUP_SECONDS=30\n")
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 1, 40, "FAILED", w)
        peak = _peak_rss_mib(w.proc.pid)
    finally:
        assert w.terminate(timeout=20) == 0
    assert peak < 250, f"the worker's peak RSS was {peak:.0f} MiB for an 800 MiB answer"
    assert "bytes" in jobs.find_one({})["lastError"]["message"]


def test_http_protocol_edges_redirect_reset_not_json(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any,
                                                     hostile: HostileServer) -> None:
    redirect = prisma_job("MOCKUP", mockup_payload(), max_attempts=1)
    reset = prisma_job("GENERATION", generation_payload(), max_attempts=2)
    notjson = prisma_job("FULFILLMENT", FULFILLMENT_PAYLOAD, max_attempts=1)
    jobs.insert_many([redirect, reset, notjson])
    w = worker(tmp_path, secantus.url(dbname), "--handler", _http(hostile, "MOCKUP", "/redirect"),
               "--handler", _http(hostile, "GENERATION", "/reset"), "--handler",
               _http(hostile, "FULFILLMENT", "/notjson"), "--retry-base", "0.05", "--retry-cap", "0.1",
               queues="mockup,generation,fulfillment", env_lines=SIGNING_LINE)
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 3, 30, "3 FAILED", w)
    finally:
        assert w.terminate() == 0
    by_id = {d["_id"]: d for d in jobs.find({})}
    assert "/elsewhere" not in hostile.seen  # not followed
    assert "307" in by_id[redirect["_id"]]["lastError"]["message"]
    assert by_id[reset["_id"]]["attempts"] == 2  # a connection cut mid-body is retried
    assert "was not JSON" in by_id[notjson["_id"]]["lastError"]["message"]


def test_http_hostile_retry_after_stays_within_zero_and_the_cap(tmp_path: Path, secantus: Secantus, dbname: str,
                                                               jobs: Any, hostile: HostileServer) -> None:
    values = ["-5", "99999999999999999999999", "Thu, 01 Jan 1970 00:00:00 GMT", "garbage", "1e308", "NaN",
              "Fri, 31 Dec 9999 23:59:59 GMT", "\u0661\u0662", "0x10", " 7 "]
    docs = [prisma_job("MOCKUP", mockup_payload(i, retryAfter=value), max_attempts=3) for i, value in enumerate(values)]
    jobs.insert_many(docs)
    w = worker(tmp_path, secantus.url(dbname), "--burst", "--handler", _http(hostile, "MOCKUP", "/retry"),
               "--retry-base", "20", "--retry-cap", "20", "--concurrency", "4", env_lines=SIGNING_LINE)
    w.proc.wait(30)
    for got in jobs.find({}):
        value = got["payload"]["retryAfter"]
        assert got["lastError"]["name"] == "RetryJob", (value, got["lastError"]["message"][:200])
        if "retry after 0 s" in got["lastError"]["message"]:  # a date in the past: due at once, run again
            assert got["status"] in ("PENDING", "FAILED"), (value, got)
            continue
        assert got["status"] == "PENDING" and got["attempts"] == 1, (value, got["status"], w.text()[-1500:])
        assert 0 <= retry_delay(got) <= 20.5, (value, retry_delay(got))


def test_http_secret_in_an_error_answer_cut_at_500_chars_or_in_a_result_is_masked(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any, hostile: HostileServer) -> None:
    docs = [prisma_job("MOCKUP", mockup_payload(i), max_attempts=1) for i in range(3)]
    jobs.insert_many(docs)
    w = worker(tmp_path, secantus.url(dbname), "--handler", _http(hostile, "MOCKUP", "/secret/490"),
               "--handler", _http(hostile, "GENERATION", "/secret/10"), "--handler",
               _http(hostile, "FULFILLMENT", "/result"), queues="mockup,generation,fulfillment",
               env_lines=SIGNING_LINE + SECRET_LINE)
    jobs.insert_many([prisma_job("GENERATION", generation_payload(), max_attempts=1),
                      prisma_job("FULFILLMENT", FULFILLMENT_PAYLOAD, max_attempts=1)])
    try:
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == 5, 30, "5 ended", w)
    finally:
        assert w.terminate() == 0
    text = all_output(w, jobs)
    for form in (SECRET, urllib.parse.quote(SECRET, safe="")):
        leaked = [piece for piece in _pieces(form, 6) if piece in text]
        assert leaked == [], (form, leaked[:3])
    assert jobs.count_documents({"status": "DONE"}) == 1


def test_tls_certificate_for_another_host_name_is_refused_even_when_trusted(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    right, right_cert = tls_server(tmp_path, "right", "IP:127.0.0.1")
    wrong, wrong_cert = tls_server(tmp_path, "wrong", "DNS:wrong.example")
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(right_cert.read_bytes() + wrong_cert.read_bytes())  # both trusted: only the name differs
    try:
        good = prisma_job("MOCKUP", mockup_payload(), max_attempts=1)
        bad = prisma_job("GENERATION", generation_payload(), max_attempts=1)
        jobs.insert_many([good, bad])
        w = worker(tmp_path, secantus.url(dbname), "--burst",
                   "--handler", f"MOCKUP=https://127.0.0.1:{right.server_address[1]}/x",
                   "--handler", f"GENERATION=https://127.0.0.1:{wrong.server_address[1]}/x",
                   queues="mockup,generation", env_lines=SIGNING_LINE, env={"SSL_CERT_FILE": str(trusted)})
        w.proc.wait(30)
    finally:
        for server in (right, wrong):
            server.shutdown()
            server.server_close()
    assert jobs.find_one({"_id": good["_id"]})["status"] == "DONE", w.text()[-1500:]  # the CA file is read
    refused = jobs.find_one({"_id": bad["_id"]})
    assert refused["status"] == "FAILED" and refused["lastError"]["name"] == "RetryJob", refused["lastError"]
    assert "CERTIFICATE_VERIFY_FAILED" in refused["lastError"]["message"]


def test_drain_during_a_post_that_never_answers_releases_the_job_unspent(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any, hostile: HostileServer) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(), max_attempts=2))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _http(hostile, "MOCKUP", "/never"),
               "--drain-timeout", "1", env_lines=SIGNING_LINE + "JOB_TIMEOUT_MOCKUP_SECONDS=300\n")
    wait_until(lambda: "/never" in hostile.seen, 20, "the POST", w)
    assert w.terminate(timeout=20) == 0, w.text()[-1500:]
    doc = jobs.find_one({})
    assert doc["status"] == "PENDING" and doc["attempts"] == 0, doc


def test_a_tampered_timestamp_with_the_workers_signature_is_refused_by_the_node_verifier(tmp_path: Path) -> None:
    """The documented verifier (route.ts, compiled) accepts the worker's header and refuses it once t moved."""
    from muzo_ops.queue.handlers import signing

    body = json.dumps({"id": "65f0a1b2c3d4e5f601234567", "type": "MOCKUP", "payload": {"x": "\u2028\u00e9"},
                       "attempt": 1, "maxAttempts": 3, "projectId": None}, ensure_ascii=True).encode()
    now = int(time.time())
    header = signing.header(handlers_support.SIGNING_SECRET, body, now)
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    cases = {"as signed": header, "t+1": f"t={now + 1},v1={v1}", "t-1": f"t={now - 1},v1={v1}",
             "t padded": f"t=0{now},v1={v1}", "t with spaces": f"t= {now} ,v1={v1}",
             "v1 upper": f"t={now},v1={v1.upper()}", "t float": f"t={now}.0,v1={v1}"}
    script = tmp_path / "verify.mjs"
    script.write_text(_VERIFY_JS)
    out = subprocess.run(["node", str(script)], input=json.dumps({"body": body.decode(), "cases": cases,
                                                                   "secret": handlers_support.SIGNING_SECRET}),
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "NODE_PATH": str(handlers_support.NODE_MODULES)})
    assert out.returncode == 0, out.stderr
    verdicts = json.loads(out.stdout)
    assert verdicts["as signed"] is True and t == str(now)
    # "t padded" and "t with spaces" name the same second: the HMAC is over the number's text as the route
    # rebuilds it, so they verify only if they are the same t; every other change is refused.
    refused = {name for name, ok in verdicts.items() if not ok}
    assert {"t+1", "t-1", "v1 upper", "t float"} <= refused, verdicts


# route.ts's verifier, taken from the file at run time (TypeScript types stripped by the compiler in node_modules).
_VERIFY_JS = r"""
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
const require = createRequire(process.env.NODE_PATH + "/");
const ts = require("typescript");
const source = readFileSync(new URL("ROUTE", "file://"), "utf8").replace(/^import \{ JobRefused.*$/m, "");
const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.CommonJS } }).outputText;
const mod = { exports: {} };
new Function("require", "module", "exports", js)(require, mod, mod.exports);
const input = JSON.parse(readFileSync(0, "utf8"));
const out = {};
for (const [name, header] of Object.entries(input.cases)) {
  out[name] = mod.exports.verifyMuzoSignature(Buffer.from(input.body), header, [input.secret]);
}
process.stdout.write(JSON.stringify(out));
""".replace("ROUTE", str(handlers_support.EXAMPLES / "route.ts"))


def _stop_database(secantus: Secantus, seconds: float) -> None:
    os.kill(secantus.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(secantus.proc.pid, signal.SIGCONT)


def test_database_stopped_shorter_than_the_lock_the_exec_job_runs_once(tmp_path: Path, secantus: Secantus,
                                                                      dbname: str, jobs: Any) -> None:
    record = tmp_path / "runs.txt"
    jobs.insert_one(_job("record", max_attempts=3, record=str(record), seconds=4))
    args = ("--handler", _exec(), "--lock-seconds", "3", "--poll-seconds", "0.2")
    first = worker(tmp_path, secantus.url(dbname), *args, name="first")
    wait_until(record.exists, 20, "the first start", first)
    second = worker(tmp_path, secantus.url(dbname), *args, name="second")
    try:
        time.sleep(0.5)
        _stop_database(secantus, 1.5)  # under the 3 s lock
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE", first)
        time.sleep(1)
    finally:
        assert first.terminate() == 0 and second.terminate() == 0
    starts = [line for line in record.read_text().splitlines() if line.startswith("start")]
    assert len(starts) == 1, record.read_text()
    assert jobs.find_one({})["attempts"] == 1


def test_database_stopped_longer_than_the_lock_a_done_job_never_runs_again(tmp_path: Path, secantus: Secantus,
                                                                          dbname: str, jobs: Any) -> None:
    """Longer than the lock the job may be taken over and run twice at once (at least once, documented: the
    first worker's command is not ended when its lock is lost); once DONE the job never starts again, and its
    result is one run's."""
    record = tmp_path / "runs.txt"
    jobs.insert_one(_job("record", max_attempts=5, record=str(record), seconds=5))
    args = ("--handler", _exec(), "--lock-seconds", "1.5", "--poll-seconds", "0.2", "--handler-grace", "1")
    first = worker(tmp_path, secantus.url(dbname), *args, name="first")
    wait_until(record.exists, 20, "the first start", first)
    second = worker(tmp_path, secantus.url(dbname), *args, name="second")
    try:
        time.sleep(0.3)
        _stop_database(secantus, 3)  # twice the lock
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 40, "DONE", first)
        done_lines = len(record.read_text().splitlines())
        time.sleep(3)
    finally:
        assert first.terminate() == 0 and second.terminate() == 0
    lines = record.read_text().splitlines()
    assert len(lines) == done_lines, lines  # nothing started or ended after DONE
    doc = jobs.find_one({})
    ends = [line for line in lines if line.startswith("end")]
    assert doc["result"]["pid"] in [int(line.split()[1]) for line in ends]


def test_a_grandchild_moved_to_another_group_of_the_session_does_not_outlive_the_job(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    pids, left = _left_after_done(tmp_path, secantus, dbname, jobs, "newgroup")
    assert len(pids) == 2, pids
    assert left == [], "a process the job started outlived it"


def test_worker_killed_9_mid_job_a_restarted_worker_runs_it_to_done_once_more(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    """kill -9 cannot end the command (documented: systemd's KillMode=mixed does); the job's lock expires, a
    restarted worker runs it again (attempt 2) to DONE, and the orphan's end writes nothing."""
    record = tmp_path / "runs.txt"
    jobs.insert_one(_job("record", max_attempts=3, record=str(record), seconds=2))
    args = ("--handler", _exec(), "--lock-seconds", "1.5", "--poll-seconds", "0.2")
    first = worker(tmp_path, secantus.url(dbname), *args, name="first")
    wait_until(record.exists, 20, "the first start", first)
    orphan = int(record.read_text().split()[1])
    first.kill9()
    second = worker(tmp_path, secantus.url(dbname), *args, name="second")
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE", second)
        wait_until(lambda: not _alive(orphan), 10, "the orphan's end", second)
        time.sleep(0.5)
    finally:
        assert second.terminate() == 0
        if _alive(orphan):
            os.kill(orphan, signal.SIGKILL)
    doc = jobs.find_one({})
    starts = [line.split() for line in record.read_text().splitlines() if line.startswith("start")]
    assert [int(s[2]) for s in starts] == [1, 2], starts
    assert doc["attempts"] == 2 and doc["result"]["pid"] == int(starts[1][1])


def test_many_jobs_at_once_each_leaving_a_sigterm_proof_grandchild_leave_nothing(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    pid_files = [tmp_path / f"pids-{i}.txt" for i in range(12)]
    jobs.insert_many([_job("doublefork", pidFile=str(f)) for f in pid_files])
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--handler-grace", "0.5", "--concurrency", "6")
    pids: list[int] = []
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 12, 60, "12 DONE", w)
        pids = [int(p) for f in pid_files for p in f.read_text().split()]
        left = [pid for pid in pids if _alive(pid)]
    finally:
        assert w.terminate() == 0
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert len(pids) == 24, pids
    assert left == []


def test_output_mask_at_every_cut_through_every_form_of_the_secret() -> None:
    """In process, every offset: the tail and head cuts never keep a piece (6+ chars) of any form of the secret."""
    from muzo_ops.queue.handlers.masking import OutputMask

    mask = OutputMask({"SMTP_PASSWORD": SECRET, "NOT_SENSITIVE_NAME": "plain"})
    forms = [SECRET, urllib.parse.quote(SECRET, safe=""), urllib.parse.quote_plus(SECRET), json.dumps(SECRET)[1:-1]]
    for form in forms:
        for offset in range(len(form) + 2):
            stream = ("a" * 5000 + form + "b" * (4096 - len(form) + offset)).encode()
            kept = stream[-(4096 + mask.reach):]
            tail = mask.tail(kept, len(stream) > len(kept), 4096)
            head = mask.head("c" * (500 - offset) + form + "d" * 600, 500)
            for text, where in ((tail, "tail"), (head, "head")):
                leaked = [piece for piece in _pieces(form, 6) if piece in text]
                assert leaked == [], (where, form, offset, leaked[:2])
    assert mask("plain text") == "plain text"
