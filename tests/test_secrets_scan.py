"""The leak scan finds planted secrets in tracked files and history, and nothing in placeholders."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from muzo_ops.env import dotenvx
from muzo_ops.secrets import scan
from tests.envdata import FULL, MONGO_PASSWORD, SECRETS
from tests.helpers import ROOT, assert_no_secret, run_cli

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


# --- issue 15 item 20: the scan as a CI gate -------------------------------------------------

LEAK = f"DATABASE_URL=mongodb://muzo_app:{MONGO_PASSWORD}@db.internal/muzo\n"


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def history_only(repo: Path, values: dict[str, str] | None = None) -> set[tuple[str | None, str, int, str]]:
    """Findings of the history scan, once the work tree holds none."""
    assert scan.scan(str(repo), values or {}) == []
    findings = scan.scan(str(repo), values or {}, history=True)
    assert_masked(findings)
    return {(f.commit, f.path, f.line, f.what) for f in findings}


def test_history_finds_a_secret_under_a_file_name_git_quotes(repo: Path) -> None:
    folder = repo / "données"
    folder.mkdir()
    (folder / "déploiement prod.md").write_text("# notes\n" + LEAK)
    leak_commit = commit_all(repo, "notes")
    (folder / "déploiement prod.md").unlink()
    commit_all(repo, "remove")
    assert history_only(repo) == {(leak_commit, "données/déploiement prod.md", 2, "mongodb-url-password")}
    assert history_only(repo, FULL) == {(leak_commit, "données/déploiement prod.md", 2, "DATABASE_URL password")}


def test_history_finds_a_secret_introduced_only_by_a_merge_resolution(repo: Path) -> None:
    (repo / "config.txt").write_text("url = TODO\n")
    commit_all(repo, "config")
    git(repo, "checkout", "-q", "-b", "topic")
    (repo / "config.txt").write_text("url = mongodb://db.internal/muzo\n")
    commit_all(repo, "topic url")
    git(repo, "checkout", "-q", "main")
    (repo / "config.txt").write_text("url = mongodb://db.example/muzo\n")
    commit_all(repo, "main url")
    subprocess.run(["git", "-C", str(repo), "merge", "-q", "topic"], capture_output=True)  # conflicts
    (repo / "config.txt").write_text("# resolved\n" + LEAK)  # the resolution is the only place it ever was
    merge_commit = commit_all(repo, "merge topic")
    assert len(git(repo, "rev-list", "--parents", "-n1", "HEAD").split()) == 3
    (repo / "config.txt").write_text("url = mongodb://db.internal/muzo\n")
    commit_all(repo, "fix")
    assert history_only(repo) == {(merge_commit, "config.txt", 2, "mongodb-url-password")}


ENCODINGS = {
    "utf-16 with a BOM": lambda text: text.encode("utf-16"),
    "utf-16-le without a BOM": lambda text: text.encode("utf-16-le"),
    "utf-16-be without a BOM": lambda text: text.encode("utf-16-be"),
    "utf-8 with a NUL early on": lambda text: b"\0muzo export\0" + text.encode(),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_utf16_files_and_files_with_an_early_nul_are_searched(repo: Path, encoding: str) -> None:
    text = "# exported settings\r\n" + LEAK.replace("\n", "\r\n") + "STRIPE=" + FULL["STRIPE_SECRET_KEY"]
    data = ENCODINGS[encoding](text)
    (repo / "settings.reg").write_bytes(data)
    git(repo, "add", "settings.reg")
    found = {(f.path, f.line, f.what) for f in scan.scan(str(repo), FULL)}
    assert found == {("settings.reg", 2, "DATABASE_URL password"), ("settings.reg", 3, "STRIPE_SECRET_KEY")}
    leak_commit = commit_all(repo, "settings")
    (repo / "settings.reg").unlink()
    commit_all(repo, "remove")
    assert history_only(repo) == {(leak_commit, "settings.reg", 2, "mongodb-url-password"),
                                  (leak_commit, "settings.reg", 3, "stripe-live-secret-key")}


def test_a_binary_file_is_still_not_searched(repo: Path) -> None:
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xfe\x80" + LEAK.encode() + bytes(range(256)))
    git(repo, "add", "logo.png")
    assert scan.scan(str(repo), {}) == []


def kubernetes_secret(env_text: str, url: str) -> str:
    b64 = base64.b64encode
    return ("apiVersion: v1\nkind: Secret\nmetadata:\n  name: muzo-env\ntype: Opaque\ndata:\n"
            f"  .env: {b64(env_text.encode()).decode()}\n"
            f"  DATABASE_URL: {b64(url.encode()).decode()}\n")


def test_base64_of_a_whole_env_file_is_decoded_and_searched(repo: Path) -> None:
    env_text = "".join(f"{k}={v}\n" for k, v in FULL.items())
    (repo / "k8s").mkdir()
    (repo / "k8s" / "secret.yaml").write_text(kubernetes_secret(env_text, FULL["DATABASE_URL"]))
    # `base64 .env > env.b64` wraps at 76 columns
    wrapped = base64.encodebytes(("# production\n" + env_text).encode()).decode()
    (repo / "k8s" / "env.b64").write_text(wrapped)
    git(repo, "add", "k8s")
    shapes = {(f.path, f.line, f.what) for f in scan.scan(str(repo), {})}
    assert {("k8s/secret.yaml", 7, "mongodb-url-password (in base64)"),
            ("k8s/secret.yaml", 7, "stripe-live-secret-key (in base64)"),
            ("k8s/secret.yaml", 7, "aws-access-key-id (in base64)"),
            ("k8s/secret.yaml", 8, "mongodb-url-password (in base64)"),
            ("k8s/env.b64", 1, "mongodb-url-password (in base64)"),
            ("k8s/env.b64", 1, "stripe-live-secret-key (in base64)")} <= shapes
    values = {(f.path, f.line, f.what) for f in scan.scan(str(repo), FULL)}
    assert {("k8s/secret.yaml", 7, "NEXTAUTH_SECRET (in base64)"),
            ("k8s/secret.yaml", 7, "EMAIL_SERVER_PASSWORD (in base64)"),
            ("k8s/secret.yaml", 8, "DATABASE_URL password (in base64)"),
            ("k8s/env.b64", 1, "NEXTAUTH_SECRET (in base64)")} <= values
    assert_masked(scan.scan(str(repo), FULL))


def test_basic_authorization_and_curl_user_passwords_are_found(repo: Path) -> None:
    password = FULL["EMAIL_SERVER_PASSWORD"]
    basic = base64.b64encode(f"apikey-user-77:{password}".encode()).decode()
    lines = [
        f"curl -H 'Authorization: Basic {basic}' https://api.example.com",
        f'headers = {{"Authorization": "Basic {basic}"}}',
        f"curl -sS -u apikey-user-77:{password} https://api.example.com/v1",
        f"curl --user=apikey-user-77:{password} https://api.example.com/v1",
        # not findings: placeholders and prompts
        "curl -u \"$SMTP_USER:$SMTP_PASSWORD\" https://api.example.com",
        "curl -u apikey-user-77 https://api.example.com",
        f"Authorization: Basic {base64.b64encode(b'user:password').decode()}",
        f"Authorization: Basic {base64.b64encode(b'user:<password>').decode()}",
    ]
    (repo / "api.md").write_text("\n".join(lines) + "\n")
    git(repo, "add", "api.md")
    findings = scan.scan(str(repo), {})
    assert {(f.line, f.what) for f in findings} == {
        (1, "basic-auth-password"), (2, "basic-auth-password"), (3, "curl-user-password"), (4, "curl-user-password")}
    assert len({f.fingerprint for f in findings if f.what == "basic-auth-password"}) == 1
    assert_masked(findings)
    # with the env file, the variable is named (once per line)
    named = {(f.line, f.what) for f in scan.scan(str(repo), FULL)}
    line_1 = {what for line, what in named if line == 1}
    assert len(line_1) == 1 and line_1 <= {"EMAIL_SERVER_PASSWORD base64", "EMAIL_SERVER_PASSWORD (in base64)"}
    assert {what for line, what in named if line == 3} == {"EMAIL_SERVER_PASSWORD"}


def cli(*args: str, code: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = run_cli("secrets", "scan", *args, cwd=cwd)
    assert proc.returncode == code, (proc.returncode, proc.stdout[-1500:], proc.stderr[-800:])
    assert "Traceback" not in proc.stderr
    return proc


def every_form(secrets: list[str]) -> list[str]:
    """The values, and the encoded forms the scan looks for."""
    forms = []
    for secret in secrets:
        raw = secret.encode()
        forms += [secret, quote(secret, safe=""), base64.b64encode(raw).decode().rstrip("="),
                  base64.urlsafe_b64encode(raw).decode().rstrip("=")]
    return forms


def test_a_baseline_accepts_findings_by_fingerprint_and_the_gate_fails_on_new_ones(repo: Path, tmp_path_factory:
                                                                                  pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")  # no ./.env: shapes only
    fixture = OLD_DOC + f"STRIPE_SECRET_KEY={FULL['STRIPE_SECRET_KEY']}\n"
    (repo / "tests").mkdir()
    (repo / "tests" / "fixtures.md").write_text(fixture)
    commit_all(repo, "fixtures")
    outputs = [cli(str(repo), code=1, cwd=elsewhere)]
    assert "2 findings" in outputs[-1].stdout
    baseline = repo / ".secrets-baseline.json"
    outputs.append(cli(str(repo), "--history", "--update-baseline", str(baseline), code=0, cwd=elsewhere))
    assert f"Wrote {baseline}: 2 fingerprints" in outputs[-1].stdout
    text = baseline.read_text()
    assert_no_secret(text, every_form([*SECRETS, FULL["DATABASE_URL"], MONGO_PASSWORD]))
    assert oct(baseline.stat().st_mode & 0o777) == "0o644"
    entries = json.loads(text)["findings"]
    assert {(e["path"], e["line"], e["what"]) for e in entries} == {
        ("tests/fixtures.md", 7, "mongodb-url-password"), ("tests/fixtures.md", 9, "stripe-live-secret-key")}
    # accepted: nothing new, exit 0, the accepted ones counted
    outputs.append(cli(str(repo), "--baseline", str(baseline), "--format", "json", code=0, cwd=elsewhere))
    report = json.loads(outputs[-1].stdout)
    assert report["findings"] == [] and len(report["accepted"]) == 2 and report["stale"] == 0
    assert set(report) == {"findings", "accepted", "baseline", "stale", "written", "note"}
    # a moved fixture (another file, another line, history too) stays accepted
    (repo / "tests" / "fixtures.md").unlink()
    (repo / "tests" / "moved").mkdir()
    (repo / "tests" / "moved" / "data.md").write_text("\n\n\n" + fixture)
    commit_all(repo, "move the fixtures")
    outputs.append(cli(str(repo), "--history", "--baseline", str(baseline), code=0, cwd=elsewhere))
    assert "0 new findings (" in outputs[-1].stdout
    # a new secret fails the gate, and only it is reported
    (repo / "tests" / "moved" / "data.md").write_text("\n\n\n" + fixture + f"aws = {FULL['S3_ACCESS_KEY_ID']}\n")
    outputs.append(cli(str(repo), "--baseline", str(baseline), "--format", "json", code=1, cwd=elsewhere))
    report = json.loads(outputs[-1].stdout)
    assert [(f["path"], f["line"], f["what"]) for f in report["findings"]] == [
        ("tests/moved/data.md", 13, "aws-access-key-id")]
    assert len(report["accepted"]) == 2
    outputs.append(cli(str(repo), "--baseline", str(baseline), code=1, cwd=elsewhere))
    assert "1 new finding (2 accepted by" in outputs[-1].stdout
    # another value of an accepted rule is not accepted: identity is the rule and the value
    (repo / "tests" / "moved" / "data.md").write_text(fixture.replace(MONGO_PASSWORD, "An0ther-Real-Pass-9"))
    report = json.loads(cli(str(repo), "--baseline", str(baseline), "--format", "json", code=1, cwd=elsewhere).stdout)
    assert [f["what"] for f in report["findings"]] == ["mongodb-url-password"] and report["stale"] == 1
    for proc in outputs:
        assert_no_secret(proc.stdout + proc.stderr, every_form([*SECRETS, MONGO_PASSWORD]))


@pytest.mark.parametrize("content", [None, "{not json", '{"version": 1}', '{"version": 1, "findings": [{}]}',
                                     '{"version": 7, "findings": []}'])
def test_an_unusable_baseline_is_one_error_line(repo: Path, content: str | None) -> None:
    baseline = repo / "baseline.json"
    if content is not None:
        baseline.write_text(content)
    proc = cli(str(repo), "--baseline", str(baseline), code=2, cwd=repo)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: baseline {baseline}: "), proc.stderr
    assert "--update-baseline" in lines[0]


def test_update_baseline_killed_at_any_moment_leaves_the_old_or_the_new_file(repo: Path) -> None:
    """Invariant: the baseline on disk is always complete, the old one or the new one."""
    (repo / "fixture.md").write_text(OLD_DOC)
    git(repo, "add", "fixture.md")
    baseline = repo / ".secrets-baseline.json"
    cli(str(repo), "--update-baseline", str(baseline), code=0, cwd=repo)
    old = baseline.read_text()
    (repo / "fixture.md").write_text(OLD_DOC + f"key: {FULL['STRIPE_SECRET_KEY']}\n")
    started = time.monotonic()
    cli(str(repo), "--update-baseline", str(baseline), code=0, cwd=repo)
    duration = time.monotonic() - started
    new = baseline.read_text()
    assert old != new
    for attempt in range(8):
        baseline.write_text(old)
        proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "secrets", "scan", str(repo), "--update-baseline",
                                 str(baseline)], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(duration * (0.5 + attempt / 8))  # around the end, where the write happens
        with contextlib.suppress(ProcessLookupError):  # (it may have finished: then the file is the new one)
            os.killpg(proc.pid, signal.SIGKILL)  # the scan and its git processes
        proc.wait()
        assert baseline.read_text() in (old, new)
    assert json.loads(new)["findings"]


REPO_BASELINE = ROOT / ".secrets-baseline.json"
RESCAN = "muzo-ops secrets scan --history --update-baseline .secrets-baseline.json"


def assert_gate_passed(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"a real leak, or accept a fixture: {RESCAN}\n{proc.stdout}{proc.stderr}"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_this_repository_passes_its_own_gate_in_the_work_tree(tmp_path: Path) -> None:
    """The tracked files as they are now: every finding is a test fixture the baseline accepts."""
    proc = run_cli("secrets", "scan", str(ROOT), "--baseline", str(REPO_BASELINE), cwd=tmp_path)
    assert_gate_passed(proc)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_this_repository_passes_its_own_gate_over_the_history_of_head(tmp_path: Path) -> None:
    """HEAD's history only, fetched into an empty repository: other branches and local refs do not count."""
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "fetch", "-q", "--no-tags", str(ROOT), "HEAD")
    git(tmp_path, "update-ref", "refs/heads/main", "FETCH_HEAD")
    git(tmp_path, "reset", "-q", "--hard", "main")
    proc = run_cli("secrets", "scan", str(tmp_path), "--history", "--baseline", str(REPO_BASELINE), cwd=tmp_path)
    assert_gate_passed(proc)


def test_a_wrapped_base64_env_file_reports_each_secret_once() -> None:
    env_text = "".join(f"{k}={v}\n" for k, v in FULL.items())
    lines = base64.encodebytes(env_text.encode()).decode().split()
    wrapped = "data: |\n" + "".join(f"  {line}\n" for line in lines)
    findings = scan.scan_text(wrapped, "secret.yaml", scan.needles(FULL))
    decoded = [f for f in findings if f.what.endswith(" (in base64)")]  # the block, decoded as a whole
    assert {f.line for f in decoded} == {2}
    assert len({f.fingerprint for f in decoded}) == len(decoded)  # not once more per line of the block
    assert {"STRIPE_SECRET_KEY (in base64)", "NEXTAUTH_SECRET (in base64)", "DATABASE_URL password (in base64)",
            "RUNPOD_API_KEY (in base64)"} <= {f.what for f in decoded}
    assert_masked(findings)


def test_history_of_a_large_file_is_searched_around_each_change(repo: Path) -> None:
    """A large version is searched around what it changed: line numbers, and multi-line secrets, stay right."""
    filler = [f"row {i}: {'lorem ipsum ' * 4}" for i in range(3000)]
    assert len("\n".join(filler)) > scan.WHOLE_FILE_CHARS

    def key_block(seed: int) -> list[str]:
        body = base64.b64encode(bytes((seed * 7 + i) % 256 for i in range(600))).decode()
        kind = "RSA PRIVATE" + " KEY"  # not a fixture the repository's own scan would find
        return [f"-----BEGIN {kind}-----", *(body[i:i + 64] for i in range(0, len(body), 64)), f"-----END {kind}-----"]

    big = repo / "big.txt"
    big.write_text("\n".join(filler[:1000] + key_block(1) + filler[1000:]) + "\n")
    first = commit_all(repo, "big file with a key")
    lines = filler[:1000] + key_block(2) + filler[1000:]
    lines[2500] = LEAK.strip()
    big.write_text("\n".join(lines) + "\n")
    second = commit_all(repo, "another key, and a URL")
    big.write_text("\n".join(filler) + "\n")
    commit_all(repo, "clean")
    found = history_only(repo)
    assert {(c, p, line, w) for c, p, line, w in found} == {
        (first, "big.txt", 1001, "private-key-block"), (second, "big.txt", 1001, "private-key-block"),
        (second, "big.txt", 2501, "mongodb-url-password")}
