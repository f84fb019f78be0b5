"""The audit log: JSON lines beside the env file, HMAC fingerprints, never a value."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest

from muzo_ops.secrets import audit


def test_a_record_holds_names_and_fingerprints_only(tmp_path: Path) -> None:
    env = tmp_path / ".env.production"
    old, new = "old-secret-value-0123456789abcdef", "new-secret-value-0123456789abcdef"
    record = audit.append(str(env), "rotate", {"NEXTAUTH_SECRET": (old, new)},
                          extra={"backup": ".env.production.1.bak"})
    log = tmp_path / audit.LOG_NAME
    text = log.read_text()
    assert old not in text and new not in text
    data = json.loads(text)
    assert data["command"] == "rotate" and data["env_file"] == ".env.production"
    assert data["variables"] == ["NEXTAUTH_SECRET"]
    assert data["backup"] == ".env.production.1.bak"
    assert data["user"] and data["host"] and dt.datetime.fromisoformat(data["time"]).tzinfo is not None
    fps = data["fingerprints"]["NEXTAUTH_SECRET"]
    assert len(fps["old"]) == 12 and len(fps["new"]) == 12 and fps["old"] != fps["new"]
    assert all(c in "0123456789abcdef" for c in fps["old"] + fps["new"])
    # not a plain hash: the key beside the log is needed to compute it
    assert fps["new"] != hashlib.sha256(new.encode()).hexdigest()[:12]
    assert audit.fingerprint(str(env), new) == fps["new"]
    assert record.fingerprints == data["fingerprints"]
    for path in (log, tmp_path / audit.KEY_NAME):
        assert path.stat().st_mode & 0o777 == 0o600
    assert new not in (tmp_path / audit.KEY_NAME).read_text()


def test_fingerprints_differ_between_folders_and_key_stays(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    value = "weak-password"
    first = audit.fingerprint(str(tmp_path / "a" / ".env"), value)
    assert first == audit.fingerprint(str(tmp_path / "a" / ".env"), value)
    assert first != audit.fingerprint(str(tmp_path / "b" / ".env"), value)
    assert audit.fingerprint(str(tmp_path / "a" / ".env"), "") is None


def _first_use(folder: str) -> str | None:
    return audit.fingerprint(folder + "/.env", "same-value-everywhere")


def test_first_users_agree_on_one_key(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(8) as pool:
        prints = pool.map(_first_use, [str(tmp_path)] * 32)
    assert len(set(prints)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [audit.KEY_NAME]


def test_a_damaged_key_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / audit.KEY_NAME).write_text("not hex\n")
    with pytest.raises(audit.AuditError, match="not a fingerprint key"):
        audit.fingerprint(str(tmp_path / ".env"), "x")


def test_read_filters_by_file_skips_torn_lines_and_finds_last_rotation(tmp_path: Path) -> None:
    env, other = str(tmp_path / ".env"), str(tmp_path / ".env.production")
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    audit.append(env, "rotate", {"NEXTAUTH_SECRET": ("a" * 20, "b" * 20)}, now=t0)
    audit.append(other, "rotate", {"NEXTAUTH_SECRET": ("c" * 20, "d" * 20)}, now=t0 + dt.timedelta(days=5))
    with open(tmp_path / audit.LOG_NAME, "a") as handle:
        handle.write('{"time": "2026-01-0')  # a crash mid-line
    audit.append(env, "retire", {"NEXTAUTH_SECRET_PREVIOUS": ("a" * 20, None)}, now=t0 + dt.timedelta(days=9))
    records = audit.read(env)
    assert [r.command for r in records] == ["rotate", "retire"]
    assert len(audit.read(env, only_this_file=False)) == 3
    last = audit.last_change(env, "NEXTAUTH_SECRET")
    assert last is not None and last.when == t0
    age = audit.previous_secret_age(env, "NEXTAUTH_SECRET", now=t0 + dt.timedelta(days=31))
    assert age == dt.timedelta(days=31)
    assert audit.previous_secret_age(str(tmp_path / ".env.staging"), "NEXTAUTH_SECRET") is None
    text = audit.format_text(records)
    assert "rotate .env: NEXTAUTH_SECRET" in text and "→-" in text
