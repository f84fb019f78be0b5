"""check-env reads URLs the way the clients do: pymongo's option rules, the C library's and Node's
idea of a host, case-insensitive schemes. Every expectation is checked against the real client."""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import subprocess
import warnings
from typing import Any
from urllib.parse import unquote_plus

import pytest
from pymongo import uri_parser
from pymongo.errors import ConfigurationError, InvalidURI

from muzo_ops.env import checks
from muzo_ops.loopback import inet_aton, is_this_machine
from muzo_ops.mongo import url as mongourl
from tests.envdata import FULL

BASE = "mongodb://muzo_app:pw-1234@db.internal:27017/muzo?serverSelectionTimeoutMS=30000&directConnection=true"


def codes(values: dict[str, str]) -> dict[tuple[str | None, str], str]:
    return {(p.variable, p.code): p.severity.value for p in checks.check(values).problems}


def driver_options(url: str) -> dict[str, Any] | None:
    """The options pymongo uses for ``url`` (ignoring what it only warns about), None when it refuses it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dict(uri_parser.parse_uri(url, validate=True, warn=True)["options"])
        except (InvalidURI, ConfigurationError, ValueError):
            return None


def driver_rejects_strictly(url: str) -> bool:
    try:
        uri_parser.parse_uri(url, validate=True, warn=False)
    except (InvalidURI, ConfigurationError, ValueError):
        return True
    return False


# ------------------------------------------------------------------ 9: options as pymongo reads them

TLS_SPELLINGS = ["1", "yes", "on", "TRUE", "True", "t", "y", "true%20", "true+", "0", "no", "FALSE"]


@pytest.mark.parametrize("spelling", TLS_SPELLINGS)
def test_a_tls_value_the_driver_ignores_is_an_error_in_production(spelling: str) -> None:
    url = f"{BASE}&tls={spelling}"
    # the driver: strict validation refuses it; the client (warn=True) drops it and connects in plain text
    assert driver_rejects_strictly(url)
    assert "tls" not in (driver_options(url) or {})
    found = codes({**FULL, "DATABASE_URL": url})
    assert found[("DATABASE_URL", "mongo-option-ignored")] == "error"
    assert found[("DATABASE_URL", "production-mongo-no-tls")] == "error"
    dev = codes({**FULL, "NODE_ENV": "development", "DATABASE_URL": url})
    assert dev[("DATABASE_URL", "mongo-option-ignored")] == "warning"


OPTION_CASES = [
    "tls=true", "TLS=true", "Tls=false", "ssl=true", "SSL=true&tls=true", "tls=tru%65", "tl%73=true",
    "tls=true&tls=1", "tls=1&tls=true", "tlsInsecure=true", "tlsinsecure=1", "TLSALLOWINVALIDCERTIFICATES=true",
    "tlsAllowInvalidCertificates=yes", "tlsAllowInvalidHostnames=true", "directConnection=1",
    "directconnection=true&replicaSet=rs0", "tls=true;appName=ops", "tls=true&appName=a;b",
    "appName=ops@muzo&tls=true", "tls=true&", "tls", "tls=true=1", "tlsInsecure=true&tlsAllowInvalidHostnames=true",
    "ssl=true&tls=false", "tls=%74rue", "tls=+true",
]
BOOLEAN_NAMES = ("tls", "ssl", "tlsInsecure", "tlsAllowInvalidCertificates", "tlsAllowInvalidHostnames",
                 "directConnection")


@pytest.mark.parametrize("query", OPTION_CASES)
def test_options_are_read_exactly_as_pymongo_reads_them(query: str) -> None:
    url = "mongodb://muzo_app:pw-1234@db.internal:27017/muzo?" + query
    options = driver_options(url)
    try:
        ours = mongourl.parse(url)
    except ValueError:
        assert options is None, query  # we refuse exactly what the driver refuses
        return
    assert options is not None, query
    for name in BOOLEAN_NAMES:
        driver = options.get(name)
        if name == "ssl":
            continue  # pymongo folds ssl into tls
        if name == "tls" and driver is None:
            driver = options.get("ssl")
        got = ours.flag(name)
        if name == "tls" and got is None:
            got = ours.flag("ssl")
        assert got == driver, (query, name, got, driver)
    ignored = mongourl.ignored_options(ours)
    assert bool(ignored) == driver_rejects_strictly(url) or "tl%73" in query, (query, ignored)


def test_the_boolean_option_list_is_pymongos() -> None:
    from pymongo import common

    booleans = {k for k, v in common.URI_OPTIONS_VALIDATOR_MAP.items() if v is common.validate_boolean_or_string}
    assert set(mongourl.BOOLEAN_OPTIONS) == booleans


def test_the_user_information_ends_where_the_driver_ends_it() -> None:
    for url in ("mongodb://u:p@h:27017/muzo?appName=ops@muzo", "mongodb://u:p@h?appName=ops@muzo",
                "mongodb://u:p%40w@h1,h2:27018/muzo", "mongodb://h/muzo?appName=a@b", "mongodb://u@h/",
                "mongodb://u%2Bx:a+b%2B@h/"):
        parsed = uri_parser.parse_uri(url)
        ours = mongourl.parse(url)
        assert (ours.password or "") == (parsed["password"] or ""), url
        user = ours.userinfo.partition(":")[0] if ours.userinfo else None
        assert (user and unquote_plus(user)) == parsed["username"], url
        assert [h.rsplit(":", 1)[0] for h in ours.hosts.split(",")] == [n[0] for n in parsed["nodelist"]], url
    # with_credentials keeps everything after the user information byte for byte
    assert mongourl.with_credentials("mongodb://u:old@h:27017/muzo?appName=ops@muzo", "u", "n/w") == (
        "mongodb://u:n%2Fw@h:27017/muzo?appName=ops@muzo")


# ------------------------------------------------------------------ 10: is this host this machine

def c_library(host: str) -> int | None:
    try:
        return int.from_bytes(socket.inet_aton(host), "big")
    except OSError:
        return None


def test_ipv4_numbers_are_read_as_inet_aton_reads_them() -> None:
    forms = ["127.1", "2130706433", "0x7f.1", "0", "0x0", "017700000001", "0177.0.0.1", "127.0.0.1 x",
             "127.0x1", "127.256", "127.0.256", "0x7f.0.0.0x1", "0X7F.1", "08", "0x", "00x1", "1.2.3.4.5",
             "4294967295", "4294967296", "1.16777216", "1.16777215", "127.0.0.1.", ".127.0.0.1", "127..1",
             "+127.1", "-1", "0x100.1", "0377.0377.0377.0377", "1e3", "", " 127.1", "127.1\t"]
    rng = random.Random(7)
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(1, 5)):
            n = rng.choice([0, 1, 127, 255, 256, 65535, 2130706433, rng.randint(0, 1 << 33)])
            parts.append(rng.choice([str(n), hex(n), "0" + oct(n)[2:], hex(n).upper(), ""]))
        forms.append(".".join(parts))
    for form in forms:
        assert inet_aton(form) == c_library(form), form


LOCAL = ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f.1",
         "0x7F000001", "017700000001", "0", "0.0.0.0", "0x0", "127.255.255.254", "::1", "[::1]", "::",
         "[::]", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "[::ffff:7f00:1]", "::ffff:0.0.0.0", "::127.0.0.1",
         "[::1%25lo]", "::1%lo", "localhost.localdomain", "localhost4", "localhost6.localdomain6",
         "ip6-localhost", "ip6-loopback", "app.localhost", "x.y.LOCALHOST.", "%6c%6fcalhost",
         "127.0.0.%31", "ｌｏｃａｌｈｏｓｔ", "１２７.０.０.１", "127。0。0。1", "localhost．",
         "/tmp/mongodb-27017.sock",
         "%2Ftmp%2Fmongodb-27017.sock"]
REMOTE = ["muzo.app", "db.internal", "10.0.0.5", "128.0.0.1", "1.127.0.0", "::2", "fe80::1", "::ffff:10.0.0.1",
          "localhost.muzo.app", "mylocalhost", "lоcalhost", "127.example.com", "0x7g.1", "2130706433.example"]


def test_this_machine_in_every_spelling() -> None:
    for host in LOCAL:
        assert is_this_machine(host), host
    for host in REMOTE:
        assert not is_this_machine(host), host
    # every numeric IPv4 form is decided on the C library's reading
    for host in ("127.1", "2130706433", "0x7f.1", "0", "017700000001", "127.0.256"):
        number = c_library(host)
        assert number is not None and is_this_machine(host) == (
            ipaddress.IPv4Address(number).is_loopback or number == 0), host


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.1", "0", "[::ffff:127.0.0.1]", "[::1]", "[::]",
                                  "localhost.localdomain", "ip6-localhost", "app.localhost", "%6c%6fcalhost",
                                  "ｌｏｃａｌｈｏｓｔ", "LOCALHOST."])
def test_production_localhost_catches_every_spelling_in_every_host_variable(host: str) -> None:
    values = {**FULL,
              "NEXTAUTH_URL": f"https://{host}", "S3_ENDPOINT": f"https://{host}:9000",
              "REDIS_URL": f"rediss://default:pw-1234@{host}:6379",
              "DATABASE_URL": f"mongodb://muzo_app:pw-1234@{host}:27017/muzo?tls=true&directConnection=true"
                              "&serverSelectionTimeoutMS=30000",
              "EMAIL_SERVER_HOST": host.strip("[]"), "EMAIL_FROM": f"muzo <hello@{host.strip('[]')}>"}
    found = codes(values)
    for name in ("NEXTAUTH_URL", "S3_ENDPOINT", "REDIS_URL", "DATABASE_URL", "EMAIL_SERVER_HOST", "EMAIL_FROM"):
        if name == "DATABASE_URL" and "%" in host:
            continue  # pymongo does not percent-decode host names: the driver would look up "%6c%6fcalhost"
        assert found.get((name, "production-localhost")) == "error", (name, host)


NODE_SCRIPT = """
const out = {};
for (const u of JSON.parse(process.argv[1])) {
  try { out[u] = new URL(u).hostname; } catch (e) { out[u] = null; }
}
console.log(JSON.stringify(out));
"""
# URLs whose host Python's urlsplit and Node's WHATWG URL may read differently.
HOSTILE = [
    "https://127.0.0.1\\@muzo.app/", "https://127.1\\@muzo.app", "https://loc\talhost/", "https://local\nhost:3000",
    " https://localhost", "https://%6c%6fcalhost/", "https://ＬＯＣＡＬＨＯＳＴ/", "https://127。0。0。1/",
    "https://0x7f.1/", "https://2130706433/", "https://0/", "https://[::ffff:127.0.0.1]/", "https://[::]/",
    "https://127.0.0.1./", "https://app.localhost/", "https://muzo.app@127.0.0.1/", "https://a@b@localhost/",
    "HTTPS://LOCALHOST/", "https://127.0.0.%31/",
]


def node_hostnames(urls: list[str]) -> dict[str, str | None]:
    proc = subprocess.run(["node", "-e", NODE_SCRIPT, json.dumps(urls)], capture_output=True, text=True,
                          check=True, timeout=60)
    result: dict[str, str | None] = json.loads(proc.stdout)
    return result


def node_says_loopback(hostname: str | None) -> bool:
    if hostname is None:
        return False
    name = hostname.strip("[]").rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def test_hosts_node_reads_as_this_machine_fail_production() -> None:
    seen = node_hostnames(HOSTILE)
    for url in HOSTILE:
        assert node_says_loopback(seen[url]), (url, seen[url])  # each is this machine for the web app
        found = codes({**FULL, "NEXTAUTH_URL": url})
        assert found.get(("NEXTAUTH_URL", "production-localhost")) == "error", (url, seen[url])
    # and a remote host stays fine, for Node and for us
    fine = ["https://muzo.app/", "https://muzo.app/a@127.0.0.1", "https://muzo.app/?next=http://localhost"]
    for url, hostname in node_hostnames(fine).items():
        assert not node_says_loopback(hostname)
        assert ("NEXTAUTH_URL", "production-localhost") not in codes({**FULL, "NEXTAUTH_URL": url}), url


# ------------------------------------------------------------------ 11: schemes in any case

def test_schemes_are_case_insensitive() -> None:
    from urllib.parse import urlsplit

    assert urlsplit("HTTPS://muzo.app").scheme == "https"  # what the clients read
    values = {**FULL, "NEXTAUTH_URL": "HTTPS://muzo.app", "S3_ENDPOINT": "Https://s3.eu-west-3.amazonaws.com",
              "REDIS_URL": "REDISS://default:pw-1234@cache.internal:6379"}
    assert checks.check(values).problems == []
    plain = codes({**FULL, "S3_ENDPOINT": "HTTP://s3.internal", "NEXTAUTH_URL": "Http://muzo.app"})
    assert plain[("S3_ENDPOINT", "s3-endpoint-not-https")] == "error"
    assert plain[("NEXTAUTH_URL", "nextauth-url-not-https")] == "error"
    # the MongoDB driver is the exception: it refuses any spelling but lower case, and so do we
    assert driver_options("MONGODB://db.internal/muzo") is None
    upper = checks.check({**FULL, "DATABASE_URL": "MONGODB://db.internal:27017/muzo?tls=true"}).problems
    assert [(p.code, "lower case" in p.message) for p in upper if p.variable == "DATABASE_URL"] == [("invalid", True)]
