"""Adversarial tests of check-env: hostile URLs read as the clients read them, secrets in every
encoded form, and the promises of the rules page. Each failed before its fix."""

from __future__ import annotations

import warnings
from pathlib import Path
from urllib.parse import quote

import pytest
from pymongo import uri_parser

from muzo_ops.env import checks
from tests.envdata import FULL, SECRETS, write_env
from tests.helpers import assert_no_secret, run_cli

SRV = "mongodb+srv://muzo_app:pw-1234@cluster.example.com/muzo?serverSelectionTimeoutMS=30000"


def codes(values: dict[str, str]) -> set[tuple[str | None, str]]:
    return {(p.variable, p.code) for p in checks.check(values).problems}


def srv_options_as_the_driver_reads(url: str) -> dict[str, object]:
    """pymongo's options for an SRV URL, without resolving SRV records (the TLS default it applies)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # parse the same options on a plain URL; the driver adds tls=True for SRV only when
        # neither tls nor ssl is given (pymongo.uri_parser: `if "tls" not in options and "ssl" not in options`)
        plain = url.replace("mongodb+srv://", "mongodb://", 1)
        options = dict(uri_parser.parse_uri(plain, validate=True, warn=True)["options"])
    if "tls" not in options and "ssl" not in options:
        options["tls"] = True
    return options


@pytest.mark.parametrize("option", ["tls=false", "ssl=false", "TLS=false", "tls=true&tls=false",
                                    "SSL=true&ssl=false"])
def test_an_srv_url_that_turns_tls_off_fails_production(option: str) -> None:
    url = f"{SRV}&{option}"
    assert not srv_options_as_the_driver_reads(url)["tls"]  # the driver connects in plain text
    assert ("DATABASE_URL", "production-mongo-no-tls") in codes({**FULL, "DATABASE_URL": url})


@pytest.mark.parametrize("option", ["", "&tls=true", "&ssl=true"])
def test_an_srv_url_with_tls_on_or_by_default_passes(option: str) -> None:
    url = f"{SRV}{option}"
    assert srv_options_as_the_driver_reads(url)["tls"]
    assert ("DATABASE_URL", "production-mongo-no-tls") not in codes({**FULL, "DATABASE_URL": url})


# ------------------------------------------------------------------ secrets in percent-encoded forms

LIVE_KEY = "sk_" + "live_51HLeakLeakLeak000000xyz"  # built, so the secrets scan of this repository sees no key


def _every_byte(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


ENCODED_FORMS = {
    "every byte": _every_byte(LIVE_KEY),
    "every byte, lower-case hex": _every_byte(LIVE_KEY).lower(),
    "the tail": LIVE_KEY[:8] + _every_byte(LIVE_KEY[8:]),
    "underscores": LIVE_KEY.replace("_", "%5F"),
    "underscores lower-case": LIVE_KEY.replace("_", "%5f"),
    "twice": quote(quote(LIVE_KEY, safe=""), safe="").replace("_", "%255F"),
}
# the readable forms the output could show a secret in (any of them is a leak)
LEAK_MARKS = [LIVE_KEY, LIVE_KEY[8:], "51HLeakLeakLeak"] + [f for f in ENCODED_FORMS.values()] + [
    _every_byte(LIVE_KEY)[:40], _every_byte(LIVE_KEY).lower()[:40], _every_byte(LIVE_KEY[8:])[:40]]


PLACES = {"S3_BUCKET": "{}", "GOOGLE_CLIENT_ID": "{}", "LOG_LEVEL": "{}", "S3_REGION": "x-{}",
          "NEXTAUTH_URL": "https://muzo.app/?k={}", "S3_ENDPOINT": "https://muzo.app/{}",
          "UPSTASH_REDIS_REST_URL": "https://eu1-muzo.upstash.io/#{}"}


@pytest.mark.parametrize("form", list(ENCODED_FORMS))
def test_a_percent_encoded_secret_is_never_printed(tmp_path: Path, form: str) -> None:
    """A secret-shaped value percent-encoded (whole, in part, twice) in variables not meant for it."""
    placed = {name: template.format(ENCODED_FORMS[form]) for name, template in PLACES.items()}
    env = write_env(tmp_path / ".env", {**FULL, **placed})
    for fmt in ("text", "json"):
        result = run_cli("check-env", "--env-file", str(env), "--format", fmt)
        assert result.returncode in (0, 1), result.stderr
        out = result.stdout + result.stderr
        assert_no_secret(out, SECRETS)
        for mark in LEAK_MARKS:
            assert mark not in out, f"{form} shown ({fmt})"


# ------------------------------------------------------------------ waivers cannot hide a secret

def test_a_secret_given_as_a_waiver_code_is_not_echoed(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    for argument in (f"{LIVE_KEY}:reason", LIVE_KEY, f"{FULL['UPSTASH_REDIS_REST_TOKEN']}:why",
                     f"{FULL['NEXTAUTH_SECRET']}"):
        result = run_cli("check-env", "--env-file", str(env), "--allow", argument)
        assert result.returncode == 2
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert_no_secret(result.stdout + result.stderr, [*SECRETS, LIVE_KEY])
    # a mistyped code is still named, so the fix is plain
    result = run_cli("check-env", "--env-file", str(env), "--allow", "MONGO-TLS-INSECURE:x")
    assert result.returncode == 2 and "MONGO-TLS-INSECURE" in result.stderr


def test_a_secret_key_in_a_public_variable_cannot_be_waived(tmp_path: Path) -> None:
    """A live secret key in NEXT_PUBLIC_* ships to every browser: no waiver makes that pass."""
    values = {**FULL, "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY": LIVE_KEY}
    allows = ["--allow", "invalid:on purpose", "--allow", "stripe-publishable-differ:on purpose"]
    env = write_env(tmp_path / ".env", values)
    result = run_cli("check-env", "--env-file", str(env), *allows, "--allow", "secret-in-public:accepted")
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("error: ") and "secret-in-public" in result.stderr
    on_record = write_env(tmp_path / "b.env", {**values, "MUZO_CHECK_WAIVERS": "secret-in-public:accepted"})
    result = run_cli("check-env", "--env-file", str(on_record), *allows)
    assert result.returncode == 2, result.stdout
    for out in (result.stdout + result.stderr,):
        assert_no_secret(out, [*SECRETS, LIVE_KEY])
    # without that waiver the others still cannot make it pass
    result = run_cli("check-env", "--env-file", str(env), *allows, "--format", "json")
    assert result.returncode == 1
    assert LIVE_KEY not in result.stdout


# ------------------------------------------------------------------ start-up stays light on every path

HEAVY = ("pymongo", "pyinfra", "jinja2", "redis", "starlette", "httpx", "bson", "dns")


@pytest.mark.parametrize("args", [
    ("--format", "json", "--allow", "mongo-tls-insecure:reviewed"),
    ("--environment", "production", "--strict"),
    ("--allow", "nope:x"),  # a usage error
])
def test_check_env_on_hostile_input_imports_nothing_heavy(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The new paths (URL rules as the clients read them, loopback spellings, waivers, encoded
    secrets) must not pull in the driver or the web stack."""
    import subprocess
    import sys

    values = {**FULL, "DATABASE_URL": SRV + "&tls=false&tlsAllowInvalidCertificates=true&TLS=true",
              "NEXTAUTH_URL": "https://[::ffff:7f00:1]/", "S3_ENDPOINT": "HTTP://0x7f.1:9000",
              "REDIS_URL": "redis://%6Cocalhost", "EMAIL_SERVER_HOST": "ｌｏｃａｌｈｏｓｔ",
              "S3_BUCKET": ENCODED_FORMS["underscores"],
              "MUZO_CHECK_WAIVERS": "mongo-timeout-low:ok; reviewed;stripe-mode-mixed:x"}
    env = write_env(tmp_path / ".env", values, extra="pasted line without equals\n")
    probe = ("import sys, runpy; sys.argv = ['muzo_ops', 'check-env', '--env-file', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('muzo_ops', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe, str(env), *args], capture_output=True, text=True,
                          timeout=60)
    assert "Traceback" not in proc.stderr
    assert "Environment Variables Check" in proc.stdout or '"problems"' in proc.stdout or "error:" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "HEAVY []", proc.stderr[-1500:]


# ------------------------------------------------------------------ init-env --set

@pytest.mark.parametrize("form", ["underscores", "every byte", "twice"])
def test_set_refuses_a_percent_encoded_secret_and_never_echoes_it(tmp_path: Path, form: str) -> None:
    """`--set S3_BUCKET=sk%5Flive%5F…` put a live key on the command line (ps, shell history) and
    into a plain variable: it is refused as the plain key is, and nothing is written."""
    env = tmp_path / ".env"
    for argument in (f"S3_BUCKET={ENCODED_FORMS[form]}", f"{ENCODED_FORMS[form]}=x"):
        result = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set", argument)
        assert result.returncode == 2, result.stdout
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        out = result.stdout + result.stderr
        for mark in LEAK_MARKS:
            assert mark not in out
        assert not env.exists()


def test_init_env_never_writes_a_file_it_would_then_refuse_to_read(tmp_path: Path) -> None:
    """A 1 MiB value through --set-stdin made a 1.05 MB .env that check-env and init-env itself
    then refused ("over the 1024 KiB an env file may have"): refused before writing instead."""
    env = tmp_path / ".env"
    huge = "a" * (1 << 20)
    result = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set-stdin", "S3_BUCKET",
                     stdin=huge + "\n")
    assert result.returncode == 2, result.stdout[-300:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr[:300]
    assert huge[:100] not in result.stderr + result.stdout
    assert not env.exists()
    # over an existing file: the file and its folder stay as they were (no backup, no temporary file)
    assert run_cli("init-env", "--env-file", str(env), "--non-interactive").returncode == 0
    before = env.read_bytes()
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set-stdin", "S3_BUCKET",
                     stdin=huge + "\n")
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert env.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == listing
    assert run_cli("check-env", "--env-file", str(env)).returncode in (0, 1)


# ------------------------------------------------------------------ a secret split by junk characters

PLAIN_VARIABLES = ["S3_BUCKET", "S3_REGION", "GOOGLE_CLIENT_ID", "EMAIL_SERVER_USER", "LOG_LEVEL",
                   "EMAIL_SERVER_HOST", "WORKER_QUEUES", "DASHBOARD_USER", "WORKER_METRICS_HOST",
                   "S3_FORCE_PATH_STYLE", "EMAIL_SERVER_PORT", "WORKER_CONCURRENCY", "QUEUE_TRANSACTIONS"]
SPLITTERS = ['""', "''", " ", "\\\"", "\t", "\u2028", "\x00", "\x1b", "\u200b", "\xad", "#", "`", "\\"]


@pytest.mark.parametrize("cut", [12, 20])
def test_a_secret_split_by_quotes_or_invisible_characters_is_not_printed(tmp_path: Path, cut: int) -> None:
    """`S3_BUCKET=sk_live_51HL""eakLeak…` (or a space, tab, NUL, zero-width space… in the cut)
    was shown as it is: a reader removes the junk and has the key. The whole value is masked."""
    lines = []
    for index, splitter in enumerate(SPLITTERS):
        value = LIVE_KEY[:cut] + splitter + LIVE_KEY[cut:]
        name = PLAIN_VARIABLES[index]  # one each: of a variable set twice only the last is shown
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if index % 2 else value
        lines.append(f"{name}={quoted}\n")
    env = write_env(tmp_path / ".env", FULL, extra="".join(lines))
    tail = LIVE_KEY[cut:]
    for fmt in ("text", "json"):
        result = run_cli("check-env", "--env-file", str(env), "--format", fmt)
        assert result.returncode in (0, 1), result.stderr
        out = result.stdout + result.stderr
        shown = [tail[i:i + 8] for i in range(len(tail) - 7) if tail[i:i + 8] in out]
        assert not shown, (fmt, [x for x in out.splitlines() if shown[0] in x][:3])


# ------------------------------------------------------------------ hosts as Node's WHATWG URL reads them

NODE_HOSTS = Path(__file__).parent / "node"
IGNORED_BY_IDNA = ["\u00ad", "\u034f", "\u180b", "\u200b", "\u2060", "\u2064", "\ufe0f", "\ufeff", "\U000e0100"]


def node_hosts(urls: list[str]) -> list[list[str] | None]:
    """``[protocol, hostname]`` of each URL as Node's WHATWG ``URL`` reads it (None: refused)."""
    import json
    import subprocess

    script = ("const l=require('fs').readFileSync(0,'utf8').split('\\n').filter(Boolean).map(JSON.parse);"
              "process.stdout.write(JSON.stringify(l.map(u=>{try{const x=new URL(u);"
              "return [x.protocol,x.hostname]}catch(e){return null}})))")
    proc = subprocess.run(["node", "-e", script], input="\n".join(json.dumps(u) for u in urls),
                          capture_output=True, text=True, check=True, timeout=60, cwd=NODE_HOSTS)
    result: list[list[str] | None] = json.loads(proc.stdout)
    return result


def test_a_host_with_characters_idna_drops_is_this_machine_as_node_reads_it() -> None:
    """`https://lo\\u00adcalhost` (a soft hyphen, a zero-width space, a variation selector…) is
    localhost to the Node app (UTS #46 maps those to nothing) but passed production."""
    urls = []
    for mark in IGNORED_BY_IDNA:
        urls += [f"https://lo{mark}calhost/", f"https://127.0.0.1{mark}/", f"https://local{mark}host.:443",
                 "https://lo" + quote(mark) + "calhost/"]
    for url, read in zip(urls, node_hosts(urls), strict=True):
        assert read is not None and read[1] in ("localhost", "127.0.0.1", "localhost."), (url, read)
        for variable in ("NEXTAUTH_URL", "S3_ENDPOINT"):
            found = codes({**FULL, variable: url})
            assert (variable, "production-localhost") in found or (variable, "invalid") in found, (variable, url)


def test_a_waiver_reason_holding_a_cut_secret_is_not_printed(tmp_path: Path) -> None:
    cut = [LIVE_KEY[:12] + '""' + LIVE_KEY[12:], "key " + LIVE_KEY[:12] + " " + LIVE_KEY[12:] + " ok",
           "key " + LIVE_KEY[:12] + "\u200b" + LIVE_KEY[12:], ENCODED_FORMS["underscores"]]
    values = {**FULL, "DATABASE_URL": FULL["DATABASE_URL"] + "&tlsAllowInvalidCertificates=true"}
    env = write_env(tmp_path / ".env", values)
    for reason in cut:
        on_record = write_env(tmp_path / "b.env", {**values, "MUZO_CHECK_WAIVERS": f"mongo-tls-insecure:{reason}"})
        for fmt in ("text", "json"):
            for run in (run_cli("check-env", "--env-file", str(env), "--format", fmt,
                                "--allow", f"mongo-tls-insecure:{reason}"),
                        run_cli("check-env", "--env-file", str(on_record), "--format", fmt)):
                assert run.returncode == 0, run.stdout[-500:]
                assert "eakLeakLeak" not in run.stdout + run.stderr, (reason, fmt)


def test_the_same_waivers_by_allow_and_on_record_give_the_same_report(tmp_path: Path) -> None:
    import json

    values = {**FULL, "DATABASE_URL": FULL["DATABASE_URL"] + "&tlsAllowInvalidCertificates=true",
              "STRIPE_SECRET_KEY": "sk_test_51Htest0000000000000abc",
              "STRIPE_PUBLISHABLE_KEY": "pk_test_51Ht00000000000pub",
              "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY": "pk_test_51Ht00000000000pub"}
    reasons = {"mongo-tls-insecure": "self-signed; reviewed 2026-12", "stripe-test-in-production": "staging"}
    by_allow = write_env(tmp_path / "a.env", values)
    on_record = write_env(tmp_path / "b.env", {**values, "MUZO_CHECK_WAIVERS": ";".join(
        f"{code}:{reason}" for code, reason in reasons.items())})
    allows = [arg for code, reason in reasons.items() for arg in ("--allow", f"{code}:{reason}")]
    first = run_cli("check-env", "--env-file", str(by_allow), "--format", "json", "--strict", *allows)
    second = run_cli("check-env", "--env-file", str(on_record), "--format", "json", "--strict")
    assert first.returncode == second.returncode == 0, (first.stdout[-800:], second.stderr)
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["problems"] == b["problems"]
    waived = {p["code"]: p["reason"] for p in a["problems"] if p["waived"]}
    assert waived == reasons
    assert all(p["reason"] is None for p in a["problems"] if not p["waived"])


def test_no_waiver_makes_an_unparsable_file_pass(tmp_path: Path) -> None:
    every = [arg for code in ("invalid", "duplicate", "no-equals", "missing") for arg in ("--allow", f"{code}:x")]
    env = write_env(tmp_path / ".env", FULL, extra=f'STRIPE_SECRET_KEY="{LIVE_KEY}\n')
    for fmt in ("text", "json"):
        result = run_cli("check-env", "--env-file", str(env), "--format", fmt, *every)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert LIVE_KEY not in result.stdout + result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("sender", ["a@[IPv6:::1]", "muzo <a@[ipv6:::ffff:127.0.0.1]>", "a@[IPv6:0::1]"])
def test_an_ipv6_address_literal_sender_on_this_machine_fails_production(sender: str) -> None:
    """RFC 5321 writes an IPv6 domain as [IPv6:…]: `a@[IPv6:::1]` passed as a real domain."""
    assert ("EMAIL_FROM", "production-localhost") in codes({**FULL, "EMAIL_FROM": sender})
