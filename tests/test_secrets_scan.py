"""The leak scan finds planted secrets in tracked files and history, and nothing in placeholders."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from muzo_ops.env import dotenvx
from muzo_ops.secrets import scan
from tests.envdata import FULL, MONGO_PASSWORD, SECRETS

# How the old repository had it: a full Atlas connection string pasted into a deployment doc.
OLD_DOC = f"""# Deploying muzo

1. Create the database user on Atlas.
2. Set the connection string in Vercel:

```
DATABASE_URL="mongodb+srv://muzo_app:{MONGO_PASSWORD}@cluster0.ab1cd.mongodb.net/muzo?retryWrites=true&w=majority"
```
"""


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
                               "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(repo)})
    return proc.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "README.md").write_text("# muzo\n\nSet DATABASE_URL=mongodb://USER:PASSWORD@HOST/muzo\n")
    git(tmp_path, "add", "README.md")
    git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


def assert_masked(findings: list[scan.Finding]) -> None:
    text = repr(findings) + "".join(str(f.to_json()) for f in findings)
    for secret in [*SECRETS, FULL["DATABASE_URL"]]:
        assert secret not in text


def test_a_password_planted_in_a_doc_is_found(repo: Path) -> None:
    (repo / "docs").mkdir()
    (repo / "docs" / "DEPLOY.md").write_text(OLD_DOC)
    git(repo, "add", "docs/DEPLOY.md")
    git(repo, "commit", "-q", "-m", "docs")
    findings = scan.scan(str(repo), FULL)
    where = {(f.path, f.line, f.what) for f in findings}
    assert ("docs/DEPLOY.md", 7, "DATABASE_URL password") in where  # the env file's own value
    assert ("docs/DEPLOY.md", 7, "mongodb-url-password") not in where  # same secret, reported once
    assert all(f.path == "docs/DEPLOY.md" for f in findings)  # README's placeholders are not findings
    assert_masked(findings)
    # without the env file, the shape alone finds it
    shapes = scan.scan(str(repo), {})
    assert [(f.path, f.line, f.what, f.masked) for f in shapes] == [
        ("docs/DEPLOY.md", 7, "mongodb-url-password", "***" + MONGO_PASSWORD[-4:])]


def test_encoded_values_and_credential_shapes_are_found(repo: Path) -> None:
    nextauth = FULL["NEXTAUTH_SECRET"]
    smtp = FULL["EMAIL_SERVER_PASSWORD"]
    lines = [
        f"curl -H 'Authorization: Basic {base64.b64encode(smtp.encode()).decode()}'",
        f"redirect=/cb?secret={quote(nextauth + '/+', safe='')}",
        "STRIPE=sk_live_51HabcdefghijKLMNOP0123",
        "restricted rk_live_51Habcdefghij0123",
        "whsec_abcdefghijklmnop0123456789",
        "aws_access_key_id = AKIAQWERTYUIOPASDFGH",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "DOTENV_PRIVATE_KEY_PRODUCTION=" + "ab" * 32,
    ]
    (repo / "notes.txt").write_text("\n".join(lines) + "\n")
    git(repo, "add", "notes.txt")
    values = {**FULL, "NEXTAUTH_SECRET": nextauth + "/+"}
    found = {(f.line, f.what) for f in scan.scan(str(repo), values)}
    assert found == {
        (1, "EMAIL_SERVER_PASSWORD base64"), (2, "NEXTAUTH_SECRET percent-encoded"),
        (3, "stripe-live-secret-key"), (4, "stripe-live-restricted-key"), (5, "stripe-webhook-secret"),
        (6, "aws-access-key-id"), (7, "private-key-block"), (8, "dotenvx-private-key"),
    }


def test_placeholders_and_encrypted_values_are_not_findings(repo: Path) -> None:
    from muzo_ops.env import render

    (repo / ".env.example").write_text(render.render_committed(".env.example"))
    keypair = dotenvx.KeyPair.generate()
    plain = "".join(f"{k}='{v}'\n" for k, v in FULL.items() if "'" not in v)
    sensitive = {k for k in FULL if k not in ("NODE_ENV", "LOG_LEVEL")}
    encrypted = dotenvx.encrypt_text(plain, ".env.production", lambda n: n in sensitive, keypair.public_hex)
    (repo / ".env.production").write_text(encrypted.text)
    (repo / "docs.md").write_text("mongodb+srv://<user>:<password>@cluster0.mongodb.net\n"
                                  "mongodb://${MONGO_USER}:${MONGO_PASSWORD}@db/muzo\n"
                                  "sk_live_your_stripe_secret_key_here\n")
    git(repo, "add", ".env.example", ".env.production", "docs.md")
    assert scan.scan(str(repo), FULL) == []
    # the same file committed in plain text is a leak of every sensitive value
    (repo / ".env.production").write_text(plain)
    leaked = {f.what for f in scan.scan(str(repo), FULL)}
    assert {"NEXTAUTH_SECRET", "STRIPE_SECRET_KEY", "DATABASE_URL password", "REDIS_URL password"} <= leaked


def test_history_finds_a_secret_deleted_since(repo: Path) -> None:
    (repo / "docs").mkdir()
    (repo / "docs" / "DEPLOY.md").write_text(OLD_DOC)
    git(repo, "add", "docs/DEPLOY.md")
    git(repo, "commit", "-q", "-m", "docs with the password")
    leak_commit = git(repo, "rev-parse", "HEAD").strip()
    (repo / "docs" / "DEPLOY.md").write_text(OLD_DOC.replace(MONGO_PASSWORD, "<password>"))
    git(repo, "commit", "-q", "-am", "remove the password")
    assert scan.scan(str(repo), FULL) == []
    findings = scan.scan(str(repo), FULL, history=True)
    assert {(f.commit, f.path, f.line, f.what) for f in findings} == {
        (leak_commit, "docs/DEPLOY.md", 7, "DATABASE_URL password")}
    assert findings[0].where == f"{leak_commit[:12]}:docs/DEPLOY.md:7"
    assert_masked(findings)


def test_outside_a_git_work_tree_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(scan.ScanError, match="git work tree"):
        scan.scan(str(tmp_path), FULL)


@pytest.mark.parametrize("line", [
    'url = f"mongodb://muzo_app:{password}@db.internal/muzo"',
    "MONGO=mongodb://root:%(pw)s@localhost/admin",
    "MUZO_MONGO_ADMIN_URI='mongodb://admin:…@db.internal/admin?tls=true'",
    "mongodb://db.internal:27017/muzo?tls=true&appName=ops@muzo",
    "mongodb+srv://cluster0.ab1cd.mongodb.net/muzo?authSource=admin",
])
def test_templates_and_urls_without_a_password_are_not_findings(line: str) -> None:
    assert scan.scan_text(line, "doc.md", []) == []


def test_a_real_looking_url_password_is_found_and_masked() -> None:
    (finding,) = scan.scan_text("mongodb://muzo_app:hunter2-secret@db.example.com/muzo", "doc.md", [])
    assert (finding.what, finding.line, finding.masked) == ("mongodb-url-password", 1, "***")
    assert "hunter2" not in repr(finding)
