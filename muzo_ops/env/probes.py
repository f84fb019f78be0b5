"""``check-env --connect``: reach MongoDB and Redis with short timeouts.

pymongo and redis-py are imported here only, so plain ``check-env`` stays
fast. Messages are built by muzo_ops; the only driver text quoted is the
first line of why it refuses a URL or ignores an option, with the URL's
secrets masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from muzo_ops.constants import CONNECT_TIMEOUT_S
from muzo_ops.mongo import errors
from muzo_ops.mongo import url as mongourl

if TYPE_CHECKING:
    from pymongo import MongoClient


@dataclass(frozen=True)
class ConnectionResult:
    """One connection attempt, as a line for the report."""

    service: str  # "mongodb" or "redis"
    ok: bool
    code: str  # problem code when not ok
    message: str  # one line, no secrets
    warnings: tuple[str, ...] = ()  # what the driver ignores in the URL, a line each


def _driver_text(exc: BaseException, url: str) -> str:
    """The first line of the driver's message, any secret of ``url`` masked."""
    from muzo_ops.redact.redactor import Redactor, secret_values

    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    return Redactor(secret_values({"DATABASE_URL": url}))(text)[:200]


def check_mongo(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> ConnectionResult:
    """Ping MongoDB, then say: server version, auth, topology, transactions."""
    import warnings

    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    parsed = mongourl.parse(url)
    where = parsed.hosts
    ms = int(timeout_s * 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            client: MongoClient[dict[str, object]] = MongoClient(
                url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms,
                appname="muzo-ops check-env", connect=False,
            )
        except (PyMongoError, ValueError, TypeError, KeyError) as exc:
            return ConnectionResult("mongodb", False, "mongo-url-refused",
                                    f"MongoDB {where}: the driver refuses DATABASE_URL "
                                    f"({_driver_text(exc, url)}): fix the URL's options")
    ignored = tuple(f"MongoDB {where}: the driver ignores part of DATABASE_URL "
                    f"({_driver_text(w.message if isinstance(w.message, Warning) else Warning(w.message), url)})"
                    for w in caught)
    result = _ping_mongo(client, parsed, where, timeout_s)
    return ConnectionResult(result.service, result.ok, result.code, result.message, ignored)


def _ping_mongo(client: MongoClient[dict[str, object]], parsed: mongourl.MongoUrl, where: str,
                timeout_s: float) -> ConnectionResult:
    """Ping through ``client`` and describe the server (closes the client)."""
    from pymongo.errors import OperationFailure, PyMongoError

    try:
        client.admin.command("ping")
        hello = client.admin.command("hello")
        version = str(client.server_info().get("version", "?"))
        db = client.get_default_database(default="muzo")
        jobs = db["Job"].estimated_document_count()  # needs the app's privileges on its database
        user = parsed.userinfo.partition(":")[0] if parsed.userinfo else None
        auth = f"authenticated as {user}" if user else "no credentials"
        set_name = hello.get("setName")
        topology = f"replica set {set_name}" if set_name else (
            "sharded cluster" if hello.get("msg") == "isdbgrid" else "standalone")
        from_url = mongourl.transactions_from_url(parsed)
        available = from_url if from_url is not None else bool(set_name or hello.get("msg") == "isdbgrid")
        tx = "transactions available" if available else "no transactions"
        return ConnectionResult("mongodb", True, "",
                                f"MongoDB {where}: ping ok, server {version}, {auth}, {topology}, {tx}; "
                                f"database {db.name}: {jobs} Job document(s)")
    except OperationFailure as exc:
        kind = errors.classify(exc)
        if kind is errors.Failure.AUTH_FAILED:
            return ConnectionResult("mongodb", False, "mongo-auth-failed",
                                    f"MongoDB {where}: authentication failed: check the user and "
                                    "password in DATABASE_URL")
        if kind is errors.Failure.NOT_AUTHORIZED:
            return ConnectionResult("mongodb", False, "mongo-unauthorized",
                                    f"MongoDB {where}: not allowed to read the database: give the "
                                    "DATABASE_URL user readWrite on it (or add credentials)")
        return ConnectionResult("mongodb", False, "mongo-command-failed",
                                f"MongoDB {where}: command failed (code {exc.code})")
    except PyMongoError as exc:
        return ConnectionResult("mongodb", False, "mongo-unreachable",
                                f"MongoDB {where}: unreachable within {timeout_s:g}s ({errors.reason(exc)})")
    finally:
        client.close()


def check_redis(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> ConnectionResult:
    """PING Redis with redis-py and report its version."""
    from urllib.parse import urlsplit

    import redis

    try:
        where = urlsplit(url).hostname or "?"
        port = urlsplit(url).port or 6379
    except ValueError:
        return ConnectionResult("redis", False, "redis-url-invalid", "Redis: REDIS_URL is not a URL")
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except (ValueError, TypeError, redis.RedisError) as exc:
        return ConnectionResult("redis", False, "redis-url-invalid",
                                f"Redis {where}:{port}: the client refuses REDIS_URL ({type(exc).__name__}): "
                                "fix the URL (redis[s]://[user:password@]host:port[/db number])")
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
        return ConnectionResult("redis", True, "", f"Redis {where}:{port}: PING ok, server {version}")
    except redis.AuthenticationError:
        return ConnectionResult("redis", False, "redis-auth-failed",
                                f"Redis {where}:{port}: authentication failed: check REDIS_URL")
    except redis.RedisError as exc:
        return ConnectionResult("redis", False, "redis-unreachable",
                                f"Redis {where}:{port}: unreachable within {timeout_s:g}s ({errors.reason(exc)})")
    finally:
        client.close()
