"""``secrets rotate DATABASE_URL``: a new password for the application's MongoDB user.

The order makes sure no step can lose the new password:

1. generate a URL-safe password (43 characters, 32 random bytes);
2. back the env file up (0600) and write the new one as a pending 0600
   file beside it (``<envfile>.pending``);
3. ``updateUser`` through the admin connection (``MUZO_MONGO_ADMIN_URI`` or a
   hidden prompt; never the command line, never written anywhere);
4. check the NEW password authenticates (``connectionStatus``);
5. rename the pending file into place.

If a step fails the env file is unchanged; the pending file is removed when
the password was not changed, and kept (with a message saying so) when the
server may already hold the new password. The result says which password
works now. Atlas clusters refuse ``updateUser`` (their users are managed
through the Atlas API) and are refused here with that explanation.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets as pysecrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from muzo_ops.errors import MuzoOpsError, UsageError
from muzo_ops.secrets import audit, dotenvx
from muzo_ops.secrets.filelock import DEFAULT_TIMEOUT_S, locked
from muzo_ops.secrets.rotation import (
    DEFAULT_KEEP,
    LineWriter,
    apply_lines,
    decode_text,
    make_backup,
    prune_backups,
    read_bytes,
    remove_stale_temps,
    write_atomic,
)

ADMIN_URI_VARIABLE = "MUZO_MONGO_ADMIN_URI"
PASSWORD_BYTES = 32
TIMEOUT_MS = 5000
NAME = "DATABASE_URL"


class MongoRotationError(MuzoOpsError):
    """The rotation stopped; the message says what state the server and the file are in."""


@dataclass
class MongoResult:
    """What happened, by fingerprint; ``new_works``/``old_works`` say which password the server takes."""

    path: str
    user: str = ""
    dry_run: bool = False
    ok: bool = False
    old: str | None = None
    new: str | None = None
    backup: str | None = None
    pending: str | None = None
    old_works: bool | None = None
    new_works: bool | None = None
    pruned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"command": "rotate", "env_file": self.path, "variable": NAME, "user": self.user,
                "dry_run": self.dry_run, "ok": self.ok, "old": self.old, "new": self.new, "backup": self.backup,
                "pending": self.pending, "old_password_works": self.old_works,
                "new_password_works": self.new_works, "pruned_backups": self.pruned,
                "warnings": self.warnings, "message": self.message}

    def lines(self) -> list[str]:
        if self.dry_run:
            return [f"Would set a new password for MongoDB user {self.user} and update {NAME} in {self.path} "
                    f"({self.old or '-'} → a fresh value). Every process using the old password fails its "
                    "next new connection until it is restarted with the new file."]
        if self.ok:
            return [f"Rotated the password of MongoDB user {self.user}: {self.old or '-'} → {self.new}; "
                    f"{NAME} updated in {self.path} (backup {self.backup}, 0600).",
                    "The old password no longer works: restart every app that reads the file now "
                    "(the web app and the workers)."]
        return [self.message]


def _hosts_are_atlas(hosts: str) -> bool:
    return any(h.split(":")[0].lower().endswith(".mongodb.net") for h in hosts.split(","))


def _uses_tls(mongo: Any) -> bool:
    flag = mongo.flag("tls")
    if flag is None:
        flag = mongo.flag("ssl")
    return bool(flag) if flag is not None else bool(mongo.srv)


def _authenticates(url: str) -> bool:
    """Whether ``url``'s credentials log in (one fresh connection, closed again)."""
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=TIMEOUT_MS,
                                                       connectTimeoutMS=TIMEOUT_MS)
    try:
        status = client.get_database("admin").command("connectionStatus")
        return bool(status.get("authInfo", {}).get("authenticatedUsers"))
    except OperationFailure:
        return False
    except PyMongoError:
        return False
    finally:
        client.close()


def _admin_uri(environ: Mapping[str, str], prompt: Callable[[str], str] | None) -> str:
    uri = environ.get(ADMIN_URI_VARIABLE, "")
    if not uri and prompt is not None:
        uri = prompt("MongoDB admin connection string (hidden): ")
    if not uri:
        raise UsageError(f"no admin connection: set {ADMIN_URI_VARIABLE} in the environment (not on the "
                         "command line, where ps shows it), or run on a terminal to be prompted")
    return uri


def _with_password(url: str, user_raw: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    _userinfo, tail = rest.rsplit("@", 1) if "@" in rest else ("", rest)
    return f"{scheme}://{user_raw}:{quote(password, safe='')}@{tail}"


def rotate(path: str, *, dry_run: bool = False, confirm: Callable[[str], bool] | None = None,
           keep: int = DEFAULT_KEEP, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
           environ: Mapping[str, str] | None = None, prompt: Callable[[str], str] | None = None,
           on_values: Callable[[Iterable[str]], None] | None = None,
           now: dt.datetime | None = None) -> MongoResult:
    """Rotate the password in ``DATABASE_URL`` of ``path`` (see the module doc)."""
    from muzo_ops.env import mongourl
    from muzo_ops.env.envfile import parse_text

    environ = os.environ if environ is None else environ
    with locked(path, lock_timeout_s):
        remove_stale_temps(path)
        data = read_bytes(path)
        text = decode_text(path, data)
        raw = parse_text(text, path).raw().get(NAME, "")
        if not raw:
            raise UsageError(f"{path}: {NAME} is empty: set it first with `muzo-ops init-env`")
        url = raw
        if dotenvx.is_encrypted(raw):
            private_name, keys = dotenvx.private_keys_for(path, text, environ)
            if not keys:
                raise UsageError(f"{path}: {NAME} is encrypted and no private key is at hand: set {private_name} "
                                 f"or put {dotenvx.KEYS_FILE} beside the file")
            found = dotenvx.file_public_key(text)
            url = dotenvx.decrypt_value(NAME, raw, keys, found[1] if found else None, path)
        try:
            mongo = mongourl.parse(url)
        except ValueError as exc:
            raise UsageError(f"{path}: {NAME} {exc}") from exc
        if not mongo.userinfo or ":" not in mongo.userinfo:
            raise UsageError(f"{path}: {NAME} has no user and password to rotate")
        user_raw, _sep, _old_raw = mongo.userinfo.partition(":")
        user = unquote(user_raw)
        old_password = mongo.password or ""
        if on_values is not None:
            on_values([v for v in (url, old_password) if v])
        result = MongoResult(path, user=user, dry_run=dry_run)
        fingerprint = audit.Fingerprinter(path)
        result.old = fingerprint(old_password)
        if _hosts_are_atlas(mongo.hosts):
            raise UsageError(f"{path}: {NAME} points at MongoDB Atlas, whose clusters do not accept updateUser "
                             "(database users are managed through the Atlas UI or Admin API): change the "
                             "password there, then put the new URL in with `muzo-ops init-env --set-stdin "
                             f"{NAME}`")
        if not _uses_tls(mongo):
            result.warnings.append(f"{NAME} does not use TLS: the new password travels in clear to the server")
        if dry_run:
            return result
        if confirm is not None and not confirm(
                f"Every process using the old password of {user} (the web app too, not only the workers) fails "
                "its next new connection after the change. Continue? [y/N] "):
            raise UsageError("not confirmed: nothing changed (use --yes in scripts)")
        admin_uri = _admin_uri(environ, prompt)
        if on_values is not None:
            from muzo_ops.secrets.redact import url_passwords

            on_values([admin_uri, *url_passwords(admin_uri)])
        auth_db = mongo.option("authSource") or mongo.database or "admin"
        new_password = pysecrets.token_urlsafe(PASSWORD_BYTES)
        new_url = _with_password(url, user_raw, new_password)
        if on_values is not None:
            on_values([new_password, new_url])
        writer = LineWriter(text)
        new_text = apply_lines(text, path, {NAME: writer.line(NAME, new_url)})
        result.backup = make_backup(path, data)
        pending = f"{path}.pending"
        write_atomic(pending, new_text.encode("utf-8"))
        result.pending = pending
        _update_user(admin_uri, auth_db, user, new_password, result, url)
        result.new_works = _authenticates(new_url)
        if not result.new_works:
            result.old_works = _authenticates(url)
            works = "the OLD password still works" if result.old_works else "NEITHER password works"
            raise MongoRotationError(
                f"updateUser succeeded but the new password of {user} does not authenticate; {works}. "
                f"{path} is unchanged; the new URL is in {pending} (0600): if the new password works later, "
                f"move it into place (mv {pending} {path}), else set a password with the admin tools")
        os.replace(pending, path)
        result.pending = None
        from muzo_ops.secrets.rotation import fsync_folder

        fsync_folder(os.path.dirname(os.path.abspath(path)))
        result.ok = True
        result.old_works = False
        result.new = fingerprint(new_password)
        result.pruned = prune_backups(path, keep)
        audit.append(path, "rotate", {NAME: (old_password, new_password)},
                     extra={"backup": os.path.basename(result.backup), "mongo_user": user}, now=now,
                     fingerprinter=fingerprint)
        return result


def _update_user(admin_uri: str, auth_db: str, user: str, password: str, result: MongoResult,
                 old_url: str) -> None:
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    pending = result.pending or ""
    client: MongoClient[dict[str, Any]] = MongoClient(admin_uri, serverSelectionTimeoutMS=TIMEOUT_MS,
                                                       connectTimeoutMS=TIMEOUT_MS)
    try:
        client.get_database(auth_db).command("updateUser", user, pwd=password)
    except OperationFailure as exc:
        os.unlink(pending)
        result.pending = None
        reason = exc.details.get("codeName") if exc.details else None
        raise MongoRotationError(
            f"updateUser of {user} on database {auth_db} was refused ({reason or exc.code}); the old password "
            "still works and the env file is unchanged: check the admin user has the userAdmin role there") from None
    except PyMongoError as exc:
        # the server may or may not have applied it: find out which password works
        result.new_works = None
        old_works = _authenticates(old_url)
        if old_works:
            os.unlink(pending)
            result.pending = None
            raise MongoRotationError(
                f"cannot reach MongoDB with the admin connection ({type(exc).__name__}); the old password still "
                "works and the env file is unchanged: check the host and try again") from None
        raise MongoRotationError(
            f"the admin connection failed during updateUser ({type(exc).__name__}) and the old password no "
            f"longer authenticates: the new one may be set; it is kept in {pending} (0600): check it with "
            "check-env --connect --env-file on that file, then move it into place") from None
    finally:
        client.close()


def rotate_cli(path: str, *, dry_run: bool, yes: bool, keep: int, lock_timeout_s: float,
               on_values: Callable[[Iterable[str]], None], say: Callable[[str], None]) -> MongoResult:
    """``rotate`` with the terminal: confirmation and hidden prompt unless ``yes`` or no terminal."""
    import getpass
    import sys

    interactive = sys.stdin.isatty()

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not interactive:
            raise UsageError("DATABASE_URL rotation changes the password every running app uses: "
                             "confirm with --yes (no terminal to ask on)")
        say(question.rstrip())
        return input().strip().lower() in ("y", "yes")

    prompt = getpass.getpass if interactive else None
    return rotate(path, dry_run=dry_run, confirm=confirm, keep=keep, lock_timeout_s=lock_timeout_s,
                  prompt=prompt, on_values=on_values)
