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

Every call to the server is bounded (``TIMEOUT_MS`` to select a server, to
connect and for each reply), so a server that stops answering (SIGSTOP, a
dead link) ends the rotation within seconds and releases the lock; the
message then says which password may be live and that ``muzo-ops secrets
confirm`` finds out and finishes the rotation (it moves the pending file in
when its password works, removes it when the env file's works).

Invariant: some password in the env file or in the pending file always
works (is the server's), and a pending file that may hold the only working
one is never removed or overwritten.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets as pysecrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from muzo_ops import faults
from muzo_ops.env import dotenvx
from muzo_ops.env.envfile import parse_text, with_lines
from muzo_ops.errors import MuzoOpsError, UsageError
from muzo_ops.files import atomic, links, reading, temp
from muzo_ops.files.lock import DEFAULT_TIMEOUT_S, locked
from muzo_ops.mongo.url import with_credentials
from muzo_ops.secrets import audit
from muzo_ops.secrets.commit import commit, record, recover
from muzo_ops.secrets.rotation import DEFAULT_KEEP, keys_file_mode, keys_mode_warnings

ADMIN_URI_VARIABLE = "MUZO_MONGO_ADMIN_URI"
PASSWORD_BYTES = 32
TIMEOUT_MS = 5000
NAME = "DATABASE_URL"
PENDING_SUFFIX = ".pending"


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
    swapped_from: str | None = None  # --swap-users: the previously active user
    created_user: bool = False  # --swap-users: the idle user was created
    audit_error: str | None = None  # the change was made but not recorded (exit 1)

    def to_json(self) -> dict[str, Any]:
        return {"command": "rotate", "env_file": self.path, "variable": NAME, "user": self.user,
                "dry_run": self.dry_run, "ok": self.ok, "old": self.old, "new": self.new, "backup": self.backup,
                "pending": self.pending, "old_password_works": self.old_works,
                "new_password_works": self.new_works, "pruned_backups": self.pruned,
                "warnings": self.warnings, "message": self.message, "swapped_from": self.swapped_from,
                "created_user": self.created_user, "audit_error": self.audit_error}

    def lines(self) -> list[str]:
        if self.dry_run:
            return [f"Would set a new password for MongoDB user {self.user} and update {NAME} in {self.path} "
                    f"({self.old or '-'} → a fresh value). Every process using the old password fails its "
                    "next new connection until it is restarted with the new file."]
        if self.ok and self.swapped_from:
            created = " (created with the same roles)" if self.created_user else ""
            return [f"{NAME} in {self.path} now uses MongoDB user {self.user}{created} with a new password "
                    f"({self.new}); backup {self.backup} (0600). {self.swapped_from} keeps working.",
                    "Redeploy every app with the new file (the deploy for the workers, then the web app), then "
                    f"run `muzo-ops secrets confirm --env-file {self.path}` to retire {self.swapped_from}'s password."]
        if self.ok and self.message:
            return [self.message]
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


def _client(url: str) -> Any:
    """A client whose every wait is bounded: server selection, connect, and each reply."""
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=TIMEOUT_MS,
                                                       connectTimeoutMS=TIMEOUT_MS, socketTimeoutMS=TIMEOUT_MS)
    return client


def authenticates(url: str) -> bool:
    """Whether ``url``'s credentials log in (one fresh connection, closed again; bounded)."""
    from pymongo.errors import OperationFailure, PyMongoError

    client = _client(url)
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


@dataclass
class _Current:
    """The env file and its DATABASE_URL, read under the lock."""

    data: bytes
    text: str
    url: str
    user_raw: str
    user: str
    password: str
    auth_db: str
    mongo: Any


def _load(path: str, environ: Mapping[str, str]) -> _Current:
    from muzo_ops.mongo import url as mongourl

    data = reading.read_bytes(path, what="an env file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        from muzo_ops.errors import EnvFileError

        raise EnvFileError(path, "not UTF-8 text: save the file as UTF-8") from exc
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
    user_raw = mongo.userinfo.partition(":")[0]
    if _hosts_are_atlas(mongo.hosts):
        raise UsageError(f"{path}: {NAME} points at MongoDB Atlas, whose clusters do not accept updateUser "
                         "(database users are managed through the Atlas UI or Admin API): change the "
                         "password there, then put the new URL in with `muzo-ops init-env --set-stdin "
                         f"{NAME}`")
    return _Current(data, text, url, user_raw, unquote(user_raw), mongo.password or "",
                    mongo.option("authSource") or mongo.database or "admin", mongo)


def swap_state_path(path: str) -> str:
    """Where a ``--swap-users`` rotation waiting for ``secrets confirm`` is recorded (no secret in it)."""
    return f"{path}.swap.json"


def idle_user(user: str) -> str:
    """The other user of the pair: ``x_a`` ↔ ``x_b``; a user without suffix pairs with ``<user>_b``."""
    if user.endswith("_a"):
        return user[:-2] + "_b"
    if user.endswith("_b"):
        return user[:-2] + "_a"
    return user + "_b"


def rotate(path: str, *, dry_run: bool = False, confirm: Callable[[str], bool] | None = None,
           keep: int = DEFAULT_KEEP, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
           environ: Mapping[str, str] | None = None, prompt: Callable[[str], str] | None = None,
           on_values: Callable[[Iterable[str]], None] | None = None,
           now: dt.datetime | None = None, swap_users: bool = False) -> MongoResult:
    """Rotate the password in ``DATABASE_URL`` of ``path`` (see the module doc).

    With ``swap_users`` the password changes on the idle user of the pair
    and DATABASE_URL moves to it; the previously active user keeps working
    until ``confirm_swap``.
    """
    environ = os.environ if environ is None else environ
    with locked(path, lock_timeout_s):
        temp.remove_stale(path)
        recover(path)
        current = _load(path, environ)
        links.refuse_hard_links(path)  # before the server changes: the env file could not take the new URL
        if on_values is not None:
            on_values([v for v in (current.url, current.password) if v])
        target = idle_user(current.user) if swap_users else current.user
        result = MongoResult(path, user=target, dry_run=dry_run)
        if dotenvx.file_public_key(current.text) is not None:
            result.warnings += keys_mode_warnings(path, keys_file_mode(path))
        fingerprint = audit.Fingerprinter(path)
        result.old = fingerprint(current.password)
        _check_interrupted(path, current, environ, result, on_values, dry_run)
        if swap_users and os.path.exists(swap_state_path(path)):
            raise UsageError(f"{path}: a --swap-users rotation waits for `muzo-ops secrets confirm` "
                             f"({swap_state_path(path)}): confirm it once every app runs with the new file")
        if not _uses_tls(current.mongo):
            result.warnings.append(f"{NAME} does not use TLS: the new password travels in clear to the server")
        if dry_run:
            return result
        if not swap_users and confirm is not None and not confirm(
                f"Every process using the old password of {current.user} (the web app too, not only the "
                "workers) fails its next new connection after the change. Continue? [y/N] "):
            raise UsageError("not confirmed: nothing changed (use --yes in scripts)")
        admin_uri = _admin_uri(environ, prompt)
        if on_values is not None:
            from muzo_ops.redact.redactor import url_passwords

            on_values([admin_uri, *url_passwords(admin_uri)])
        new_password = pysecrets.token_urlsafe(PASSWORD_BYTES)
        target_raw = quote(target, safe="") if swap_users else current.user_raw
        new_url = with_credentials(current.url, target_raw, new_password)
        if on_values is not None:
            on_values([new_password, new_url])
        new_text = with_lines(parse_text(current.text, path),
                              {NAME: dotenvx.LineWriter(current.text).line(NAME, new_url)})
        pending = pending_path(path)
        try:
            atomic.write(pending, new_text, owner_of=path, lock_of=path)
            result.pending = pending
            if swap_users:
                _set_idle_user(admin_uri, current, target, new_password, result)
            else:
                _update_user(admin_uri, current.auth_db, target, new_password, result, current.url)
            faults.step(faults.PASSWORD_CHANGED)
            result.new_works = authenticates(new_url)
            if not result.new_works:
                result.old_works = authenticates(current.url)
                works = "the OLD password still works" if result.old_works else "NEITHER password works"
                raise MongoRotationError(
                    f"the new password of {target} was set but does not authenticate; {works}. "
                    f"{path} is unchanged; the new URL is in {pending} (0600): once MongoDB answers, run "
                    f"`muzo-ops secrets confirm --env-file {path}`: it moves the pending file in if its password "
                    "works, else set a password with the admin tools")
            faults.step(faults.PASSWORD_CHECKED)
            return _finish(path, current, new_text, new_password, target, result, fingerprint, keep=keep, now=now,
                           swap_users=swap_users)
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (files.lock): say where the new password is
            if not os.path.exists(pending):
                raise
            raise type(exc)(f"the new password of {target} may be set on the server and is kept in {pending} "
                            f"(0600): run `muzo-ops secrets confirm --env-file {path}`, which keeps whichever "
                            "password MongoDB accepts") from None


def path_of(pending: str) -> str:
    """The env file a pending file belongs to."""
    return pending[: -len(PENDING_SUFFIX)]


def pending_path(path: str) -> str:
    """The pending file of a DATABASE_URL rotation: beside the env file's real target (0600)."""
    return os.path.realpath(path) + PENDING_SUFFIX


def _finish(path: str, current: _Current, new_text: str, new_password: str, target: str, result: MongoResult,
            fingerprint: audit.Fingerprinter, *, keep: int, now: dt.datetime | None,
            swap_users: bool = False) -> MongoResult:
    """The server holds the new password: the env file gets the pending text, the pending file goes."""
    extra: dict[str, Any] = {"mongo_user": target}
    if swap_users:
        extra["previous_mongo_user"] = current.user
    done = commit(path, new_text, keep=keep, command="rotate", changes={NAME: (current.password, new_password)},
                  extra=extra, fingerprinter=fingerprint, now=now)
    os.unlink(pending_path(path))
    faults.step(faults.PENDING_REMOVED)
    result.pending = None
    result.backup, result.pruned, result.audit_error = done.backup, done.pruned, done.audit_error
    result.ok = True
    result.new_works = True
    result.old_works = swap_users  # the previous user keeps its password until `secrets confirm`
    result.new = fingerprint(new_password)
    if swap_users:
        state = {"previous_user": current.user, "auth_db": current.auth_db, "new_user": target,
                 "time": (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")}
        atomic.write(swap_state_path(path), json.dumps(state) + "\n", owner_of=path, lock_of=path)
        result.swapped_from = current.user
    return result


def _check_interrupted(path: str, current: _Current, environ: Mapping[str, str], result: MongoResult,
                       on_values: Callable[[Iterable[str]], None] | None, dry_run: bool) -> None:
    """A pending file left by an interrupted rotation may hold the only working password: never overwrite it.

    When the env file's password still works, the pending one was never
    set (or was set on another user): the file is stale and removed. When
    only the pending one works, the rotation stops and says to move it in.
    """
    pending = pending_path(path)
    if not os.path.exists(pending):
        return
    try:
        held = _load(pending, environ)
    except MuzoOpsError:
        held = None
    if held is not None and on_values is not None:
        on_values([held.url, held.password])
    if authenticates(current.url):
        if not dry_run:
            os.unlink(pending)
        why = ("it holds the env file's password: that rotation had finished" if held is not None and
               held.url == current.url else "its password was never set; the env file's still works")
        result.warnings.append(f"removed {pending} left by an interrupted rotation ({why})")
        return
    if held is not None and authenticates(held.url):
        raise MongoRotationError(
            f"an interrupted rotation left {pending}, and its password is the one that works now (the env "
            f"file's no longer does): run `muzo-ops secrets confirm --env-file {path}` to move it into place, "
            "restart the apps, then rotate again if you want")
    raise MongoRotationError(
        f"neither {path} nor the pending file {pending} left by an interrupted rotation authenticates (or "
        "MongoDB is unreachable): check the server, set a password with the admin tools and put the URL in "
        f"with `muzo-ops init-env --set-stdin {NAME}`")


def _set_idle_user(admin_uri: str, current: _Current, target: str, password: str, result: MongoResult) -> None:
    """The idle user gets ``password``; created with the active user's roles when missing."""
    from pymongo.errors import OperationFailure, PyMongoError

    client = _client(admin_uri)
    db = client.get_database(current.auth_db)
    try:
        info = db.command("usersInfo", {"user": target, "db": current.auth_db}).get("users", [])
        if info:
            db.command("updateUser", target, pwd=password)
        else:
            active = db.command("usersInfo", {"user": current.user, "db": current.auth_db}).get("users", [])
            if not active:
                raise MongoRotationError(f"user {current.user} is not in database {current.auth_db}: "
                                         "check authSource in DATABASE_URL; nothing changed")
            db.command("createUser", target, pwd=password, roles=active[0].get("roles", []))
            result.created_user = True
    except (OperationFailure, PyMongoError) as exc:
        os.unlink(result.pending or "")
        result.pending = None
        reason = exc.details.get("codeName") if isinstance(exc, OperationFailure) and exc.details else None
        raise MongoRotationError(
            f"cannot set the password of the idle user {target} ({reason or type(exc).__name__}); "
            f"{current.user} and its password still work and the env file is unchanged: check the admin "
            "connection and its userAdmin role") from None
    finally:
        client.close()


def confirm_swap(path: str, *, lock_timeout_s: float = DEFAULT_TIMEOUT_S, environ: Mapping[str, str] | None = None,
                 prompt: Callable[[str], str] | None = None,
                 on_values: Callable[[Iterable[str]], None] | None = None,
                 now: dt.datetime | None = None) -> MongoResult:
    """Finish a DATABASE_URL rotation: an interrupted one (a pending file) or a ``--swap-users`` one.

    A pending file left when MongoDB stopped answering: whichever password
    logs in wins (``resolve_pending``). A swap: after every app runs with
    the swapped DATABASE_URL, the previous user's password is replaced by a
    random one nobody keeps, so nothing still holding the old one can log
    in; the user itself stays (the next swap reuses it).
    """
    environ = os.environ if environ is None else environ
    with locked(path, lock_timeout_s):
        recover(path)
        if os.path.exists(pending_path(path)):
            return resolve_pending(path, environ=environ, on_values=on_values, now=now)
        state_file = swap_state_path(path)
        try:
            with open(state_file, encoding="utf-8") as handle:
                state = json.load(handle)
        except FileNotFoundError:
            raise UsageError(f"{path}: no DATABASE_URL rotation waits for confirmation (no pending file, no "
                             "--swap-users state)") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"{state_file}: unreadable ({exc}): remove it after checking the users") from None
        previous, auth_db = str(state["previous_user"]), str(state["auth_db"])
        current = _load(path, environ)
        if current.user == previous:
            raise UsageError(f"{path}: DATABASE_URL still uses {previous}: the swap was rolled back; "
                             f"remove {state_file} or rotate again")
        admin_uri = _admin_uri(environ, prompt)
        if on_values is not None:
            from muzo_ops.redact.redactor import url_passwords

            on_values([admin_uri, *url_passwords(admin_uri), current.url, current.password])
        _update_user(admin_uri, auth_db, previous, pysecrets.token_urlsafe(PASSWORD_BYTES),
                     MongoResult(path), current.url)
        os.unlink(state_file)
        result = MongoResult(path, user=previous, ok=True, old_works=False)
        result.message = (f"The previous user {previous} no longer has a usable password; "
                          f"DATABASE_URL uses {current.user}.")
        result.audit_error = record(path, "confirm", {f"{NAME} ({previous})": (None, None)},
                                    extra={"mongo_user": current.user, "previous_mongo_user": previous}, now=now)
        return result


def resolve_pending(path: str, *, keep: int = DEFAULT_KEEP, environ: Mapping[str, str] | None = None,
                    on_values: Callable[[Iterable[str]], None] | None = None,
                    now: dt.datetime | None = None) -> MongoResult:
    """An interrupted rotation's pending file: move it in when its password logs in, remove it when
    the env file's does, else stop (MongoRotationError, nothing changed). Call under the env file's lock.

    Invariant: a pending file is removed only once a password in the env
    file is known to log in, or when the env file holds its URL already.
    """
    environ = os.environ if environ is None else environ
    pending = pending_path(path)
    current = _load(path, environ)
    held = _load(pending, environ)
    if on_values is not None:
        on_values([current.url, current.password, held.url, held.password])
    result = MongoResult(path, user=held.user)
    fingerprint = audit.Fingerprinter(path)
    result.old = fingerprint(current.password)
    if held.url == current.url:  # stopped after the env file got the new URL: the rotation had finished
        os.unlink(pending)
        result.ok, result.new = True, result.old
        result.message = (f"{path} already holds the URL in {pending} (the rotation had finished; it is audited): "
                          f"removed {pending}; nothing else changed.")
        return result
    if authenticates(held.url):
        new_text = with_lines(parse_text(current.text, path),
                              {NAME: dotenvx.LineWriter(current.text).line(NAME, held.url)})
        _finish(path, current, new_text, held.password, held.user, result, fingerprint, keep=keep, now=now)
        result.message = (f"The password in {pending} is the one MongoDB accepts: {NAME} in {path} now uses it "
                          f"({result.new}); backup {result.backup} (0600). Restart every app that reads the file.")
        return result
    if authenticates(current.url):
        os.unlink(pending)
        result.ok, result.old_works, result.new_works = True, True, False
        result.message = (f"The password in {path} is the one MongoDB accepts (the interrupted rotation never "
                          f"changed it): removed {pending}; nothing else changed.")
        return result
    result.pending = pending
    raise MongoRotationError(
        f"neither the password in {path} nor the one in {pending} logs in (or MongoDB does not answer): nothing "
        f"changed; check the server, then run `muzo-ops secrets confirm --env-file {path}` again")


def _update_user(admin_uri: str, auth_db: str, user: str, password: str, result: MongoResult,
                 old_url: str) -> None:
    from pymongo.errors import OperationFailure, PyMongoError, ServerSelectionTimeoutError

    pending = result.pending or ""
    client = _client(admin_uri)
    try:
        client.get_database(auth_db).command("updateUser", user, pwd=password)
    except OperationFailure as exc:
        if pending:
            os.unlink(pending)
        result.pending = None
        reason = exc.details.get("codeName") if exc.details else None
        raise MongoRotationError(
            f"updateUser of {user} on database {auth_db} was refused ({reason or exc.code}); the old password "
            "still works and the env file is unchanged: check the admin user has the userAdmin role there") from None
    except ServerSelectionTimeoutError as exc:  # no server was selected: the command was never sent
        if pending:
            os.unlink(pending)
        result.pending = None
        raise MongoRotationError(
            f"cannot reach MongoDB with the admin connection ({type(exc).__name__}): nothing was changed, the "
            "old password still works and the env file is unchanged: check the host and try again") from None
    except PyMongoError as exc:
        # the server may or may not have applied it: find out which password works
        result.new_works = None
        old_works = authenticates(old_url)
        if old_works:
            if pending:
                os.unlink(pending)
            result.pending = None
            raise MongoRotationError(
                f"MongoDB did not complete updateUser ({type(exc).__name__}); the old password still works and "
                "the env file is unchanged: check the server and try again") from None
        raise MongoRotationError(
            f"MongoDB stopped answering during updateUser ({type(exc).__name__}, after {TIMEOUT_MS // 1000} s): "
            f"either the old password (in the env file) or the new one (kept in {pending}, 0600) is live now. "
            f"Once MongoDB answers, run `muzo-ops secrets confirm --env-file {path_of(pending)}`: it tries both, "
            "moves the pending file into place if the new one works and removes it if the old one does") from None
    finally:
        client.close()


def rotate_cli(path: str, *, dry_run: bool, yes: bool, keep: int, lock_timeout_s: float,
               on_values: Callable[[Iterable[str]], None], say: Callable[[str], None],
               swap_users: bool = False) -> MongoResult:
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
                  prompt=prompt, on_values=on_values, swap_users=swap_users)


def confirm_cli(path: str, *, lock_timeout_s: float, on_values: Callable[[Iterable[str]], None]) -> MongoResult:
    """``confirm_swap`` with the hidden prompt when on a terminal."""
    import getpass
    import sys

    return confirm_swap(path, lock_timeout_s=lock_timeout_s, on_values=on_values,
                        prompt=getpass.getpass if sys.stdin.isatty() else None)
