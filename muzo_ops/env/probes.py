"""``check-env --connect``: reach MongoDB and Redis with short timeouts.

pymongo and redis-py are imported here only, so plain ``check-env`` stays
fast. Messages are built by muzo_ops, never copied from driver errors that
could carry a connection string.
"""

from __future__ import annotations

from dataclasses import dataclass

from muzo_ops.constants import CONNECT_TIMEOUT_S
from muzo_ops.env import mongourl
from muzo_ops.queue import errors


@dataclass(frozen=True)
class ConnectionResult:
    """One connection attempt, as a line for the report."""

    service: str  # "mongodb" or "redis"
    ok: bool
    code: str  # problem code when not ok
    message: str  # one line, no secrets


def check_mongo(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> ConnectionResult:
    """Ping MongoDB, then say: server version, auth, topology, transactions."""
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    parsed = mongourl.parse(url)
    ms = int(timeout_s * 1000)
    client: MongoClient[dict[str, object]] = MongoClient(
        url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms,
        appname="muzo-ops check-env",
    )
    where = parsed.hosts
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
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
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
