"""Rules on URLs and hosts: DATABASE_URL's options as the driver reads them, https, and the
production rules (no host that is this machine, TLS to MongoDB, live Stripe keys)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from muzo_ops import urls
from muzo_ops.constants import MIN_SERVER_SELECTION_TIMEOUT_MS, RECOMMENDED_SERVER_SELECTION_TIMEOUT_MS
from muzo_ops.env import schema
from muzo_ops.env.crossrules import stripe_mode
from muzo_ops.env.problems import Note, Report, Severity
from muzo_ops.env.schema import Kind, Variable
from muzo_ops.loopback import is_this_machine
from muzo_ops.mongo import url as mongourl

# Schemes WHATWG URL treats as "special" (a backslash ends their authority).
_SPECIAL_SCHEMES = ("http", "https", "ws", "wss", "ftp")


def check_database_url(report: Report, url: str, production: bool) -> None:
    if not url:
        return
    try:
        mongo = mongourl.parse(url)
    except ValueError:
        return  # already reported as invalid
    name = "DATABASE_URL"
    add = report.add
    direct = mongo.flag("directConnection")
    replica_set = mongo.option("replicaSet")
    if direct and replica_set:
        add(name, Severity.ERROR, "mongo-direct-and-replicaset",
            f"{name} sets both directConnection=true and replicaSet={replica_set}: keep "
            "directConnection=true for one server (no transactions) or replicaSet= for a "
            "replica set, not both", special=True)
    elif direct:
        report.notes.append(Note(f"{name}: Direct connection mode (no transactions)"))
    elif replica_set:
        report.notes.append(Note(f"{name}: Replica set {replica_set} (transactions available)"))
    elif mongo.srv:
        report.notes.append(Note(f"{name}: mongodb+srv cluster (transactions available)"))
    else:
        report.notes.append(Note(f"{name}: topology not set in the URL (the worker asks the server)"))
    timeout = mongo.option("serverSelectionTimeoutMS")
    if timeout is None:
        add(name, Severity.WARNING, "mongo-timeout-missing",
            f"{name} has no serverSelectionTimeoutMS: add "
            f"serverSelectionTimeoutMS={RECOMMENDED_SERVER_SELECTION_TIMEOUT_MS}", special=True)
    elif not timeout.isdigit():
        add(name, Severity.ERROR, "mongo-timeout-invalid",
            f"{name} serverSelectionTimeoutMS must be a number of milliseconds", special=True)
    elif int(timeout) < MIN_SERVER_SELECTION_TIMEOUT_MS:
        add(name, Severity.WARNING, "mongo-timeout-low",
            f"{name} serverSelectionTimeoutMS = {timeout}ms is under "
            f"{MIN_SERVER_SELECTION_TIMEOUT_MS}ms: use "
            f"{RECOMMENDED_SERVER_SELECTION_TIMEOUT_MS}", special=True)
    else:
        report.notes.append(Note(f"{name}: serverSelectionTimeoutMS = {timeout}ms"))
    for option in ("tlsAllowInvalidCertificates", "tlsInsecure", "tlsAllowInvalidHostnames"):
        if option.lower() in mongo.options and mongo.flag(option):  # as written, not as implied
            if production:
                add(name, Severity.ERROR, "mongo-tls-insecure",
                    f"{name} sets {option}=true in production: production expects a verified "
                    "certificate: remove it and trust the server's CA (tlsCAFile=) instead", special=True)
            else:
                add(name, Severity.WARNING, "mongo-tls-insecure",
                    f"{name} sets {option}=true: acceptable only for local development",
                    special=True)
    for ignored in mongourl.ignored_options(mongo):
        add(name, Severity.ERROR if production else Severity.WARNING, "mongo-option-ignored",
            f"{name}: {ignored}" + (" (in production the connection would lack what it asks for)"
                                    if production else ""), special=True)
    problem = mongourl.userinfo_encoding_problem(mongo)
    if problem:
        add(name, Severity.ERROR, "mongo-password-encoding", f"{name}: {problem}", special=True)


def check_nextauth_url(report: Report, url: str, production: bool) -> None:
    if url and production and urls.scheme_of(url) != "https":
        report.add("NEXTAUTH_URL", Severity.ERROR, "nextauth-url-not-https",
                   "NEXTAUTH_URL must be https:// in production: production expects the site's "
                   "public https:// address (e.g. https://muzo.app)", special=True)


# Variables that name a host to reach (not an address to bind, like WORKER_METRICS_HOST).
_REMOTE_HOST_VARIABLES = ("EMAIL_SERVER_HOST",)
_URL_KINDS = (Kind.URL, Kind.HTTPS_URL, Kind.MONGO_URL, Kind.REDIS_URL)


def is_local_host(host: str) -> bool:
    """Whether ``host`` is this machine (``muzo_ops.loopback`` decides, as a client would)."""
    return is_this_machine(host)


def _without_port(host: str) -> str:
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return re.sub(r":[^:]*\Z", "", host) if host.count(":") == 1 else host


def whatwg_host(value: str) -> str | None:
    """The host Node's WHATWG ``URL`` reads in ``value`` (before its IDNA and IPv4 normalizing,
    which ``loopback`` applies): tabs and line breaks removed, C0 controls and spaces trimmed,
    and for http(s), ws(s) and ftp a backslash ends the authority as ``/`` does."""
    text = re.sub(r"[\t\n\r]", "", value).strip("".join(map(chr, range(0x21))))
    scheme = urls.scheme_of(text)
    special = scheme in _SPECIAL_SCHEMES
    auth = urls.authority(text, urls.WEB_DELIMITERS + ("\\" if special else ""))
    if auth is None or not auth.hosts:
        return None
    return _without_port(auth.hosts)


def hosts_of(var: Variable, value: str) -> list[str]:
    """The host names ``var``'s ``value`` points at, as each client reading it would see them
    (URL hosts by Python's ``urlsplit`` and by Node's ``URL``, an e-mail's domain, the value)."""
    if var.kind is Kind.MONGO_URL:
        try:
            hosts = mongourl.parse(value).hosts
        except ValueError:
            return []
        return [_without_port(h) for h in hosts.split(",")]
    if var.kind in _URL_KINDS:
        found = []
        try:
            host = urlsplit(value).hostname
        except ValueError:
            host = None
        if host:
            found.append(host)
        node = whatwg_host(value)
        if node and node not in found:
            found.append(node)
        return found
    if var.kind is Kind.EMAIL:
        address = value.rpartition("<")[2].rstrip(">")
        domain = address.rpartition("@")[2]
        if domain[:6].lower() == "[ipv6:":  # an RFC 5321 address literal: [IPv6:::1]
            domain = "[" + domain[6:]
        return [domain] if "@" in address else []
    return [value]


def check_production(report: Report, values: Mapping[str, str], names: set[str], why: str) -> None:
    """The rules of a production environment: no local hosts, TLS, https, live Stripe keys."""
    for var in schema.VARIABLES:
        value = values.get(var.name, "")
        if var.name not in names or not value:
            continue
        if var.kind not in (*_URL_KINDS, Kind.EMAIL) and var.name not in _REMOTE_HOST_VARIABLES:
            continue
        local = [h for h in hosts_of(var, value) if is_local_host(h)]
        if local:
            what = "a sender address at your domain" if var.kind is Kind.EMAIL else (
                "a host name or address the app servers reach over the network")
            report.add(var.name, Severity.ERROR, "production-localhost",
                       f"{var.name} names {local[0]} in production ({why}): production expects "
                       f"{what}, not this machine", special=True)
    url = values.get("DATABASE_URL", "")
    if "DATABASE_URL" in names and url:
        try:
            mongo = mongourl.parse(url)
        except ValueError:
            mongo = None
        if mongo is not None and not mongo.uses_tls:
            report.add("DATABASE_URL", Severity.ERROR, "production-mongo-no-tls",
                       f"DATABASE_URL has no TLS in production ({why}): production expects "
                       "mongodb+srv:// (without tls=false) or tls=true (with tlsCAFile= for a private CA)",
                       special=True)
    endpoint = values.get("S3_ENDPOINT", "")
    if "S3_ENDPOINT" in names and urls.scheme_of(endpoint.strip()) == "http":
        report.add("S3_ENDPOINT", Severity.ERROR, "s3-endpoint-not-https",
                   f"S3_ENDPOINT is plain http:// in production ({why}): production expects an "
                   "https:// endpoint", special=True)
    handler_list = values.get("MUZO_WORKER_HANDLERS", "")
    if "MUZO_WORKER_HANDLERS" in names and handler_list:
        from muzo_ops.env import handlerspec

        problem = handlerspec.production_error(handler_list)
        if problem:
            report.add("MUZO_WORKER_HANDLERS", Severity.ERROR, "production-handler-http",
                       f"MUZO_WORKER_HANDLERS: {problem} ({why})", special=True)
    test_keys = [n for n in ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY", "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY")
                 if n in names and stripe_mode(values.get(n, "")) == "test"]
    if test_keys:
        report.add(test_keys[0], Severity.WARNING, "stripe-test-in-production",
                   f"Stripe test keys in production ({why}: {', '.join(test_keys)}): production "
                   "expects live keys (sk_live_…, pk_live_…); keep test keys for a staging server only",
                   special=True)
