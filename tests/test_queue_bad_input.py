"""Issue 7, "bad input that still says unexpected", the queue's commands: each is one clean
``error:`` line with exit 2, never "unexpected" nor a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.servers import free_port
from tests.workers import mockup_payload

VALID = json.dumps(mockup_payload(1))


def _nested(depth: int) -> str:
    return '{"orderId": "o", "outputAssetId": "a", "productVariantId": "v", "deep": ' + \
        '{"a": ' * depth + "1" + "}" * depth + "}"


CASES: list[tuple[str, list[str], str]] = [
    ("max-attempts 20 digits", ["jobs", "enqueue", "MOCKUP", "--payload", VALID, "--max-attempts",
                                "99999999999999999999"], "--max-attempts"),
    ("max-attempts huge", ["jobs", "enqueue", "MOCKUP", "--payload", VALID, "--max-attempts", "1000000"],
     "must be a whole number from 1 to 1000"),
    ("run-at days overflow", ["jobs", "enqueue", "MOCKUP", "--payload", VALID, "--run-at", "+99999999999d"],
     "at most 36500d"),
    ("run-at 19 digits", ["jobs", "enqueue", "MOCKUP", "--payload", VALID, "--run-at", "+9999999999999999999s"],
     "use a whole number"),
    ("run-at past year 9999", ["jobs", "enqueue", "MOCKUP", "--payload", VALID, "--run-at",
                               "9999-12-31T23:59:59-05:00"], "--run-at"),
    ("older-than huge", ["jobs", "clear-failed", "--older-than", "99999999d"], "at most 36500d"),
    ("payload 5000 deep", ["jobs", "enqueue", "MOCKUP", "--payload", _nested(5000)], "nested too deep"),
    ("payload 95 deep", ["jobs", "enqueue", "MOCKUP", "--payload", _nested(95)], "nested too deep at deep.a.a"),
    ("30-digit integer", ["jobs", "enqueue", "MOCKUP", "--payload",
                          VALID[:-1] + ', "n": 123456789012345678901234567890}'], "too large for MongoDB (64 bits) at n"),
    ("lone surrogate", ["jobs", "enqueue", "MOCKUP", "--payload", VALID[:-1] + ', "s": "\\ud800"}'],
     "not valid UTF-8 (a lone surrogate) at s"),
    ("NUL in a key", ["jobs", "enqueue", "MOCKUP", "--payload", VALID[:-1] + ', "a\\u0000b": 1}'],
     "key with a NUL character"),
    ("relative handler", ["worker", "--handler", "MOCKUP=.handlers:run"], "not an absolute module path"),
    ("syntax error handler", ["worker", "--handler", "MOCKUP=broken_handlers:run"], "has a syntax error"),
    ("module raising on import", ["worker", "--handler", "MOCKUP=raising_handlers:run"], "raised ZeroDivisionError"),
    ("dev-db port 99999", ["dev-db", "--port", "99999"], "must be a whole number from 1 to 65535"),
    ("dev-db port 0", ["dev-db", "--port", "0"], "must be a whole number from 1 to 65535"),
]


@pytest.mark.parametrize(("label", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_queue_input_is_one_clean_line(tmp_path: Path, label: str, args: list[str], message: str) -> None:
    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL=mongodb://127.0.0.1:{free_port()}/muzo?serverSelectionTimeoutMS=500\n"
                   "WORKER_QUEUES=mockup\n")
    (tmp_path / "broken_handlers.py").write_text("def run(job):\n    return (\n")
    (tmp_path / "raising_handlers.py").write_text("1 / 0\n")
    if args[0] in ("jobs", "worker"):
        args = [*args, "--env-file", str(env)]
    proc = run_cli(*args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, (label, text)
    assert "unexpected" not in text and "Traceback" not in text, text
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (label, proc.stderr)


def test_handlers_variable_with_a_relative_module_is_one_line(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("DATABASE_URL=mongodb://127.0.0.1:9/muzo\nWORKER_QUEUES=mockup\n"
                   "MUZO_WORKER_HANDLERS=MOCKUP=..jobs:run\n")
    proc = run_cli("worker", "--env-file", str(env))
    assert proc.returncode == 2 and "unexpected" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: handler ..jobs:run: '..jobs' is not an absolute module path: write it as package.module:callable"]
