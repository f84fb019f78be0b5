"""The handler spec grammar, the job body, signatures, RetryJob and Retry-After: pure functions."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
import time

import pytest
from bson import Decimal128, ObjectId

from muzo_ops.env import handlerspec
from muzo_ops.env.handlerspec import SpecKind
from muzo_ops.errors import ConfigError
from muzo_ops.queue import handlers
from muzo_ops.queue.handlers import protocol, signing
from muzo_ops.queue.handlers.http_handler import retry_after
from muzo_ops.queue.jobs import Job, JobType, RetryJob


def test_exec_spec_is_split_like_a_shell_and_keeps_commas_in_quotes() -> None:
    spec = handlerspec.parse("exec:node 'dist/run job.js' generation \"a,b\" c\\ d")
    assert spec.kind is SpecKind.EXEC
    assert spec.argv == ("node", "dist/run job.js", "generation", "a,b", "c d")


def test_env_value_entries_split_on_commas_outside_quotes() -> None:
    value = ("GENERATION=exec:node run-job.js generation,MOCKUP=exec:node run.js \"mockup,fast\" 'x, y' z\\,w, "
             "FULFILLMENT=https://web.internal/api/jobs/fulfillment?a=1,")
    entries = handlerspec.parse_list(value)
    assert [(t, s.kind) for t, s in entries] == [("GENERATION", SpecKind.EXEC), ("MOCKUP", SpecKind.EXEC),
                                                 ("FULFILLMENT", SpecKind.HTTP)]
    assert entries[1][1].argv == ("node", "run.js", "mockup,fast", "x, y", "z,w")
    assert entries[2][1].target == "https://web.internal/api/jobs/fulfillment?a=1"
    assert handlerspec.list_error(value) is None
    assert handlerspec.list_error("GENERATION=myapp.jobs:generate") is None


@pytest.mark.parametrize(("value", "message"), [
    ("GENERATION=exec:node 'run.js", "unclosed ' quote"),
    ("GENERATION=exec:", "names no command"),
    ("PRINT=exec:node x", "unknown job type 'PRINT'"),
    ("GENERATION", "expected TYPE=SPEC"),
    ("GENERATION=ftp://host/x", "must start with https://"),
    ("GENERATION=https:///path", "has no host"),
    ("GENERATION=https://host:99999/x", "port that is not a number"),
    ("GENERATION=my app:fn", "expected package.module:callable"),
    ("GENERATION=..jobs:run", "'..jobs' is not an absolute module path"),
])
def test_bad_values_say_why(value: str, message: str) -> None:
    problem = handlerspec.list_error(value)
    assert problem is not None and message in problem
    with pytest.raises(ConfigError, match=re.escape(message)):
        handlers.load([JobType.GENERATION], environ={"MUZO_WORKER_HANDLERS": value})


def test_a_flag_is_one_entry_commas_included() -> None:
    loaded = handlers.load([JobType.MOCKUP], ["MOCKUP=exec:node run.js a,b"], {})
    owner = getattr(loaded[JobType.MOCKUP], handlers.OWNER_ATTRIBUTE)
    assert owner.argv == ("node", "run.js", "a,b")
    assert loaded[JobType.MOCKUP].__qualname__ == "exec:node run.js a,b"


def test_plain_http_to_another_machine_is_refused_in_production_only() -> None:
    remote = "GENERATION=http://web.internal/api/jobs/generation"
    local = "GENERATION=http://127.0.0.1:3000/api/jobs/generation,MOCKUP=http://localhost:3000/x"
    problem = handlerspec.production_error(remote)
    assert problem is not None and "plain http:// to web.internal" in problem
    assert handlerspec.production_error(local) is None
    assert handlerspec.production_error("GENERATION=https://web.internal/x") is None
    assert handlerspec.production_error("GENERATION=http://[::1]:3000/x") is None
    secret = {"MUZO_HANDLER_SIGNING_SECRET": "s" * 43}
    with pytest.raises(ConfigError, match=r"plain http:// to web\.internal"):
        handlers.load([JobType.GENERATION], [remote], {**secret, "NODE_ENV": "production"})
    assert handlers.load([JobType.GENERATION], [remote], secret)[JobType.GENERATION].__qualname__ == (
        "http://web.internal/api/jobs/generation")


def test_http_handler_needs_the_signing_secret() -> None:
    with pytest.raises(ConfigError, match="set MUZO_HANDLER_SIGNING_SECRET"):
        handlers.load([JobType.GENERATION], ["GENERATION=https://web/api/jobs"], {})


def test_exec_working_directory_must_exist(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        handlers.load([JobType.MOCKUP], ["MOCKUP=exec:node x.js"], {},
                      handlers.HandlerOptions(cwd="/nonexistent/folder"))


def test_job_body_is_ascii_json_with_bson_values_as_text() -> None:
    oid = ObjectId()
    job = Job("65f0a1b2c3d4e5f601234567", JobType.MOCKUP, {
        "ref": oid, "at": dt.datetime(2026, 1, 2, 3, 4, 5, 678000), "price": Decimal128("12.50"),
        "blob": b"\x00\x01", "text": "\u00e9t\u00e9 \u2603"}, 2, 5, None)
    body = protocol.request_body(job)
    assert body.isascii()
    assert json.loads(body) == {"id": "65f0a1b2c3d4e5f601234567", "type": "MOCKUP", "payload": {
        "ref": str(oid), "at": "2026-01-02T03:04:05.678Z", "price": "12.50", "blob": "AAE=",
        "text": "\u00e9t\u00e9 \u2603"}, "attempt": 2, "maxAttempts": 5, "projectId": None}


def test_results_and_retry_after_from_output() -> None:
    assert protocol.parse_result(b"", "x") is None
    assert protocol.parse_result(b" \n", "x") is None
    assert protocol.parse_result(b'{"a": [1, 2]}\n', "x") == {"a": [1, 2]}
    with pytest.raises(protocol.NotJsonError, match="was not JSON"):
        protocol.parse_result(b"done\n", "x")
    with pytest.raises(protocol.NotJsonError, match="was not JSON"):
        protocol.parse_result(b"\xff\xfe", "x")
    assert protocol.retry_after_from(b'{"retryAfterSeconds": 2.5}') == 2.5
    for bad in (b"", b"x", b"[]", b'{"retryAfterSeconds": -1}', b'{"retryAfterSeconds": "5"}',
                b'{"retryAfterSeconds": true}', b'{"retryAfterSeconds": 1e999}'):
        assert protocol.retry_after_from(bad) is None


def test_signature_round_trip_rotation_staleness_and_tampering() -> None:
    body = b'{"id":"1"}'
    now = int(time.time())
    header = signing.header("current-secret", body, now)
    assert header.startswith(f"t={now},v1=") and len(header.split("v1=")[1]) == 64
    assert signing.verify(header, body, ["current-secret"])
    assert signing.verify(header, body, ["new-secret", "current-secret"])  # the previous key, during a rotation
    assert not signing.verify(header, body + b" ", ["current-secret"])
    assert not signing.verify(header, body, ["other"])
    assert not signing.verify(signing.header("current-secret", body, now - 301), body, ["current-secret"])
    assert not signing.verify(f"t={now},t={now},v1=" + header.split("v1=")[1], body, ["current-secret"])
    assert not signing.verify("", body, ["current-secret"])


def test_retry_job_keeps_only_a_usable_delay() -> None:
    assert RetryJob(after_seconds=2).after_seconds == 2.0
    assert RetryJob("busy").after_seconds is None
    for bad in (-1, float("nan"), float("inf"), True):
        assert RetryJob(after_seconds=bad).after_seconds is None


def test_retry_after_header_seconds_or_date() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None and retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    seconds = retry_after(date, now)
    assert seconds is not None and 28 <= seconds <= 31
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0


def test_the_current_folder_is_importable_for_handlers(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "myapp_h17").mkdir()
    (folder / "myapp_h17" / "__init__.py").write_text("")
    (folder / "myapp_h17" / "handlers.py").write_text("def fn(job):\n    return 1\n")
    monkeypatch.chdir(folder)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(folder))])
    loaded = handlers.load([JobType.MOCKUP], ["MOCKUP=myapp_h17.handlers:fn"], {})
    assert loaded[JobType.MOCKUP].__module__ == "myapp_h17.handlers"


def test_check_env_reads_the_same_grammar() -> None:
    from muzo_ops.env import checks, schema

    var = schema.get("MUZO_WORKER_HANDLERS")
    good = ("GENERATION=exec:node apps/worker/dist/run-job.js generation,MOCKUP=exec:node run.js \"a,b\","
            "FULFILLMENT=https://web.internal/api/jobs/fulfillment")
    assert checks.value_error(var, good) is None
    problem = checks.value_error(var, "GENERATION=exec:node 'run.js")
    assert problem is not None and "unclosed ' quote" in problem


def test_policy_flags() -> None:
    from muzo_ops.queue import policyspec

    job_type, override = policyspec.parse("generation:timeout=1800,retry-base=10,retry-cap=600,max-attempts=5",
                                          86400)
    assert job_type is JobType.GENERATION
    assert override == policyspec.PolicyOverride(1800.0, 10.0, 600.0, 5)
    assert policyspec.parse("MOCKUP:max-attempts=1", 86400)[1] == policyspec.PolicyOverride(max_attempts=1)
    for bad, message in (("MOCKUP", "expected TYPE:KEY=VALUE"), ("MOCKUP:speed=3", "'speed' is not one of"),
                         ("MOCKUP:timeout=0", "above 0"), ("MOCKUP:timeout=1e9", "plain number"),
                         ("MOCKUP:timeout=90000", "at most 86400"), ("MOCKUP:max-attempts=2.5", "whole number"),
                         ("MOCKUP:retry-base=5,retry-cap=1", "longer than retry-cap"),
                         ("MOCKUP:timeout=1,timeout=2", "given twice")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            policyspec.parse(bad, 86400)


def test_job_body_refuses_what_json_cannot_carry_as_a_fatal_payload_error() -> None:
    from bson import Code, DBRef, Int64, MaxKey, MinKey, Regex, Timestamp

    from muzo_ops.queue.jobs import PayloadError

    every = {"i64": Int64(5), "re": Regex("a.*", "i"), "code": Code("x"), "ts": Timestamp(1, 2), "min": MinKey(),
             "max": MaxKey(), "ref": DBRef("c", ObjectId()), "none": None, "big": 2**63 - 1, "list": [1, "a"]}
    body = json.loads(protocol.request_body(Job("x", JobType.MOCKUP, every, 1, 1, None)))
    assert body["payload"]["i64"] == 5 and body["payload"]["big"] == 2**63 - 1 and body["payload"]["code"] == "x"
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(PayloadError, match="NaN or Infinity"):
            protocol.request_body(Job("x", JobType.MOCKUP, {"v": [bad]}, 1, 1, None))
    deep: dict[str, object] = {}
    for _ in range(5000):
        deep = {"a": deep}
    with pytest.raises(PayloadError, match="nested too deep"):
        protocol.request_body(Job("x", JobType.MOCKUP, deep, 1, 1, None))


def test_check_env_refuses_plain_http_handlers_to_other_hosts_in_production() -> None:
    from muzo_ops.env import checks

    remote = {"MUZO_WORKER_HANDLERS": "GENERATION=http://web.internal/api/jobs/generation"}
    local = {"MUZO_WORKER_HANDLERS": "GENERATION=http://127.0.0.1:3000/api/jobs/generation"}

    def codes(values: dict[str, str], production: bool) -> set[str]:
        return {p.code for p in checks.check(values, production=production).problems
                if p.variable == "MUZO_WORKER_HANDLERS"}

    assert "production-handler-http" in codes(remote, True)
    assert "production-handler-http" not in codes(remote, False)
    assert "production-handler-http" not in codes(local, True)
