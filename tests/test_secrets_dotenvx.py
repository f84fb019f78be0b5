"""dotenvx's encrypted env files: muzo_ops and the real @dotenvx/dotenvx read each other's.

Every test runs the npm package itself (tests/node), never a copy of its logic.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from muzo_ops.env import dotenvx
from muzo_ops.env.dotenvx import DecryptionError, KeyPair
from muzo_ops.env.envfile import format_line

NODE_DIR = Path(__file__).parent / "node"
DOTENVX = NODE_DIR / "node_modules" / ".bin" / "dotenvx"

# What a secret can hold, including what dotenvx would expand or run if it were not single-quoted.
SPECIAL = st.sampled_from([*list("#'\"$=\\ \t\n`{}:/@%!()"), "$(id)", "${HOME}", "$HOME", "é", "日本", "🙂"])
VALUES = st.lists(st.one_of(SPECIAL, st.text(min_size=1, max_size=4)), min_size=1, max_size=10).map("".join)
VALUES = VALUES.filter(lambda v: "\x00" not in v and "\r" not in v
                       and not any(0xD800 <= ord(c) < 0xE000 for c in v))


@pytest.fixture(scope="module", autouse=True)
def dotenvx_cli() -> None:
    if not DOTENVX.exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                       check=True, capture_output=True, timeout=300)


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no DOTENV_* keys leak in from the test runner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTENV_")}
    env.update(extra or {})
    return env


def dotenvx_cli_run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DOTENVX), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=node_env(env))


def dotenvx_get(folder: Path, filename: str, env: dict[str, str] | None = None) -> dict[str, str]:
    proc = dotenvx_cli_run("get", "-f", filename, "--strict", cwd=folder, env=env)
    assert proc.returncode == 0, proc.stderr[-800:]
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def write_encrypted(folder: Path, filename: str, values: dict[str, str], plain: dict[str, str] | None = None,
                    keypair: KeyPair | None = None, keys_file: bool = True) -> KeyPair:
    """An env file muzo_ops encrypted: ``values`` encrypted, ``plain`` left readable."""
    keypair = keypair or KeyPair.generate()
    text = "".join(format_line(k, v) for k, v in (plain or {}).items())
    text += "".join(f"{k}=placeholder\n" for k in values)
    path = folder / filename
    public_name, private_name = dotenvx.key_names(str(path))
    result = dotenvx.encrypt_text(text, str(path), lambda name: name in values, keypair.public_hex)
    # swap each placeholder for the real value, encrypted, so any character at all can be tested
    lines = [dotenvx.encrypted_line(k, keypair.public_hex, values[k]) if k in values else line
             for line in result.text.splitlines(keepends=True) for k in [line.split("=", 1)[0]]]
    path.write_text("".join(lines), encoding="utf-8", newline="")
    assert result.public_key_name == public_name
    if keys_file:
        dotenvx.set_private_key(dotenvx.keys_path(str(path)), private_name, keypair.private_hex, filename)
    return keypair


# ----- muzo_ops encrypts, dotenvx decrypts ----------------------------------------------------


def test_a_file_muzo_ops_encrypted_decrypts_with_dotenvx_get(tmp_path: Path) -> None:
    secrets = {"NEXTAUTH_SECRET": "n3xt-auth-secret-Value-0123456789abcdef",
               "DATABASE_URL": "mongodb://muzo_app:Pa%24s-w0rd@db.example.com:27017/muzo?tls=true"}
    plain = {"NODE_ENV": "production", "NEXTAUTH_URL": "https://muzo.example.com"}
    keypair = write_encrypted(tmp_path, ".env.production", secrets, plain)
    text = (tmp_path / ".env.production").read_text()
    assert text.startswith("#/-------------------[DOTENV_PUBLIC_KEY]--------------------/\n")
    assert f'DOTENV_PUBLIC_KEY_PRODUCTION="{keypair.public_hex}"' in text
    for value in secrets.values():
        assert value not in text
    assert "NODE_ENV=production" in text  # non-secret values stay readable
    keys = tmp_path / ".env.keys"
    assert keys.stat().st_mode & 0o777 == 0o600
    assert f"DOTENV_PRIVATE_KEY_PRODUCTION={keypair.private_hex}" in keys.read_text()

    got = dotenvx_get(tmp_path, ".env.production")
    assert {k: got[k] for k in [*secrets, *plain]} == {**secrets, **plain}
    # the same with the key in the environment and no .env.keys at all
    keys.unlink()
    got = dotenvx_get(tmp_path, ".env.production", {"DOTENV_PRIVATE_KEY_PRODUCTION": keypair.private_hex})
    assert {k: got[k] for k in secrets} == secrets


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(VALUES, min_size=1, max_size=12))
@example(values=["$(touch PWNED)", "`touch PWNED`", "$HOME", "${HOME}", "a'b\"c", "line1\nline2",
                 "back\\slash\\", "#hash", " pad ", "日本 🙂"])
def test_dotenvx_reads_back_every_value_and_never_expands_or_runs_it(
        tmp_path_factory: pytest.TempPathFactory, values: list[str]) -> None:
    folder = tmp_path_factory.mktemp("dx")
    wanted = {f"RT_{i}": v for i, v in enumerate(values)}
    write_encrypted(folder, ".env", wanted)
    got = dotenvx_get(folder, ".env")
    assert {k: got.get(k) for k in wanted} == wanted
    assert not (folder / "PWNED").exists()
    # python-dotenv (no key) reads each encrypted value as the literal `encrypted:` text
    text = (folder / ".env").read_text()
    assert all(dotenvx.is_encrypted(v) for k, v in dotenv_values(stream=io.StringIO(text)).items()
               if k.startswith("RT_"))


@pytest.mark.parametrize("filename", [".env", ".env.production", ".env.production.local", ".env.ci.test.extra",
                                      ".env1", ".ENV.Staging"])
def test_key_names_follow_dotenvx(tmp_path: Path, filename: str) -> None:
    (tmp_path / filename).write_text("HELLO=world\n")
    proc = dotenvx_cli_run("encrypt", "-f", filename, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    theirs = (tmp_path / filename).read_text()
    public_name, private_name = dotenvx.key_names(str(tmp_path / filename))
    found = dotenvx.file_public_key(theirs)
    assert found is not None and found[0] == public_name
    assert private_name in dotenvx.read_keys_file(str(tmp_path / ".env.keys"))
    # the header muzo_ops writes is dotenvx's own, line for line
    assert theirs.startswith(dotenvx.header(public_name, found[1], filename))
    # a name already in the file wins over the file name
    assert dotenvx.key_names(str(tmp_path / "other.env"), theirs) == (public_name, private_name)


# ----- dotenvx encrypts, muzo_ops decrypts ----------------------------------------------------


def test_a_file_dotenvx_encrypted_decrypts_with_muzo_ops(tmp_path: Path) -> None:
    plain = {"NEXTAUTH_SECRET": "s3cret-for-dotenvx-interop-0123456789", "STRIPE_SECRET_KEY": "sk_test_abc123",
             "NAME": "it's muzo", "MULTI": "line1\nline2", "EMPTY": ""}
    text = "# muzo\n" + "".join(format_line(k, v) for k, v in plain.items())
    path = tmp_path / ".env.production"
    path.write_text(text)
    proc = dotenvx_cli_run("encrypt", "-f", ".env.production", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # dotenvx set takes any string and encrypts it exactly
    proc = dotenvx_cli_run("set", "DOLLAR", "$(id) ${HOME} $x", "-f", ".env.production", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    encrypted = path.read_text()
    assert plain["NEXTAUTH_SECRET"] not in encrypted

    name, keys = dotenvx.private_keys_for(str(path), encrypted, environ={})
    assert name == "DOTENV_PRIVATE_KEY_PRODUCTION" and len(keys) == 1
    raw = dict(dotenv_values(stream=io.StringIO(encrypted)))
    values, undecrypted = dotenvx.decrypted_values({k: v or "" for k, v in raw.items()}, str(path),
                                                   encrypted, environ={})
    assert undecrypted == []
    assert {k: values[k] for k in plain} == plain
    assert values["DOLLAR"] == "$(id) ${HOME} $x"
    # the key from the environment wins over .env.keys, as in dotenvx
    other = KeyPair.generate()
    with pytest.raises(DecryptionError, match="wrong private key"):
        dotenvx.decrypted_values({k: v or "" for k, v in raw.items()}, str(path), encrypted,
                                 environ={"DOTENV_PRIVATE_KEY_PRODUCTION": other.private_hex})
    # without any key the values stay encrypted and are named as such
    (tmp_path / ".env.keys").unlink()
    values, undecrypted = dotenvx.decrypted_values({k: v or "" for k, v in raw.items()}, str(path),
                                                   encrypted, environ={})
    assert set(undecrypted) == {*plain, "DOLLAR"}  # dotenvx encrypts empty values too


def test_decrypt_text_writes_what_every_loader_reads_back(tmp_path: Path) -> None:
    secrets = {"NEXTAUTH_SECRET": "abc'def\"ghi", "OPENAI_API_KEY": "sk-proj-1234 5678", "M": "a\nb"}
    keypair = write_encrypted(tmp_path, ".env", secrets, {"NODE_ENV": "production"})
    encrypted = (tmp_path / ".env").read_text()
    result = dotenvx.decrypt_text(encrypted, str(tmp_path / ".env"), [keypair.private_hex])
    assert sorted(result.names) == sorted(secrets)
    assert {k: v for k, v in dotenv_values(stream=io.StringIO(result.text)).items() if k in secrets} == secrets
    (tmp_path / ".env").write_text(result.text)
    got = dotenvx_get(tmp_path, ".env")
    assert {k: got[k] for k in secrets} == secrets
    # and encrypting again reuses the header's key
    again = dotenvx.encrypt_text(result.text, str(tmp_path / ".env"), lambda n: n in secrets)
    assert again.text.count("DOTENV_PUBLIC_KEY=") == 1
    assert dotenvx.decrypt_text(again.text, ".env", [keypair.private_hex]).text == result.text


def test_reencrypt_moves_every_value_to_a_new_key(tmp_path: Path) -> None:
    secrets = {"NEXTAUTH_SECRET": "rekey-me-0123456789abcdefghij", "SMTP": "p@ss"}
    old = write_encrypted(tmp_path, ".env.staging", secrets, {"A": "1"})
    new = KeyPair.generate()
    text = (tmp_path / ".env.staging").read_text()
    result = dotenvx.reencrypt_text(text, ".env.staging", [old.private_hex], new.public_hex)
    assert sorted(result.names) == sorted(secrets)
    assert old.public_hex not in result.text and new.public_hex in result.text
    (tmp_path / ".env.staging").write_text(result.text)
    dotenvx.set_private_key(str(tmp_path / ".env.keys"), "DOTENV_PRIVATE_KEY_STAGING", new.private_hex, "x")
    assert old.private_hex not in (tmp_path / ".env.keys").read_text()
    got = dotenvx_get(tmp_path, ".env.staging")
    assert {k: got[k] for k in secrets} == secrets


# ----- bad keys and bad values: one line naming the variable ---------------------------------


def _one_encrypted(tmp_path: Path) -> tuple[str, KeyPair]:
    keypair = write_encrypted(tmp_path, ".env", {"NEXTAUTH_SECRET": "the-known-secret-value-xyz-0123456789"})
    return (tmp_path / ".env").read_text(), keypair


def _assert_clean(message: str, *hidden: str) -> None:
    assert "\n" not in message
    assert "NEXTAUTH_SECRET" in message
    for value in ("the-known-secret-value-xyz-0123456789", *hidden):
        assert value not in message


def test_wrong_key_names_the_variable(tmp_path: Path) -> None:
    text, keypair = _one_encrypted(tmp_path)
    other = KeyPair.generate()
    with pytest.raises(DecryptionError) as info:
        dotenvx.decrypt_text(text, ".env", [other.private_hex])
    assert "wrong private key" in str(info.value)
    _assert_clean(str(info.value), other.private_hex, keypair.private_hex)
    # dotenvx refuses it too
    (tmp_path / ".env.keys").unlink()
    proc = dotenvx_cli_run("get", "NEXTAUTH_SECRET", "-f", ".env", "--strict", cwd=tmp_path,
                           env={"DOTENV_PRIVATE_KEY": other.private_hex})
    assert proc.returncode != 0


def test_tampered_value_names_the_variable(tmp_path: Path) -> None:
    text, keypair = _one_encrypted(tmp_path)
    start = text.index("encrypted:") + len("encrypted:") + 120
    flipped = text[:start] + ("A" if text[start] != "A" else "B") + text[start + 1:]
    with pytest.raises(DecryptionError) as info:
        dotenvx.decrypt_text(flipped, ".env", [keypair.private_hex])
    assert "altered" in str(info.value) and "line" in str(info.value)
    _assert_clean(str(info.value), keypair.private_hex)


@pytest.mark.parametrize("keep", [0, 10, 60, 128])
def test_truncated_value_names_the_variable(tmp_path: Path, keep: int) -> None:
    text, keypair = _one_encrypted(tmp_path)
    start = text.index("encrypted:") + len("encrypted:")
    end = text.index("'", start)
    cut = text[:start + keep] + text[end:]
    with pytest.raises(DecryptionError) as info:
        dotenvx.decrypt_text(cut, ".env", [keypair.private_hex])
    assert "truncated" in str(info.value) or "altered" in str(info.value)
    _assert_clean(str(info.value), keypair.private_hex)


@pytest.mark.parametrize("key", ["", "xyz", "00" * 32, "ff" * 32])
def test_missing_or_invalid_key_names_the_variable(tmp_path: Path, key: str) -> None:
    text, _keypair = _one_encrypted(tmp_path)
    with pytest.raises(DecryptionError) as info:
        dotenvx.decrypt_text(text, ".env", [key] if key else [])
    _assert_clean(str(info.value), key or "-")


def test_encrypting_for_another_key_than_the_header_is_refused(tmp_path: Path) -> None:
    text, _keypair = _one_encrypted(tmp_path)
    with pytest.raises(dotenvx.DotenvxError, match="another key"):
        dotenvx.encrypt_text(text, ".env", lambda n: True, KeyPair.generate().public_hex)


def test_keypair_repr_hides_the_private_key() -> None:
    keypair = KeyPair.generate()
    assert keypair.private_hex not in repr(keypair)
    assert KeyPair.from_private(keypair.private_hex) == keypair


def test_keys_file_outside_gitignore_is_reported(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    env_path = str(tmp_path / ".env")
    warning = dotenvx.keys_file_committable(env_path)
    assert warning is not None and ".gitignore" in warning
    (tmp_path / ".gitignore").write_text(".env.keys\n")
    assert dotenvx.keys_file_committable(env_path) is None


# ----- plain values muzo_ops writes, read by dotenvx (the third loader) -------------------------

PLAIN_VALUES = ["plain", "a#b", "it's", 'say "hi"', "a$", "$", "$$", " pad ", "line1\nline2", "`tick`",
                "back\\slash", "x = y", "日本 🙂", "{}", "a\\nb"]


def test_plain_values_muzo_ops_writes_read_back_in_dotenvx(tmp_path: Path) -> None:
    wanted = {f"RT_{i}": v for i, v in enumerate(PLAIN_VALUES)}
    (tmp_path / ".env").write_text("".join(format_line(k, v) for k, v in wanted.items()))
    got = dotenvx_get(tmp_path, ".env")
    assert {k: got.get(k) for k in wanted} == wanted


@pytest.mark.parametrize("value", ["$(touch PWNED)", "a$(touch PWNED)b"])
def test_dotenvx_never_runs_a_plain_value_muzo_ops_wrote(tmp_path: Path, value: str) -> None:
    (tmp_path / ".env").write_text(format_line("RT", value))
    got = dotenvx_get(tmp_path, ".env")
    assert not (tmp_path / "PWNED").exists()
    assert got["RT"] == value


def test_decrypting_a_command_substitution_keeps_it_literal(tmp_path: Path) -> None:
    keypair = write_encrypted(tmp_path, ".env", {"RUN": "$(touch PWNED)", "BOTH": "it's $(touch PWNED)"})
    text = (tmp_path / ".env").read_text()
    from muzo_ops.errors import UnrepresentableValueError

    with pytest.raises(UnrepresentableValueError, match="BOTH: the value has `\\$\\(`"):
        dotenvx.decrypt_text(text, ".env", [keypair.private_hex])
    keypair = write_encrypted(tmp_path, ".env", {"RUN": "$(touch PWNED)"}, keypair=keypair)
    plain = dotenvx.decrypt_text((tmp_path / ".env").read_text(), ".env", [keypair.private_hex])
    assert "RUN='$(touch PWNED)'\n" in plain.text
    (tmp_path / ".env").write_text(plain.text)
    assert dotenvx_get(tmp_path, ".env")["RUN"] == "$(touch PWNED)"
    assert dict(dotenv_values(stream=io.StringIO(plain.text)))["RUN"] == "$(touch PWNED)"
    assert not (tmp_path / "PWNED").exists()


# ----- issue 15, item 14: .env.keys shared by the env files of one folder ------------------------------

ENCRYPT_RACER = """
import os, sys, time
from muzo_ops.secrets import encryption
path, go = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
encryption.encrypt_file(path, environ={}, lock_timeout_s=60)
"""


def test_concurrent_encrypts_of_one_folder_keep_every_private_key(tmp_path: Path) -> None:
    """Invariant: after any number of concurrent encrypts, .env.keys opens every file (no key lost)."""
    import sys

    names = ["staging", "production", "preview", "ci", "test", "demo"]
    for round_ in range(4):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        for name in names:
            (folder / f".env.{name}").write_text(format_line("STRIPE_SECRET_KEY", f"sk_live_{name}_0000000001"))
        go = folder / "go"
        procs = [subprocess.Popen([sys.executable, "-c", ENCRYPT_RACER, str(folder / f".env.{name}"), str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        for proc in procs:
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        assert (folder / ".env.keys").stat().st_mode & 0o777 == 0o600
        for name in names:
            path = folder / f".env.{name}"
            text = path.read_text()
            _private_name, keys = dotenvx.private_keys_for(str(path), text, environ={})
            assert keys, f"round {round_}: the private key of .env.{name} was lost"
            plain = dotenvx.decrypt_text(text, str(path), keys)
            assert dotenv_values(stream=io.StringIO(plain.text))["STRIPE_SECRET_KEY"] == f"sk_live_{name}_0000000001"
