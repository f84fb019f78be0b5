"""Rotating generated secrets with a grace period; retiring, rolling back, keeping N backups.

``rotate`` replaces each generated secret with a fresh value and, for a
secret the schema gives a ``…_PREVIOUS`` variable (NEXTAUTH_SECRET,
MUZO_HANDLER_SIGNING_SECRET), moves the old one there, so sessions and
signatures made with it stay valid while the apps accept both. Every change
of an env file here:

1. holds the exclusive lock ``<envfile>.lock`` (``files.lock``), so two
   runners never lose an update;
2. reads the file, computes the new text (changing only the lines it must);
3. writes it through ``secrets.commit`` (``files.atomic``: backup
   ``<envfile>.N.bak`` 0600, temporary file, fsync, rename, folder fsync):
   the env file is at every instant the complete old or new one;
4. keeps the newest ``keep`` backups (5) and appends an audit record
   (fingerprints only).

Invariants. rotate: after any interruption (kill -9, SIGTERM, SIGINT after
any step) the env file is either the old or the new one, whole, mode 0600,
and a rerun completes the rotation (audited once: ``commit.recover``); the
newest backup is the file before the newest change. retire: the same, with
only the ``…_PREVIOUS`` line emptied. rollback: a rollback restores exactly
the backup's contents, or leaves the file as it was (a rerun then restores
them), and the file it replaced is kept as a backup first; a rollback that
would install a MongoDB password the server no longer accepts, or a file no
key at hand opens, is refused. tests/test_secrets_boundaries.py stops each
command after every step (``muzo_ops.faults``) and checks these.

An encrypted file (dotenvx header) stays encrypted: new and moved sensitive
values are encrypted with the header's public key, so rotation needs no
private key. No function returns or logs a value.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from muzo_ops.constants import SESSION_LIFETIME_DAYS
from muzo_ops.env import dotenvx, schema
from muzo_ops.env.envfile import parse_text, with_lines
from muzo_ops.errors import EnvFileError, MuzoOpsError, UsageError
from muzo_ops.files import links, reading, temp
from muzo_ops.files.backups import numbered
from muzo_ops.files.lock import DEFAULT_TIMEOUT_S, locked
from muzo_ops.secrets import audit
from muzo_ops.secrets.commit import commit, recover

# next-auth's default session maxAge (30 days): a previous secret is needed this long.
SESSION_LIFETIME = dt.timedelta(days=SESSION_LIFETIME_DAYS)
DEFAULT_KEEP = 5
def previous_of() -> dict[str, str]:
    """Each secret with a grace period and the variable holding its previous value: the schema's
    pairs (``schema.PREVIOUS_OF``: every ``X`` it also has ``X_PREVIOUS`` for)."""
    return schema.PREVIOUS_OF


class RotationRefused(MuzoOpsError):
    """A rotation that would break something (exit 2): the message says how to proceed."""


@dataclass
class Change:
    """One variable's change, by fingerprint (``None``: empty, absent, or encrypted without the key)."""

    name: str
    action: str  # "rotated", "moved from NAME", "removed", "restored"
    old: str | None
    new: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "old": self.old, "new": self.new}


@dataclass
class Result:
    """What a command did (or, with ``dry_run``, would do); names and fingerprints only."""

    command: str
    path: str
    dry_run: bool = False
    changes: list[Change] = field(default_factory=list)
    backup: str | None = None
    pruned: list[str] = field(default_factory=list)
    encrypted: bool = False
    warnings: list[str] = field(default_factory=list)
    undid: dict[str, Any] | None = None  # rollback: the audit record of the change undone
    audit_error: str | None = None  # the change was made but not recorded (exit 1)

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "env_file": self.path, "dry_run": self.dry_run,
                "changes": [c.to_json() for c in self.changes], "backup": self.backup,
                "pruned_backups": self.pruned, "encrypted": self.encrypted, "warnings": self.warnings,
                "undid": self.undid, "audit_error": self.audit_error}


def read_env_text(path: str) -> str:
    """The env file's text (bounded, UTF-8); EnvFileError says why it cannot be read. Call under
    its lock, which also clears temporary files a killed writer left (of the file and the audit key)
    and audits a change a killed writer made (``commit.recover``)."""
    temp.remove_stale(path)
    audit.remove_stale_key_copies(path)
    text = reading.read_text(path, what="an env file", missing="no such file: create it with `muzo-ops init-env`")
    recover(path)
    return text


def keys_file_mode(path: str) -> int | None:
    """The mode of the ``.env.keys`` beside ``path`` when its group or others may read it (else None)."""
    return reading.loose_mode(dotenvx.keys_path(path))


def keys_mode_warnings(path: str, mode: int | None) -> list[str]:
    """One warning when ``.env.keys`` had the loose ``mode`` (``keys_file_mode`` taken before the
    command read it): the private keys in it open the env file for whoever read them.

    Warned, not refused: the keys were exposed before this command ran, refusing would not take
    that back but would block a decrypt or rollback in an incident, and the apps read the file
    whatever its mode. A command that rewrote the keys file left it 0600 (``files.atomic``)."""
    if mode is None:
        return []
    keys_file = dotenvx.keys_path(path)
    if keys_file_mode(path) is None:
        return [f"{keys_file} was readable by its group or others (mode {mode:04o}) until this command "
                "rewrote it 0600: a key read there still decrypts the backups made with it"]
    return [f"{keys_file} is readable by its group or others (mode {mode:04o}) and holds the private key of "
            f"{path}: run `chmod 600 {keys_file}` (and `muzo-ops secrets rekey` if anyone may have read it)"]


def _plain(value: str | None, path: str, text: str, environ: Mapping[str, str] | None,
           name: str) -> str | None:
    """A value as the apps see it: decrypted when a key is at hand, None when it cannot be."""
    if not value:
        return None
    if not dotenvx.is_encrypted(value):
        return value
    _key_name, keys = dotenvx.private_keys_for(path, text, environ)
    if not keys:
        return None
    found = dotenvx.file_public_key(text)
    return dotenvx.decrypt_value(name, value, keys, found[1] if found else None, path)


# ----- rotate -------------------------------------------------------------------------------


def default_names() -> list[str]:
    from muzo_ops.env import generate

    return [v.name for v in generate.generated_variables()]


def rotate(path: str, names: list[str] | None = None, *, dry_run: bool = False, keep: int = DEFAULT_KEEP,
           force: bool = False, lock_timeout_s: float = DEFAULT_TIMEOUT_S, now: dt.datetime | None = None,
           environ: Mapping[str, str] | None = None,
           on_values: Callable[[Iterable[str]], None] | None = None) -> Result:
    """Rotate ``names`` (default: every generated secret) in the env file at ``path``.

    ``on_values`` receives every old and new value (the CLI's redactor), so
    nothing printed afterwards can show them. RotationRefused when a
    previous secret is still inside the session lifetime (``force`` drops
    it anyway). Invariant: the env file is the complete old or the complete
    new file, and the newest backup is the file before the newest change.
    """
    from muzo_ops.env import generate

    now = now or dt.datetime.now(dt.UTC)
    wanted = list(dict.fromkeys(names or default_names()))
    generators = {name: generate.generator_for(name) for name in wanted}  # SchemaError for the rest
    optional_unless_present = set() if names else {n for n in wanted if not schema.get(n).required}
    if keep < 1:
        raise UsageError("--keep must be at least 1: the last backup is what rollback restores")
    with locked(path, lock_timeout_s):
        text = read_env_text(path)
        parsed = parse_text(text, path)
        raw = parsed.raw()
        # with no names: every generated secret the file holds, and the required ones it lacks
        wanted = [n for n in wanted if n not in optional_unless_present or raw.get(n)]
        writer = dotenvx.LineWriter(text)
        fingerprint = audit.Fingerprinter(path)
        result = Result("rotate", path, dry_run=dry_run, encrypted=writer.encrypted)
        if writer.encrypted:
            result.warnings += keys_mode_warnings(path, keys_file_mode(path))
        lines: dict[str, str] = {}
        additions: list[str] = []
        changes_for_log: dict[str, tuple[str | None, str | None]] = {}
        seen_values: list[str] = []

        def put(name: str, value: str) -> None:
            if name in raw:
                lines[name] = writer.line(name, value)
            else:
                additions.append(writer.addition(name, value))

        for name in wanted:
            old_raw = raw.get(name, "")
            old_plain = _plain(old_raw, path, text, environ, name)
            fresh = generate.generate(generators[name])
            seen_values += [v for v in (old_plain, fresh) if v]
            previous = previous_of().get(name)
            if previous is not None and old_raw:
                held_raw = raw.get(previous, "")
                held = _plain(held_raw, path, text, environ, previous)
                if held_raw and not force:
                    age = audit.previous_secret_age(path, name, now)
                    if age is None or age < SESSION_LIFETIME:
                        since = ("at an unknown time (no audit record)" if age is None
                                 else f"{age.days} days ago")
                        raise RotationRefused(
                            f"{path}: {previous} still holds the secret replaced {since}; sessions "
                            f"signed with it are valid for {SESSION_LIFETIME.days} days and would end: "
                            f"wait, run `muzo-ops secrets retire {previous}` first, or use --force")
                if held:
                    seen_values.append(held)
                put(previous, old_raw)
                result.changes.append(Change(previous, f"moved from {name}", fingerprint(held),
                                             fingerprint(old_plain)))
                changes_for_log[previous] = (held, old_plain)
                if old_plain is None:
                    result.warnings.append(f"{name} is encrypted and no private key is at hand: "
                                           "its fingerprint is not recorded")
            put(name, fresh)
            result.changes.append(Change(name, "rotated", fingerprint(old_plain), fingerprint(fresh)))
            changes_for_log[name] = (old_plain, fresh)
        if on_values is not None:
            on_values(seen_values)
        new_text = with_lines(parsed, lines, additions)
        if dry_run:
            for change in result.changes:
                if change.action == "rotated":
                    change.new = None  # a dry run draws no value that will ever be used
            return result
        done = commit(path, new_text, keep=keep, command="rotate", changes=changes_for_log,
                      fingerprinter=fingerprint, now=now)
        result.backup, result.pruned, result.audit_error = done.backup, done.pruned, done.audit_error
        return result


# ----- retire -------------------------------------------------------------------------------


def retire(path: str, name: str, *, keep: int = DEFAULT_KEEP, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
           now: dt.datetime | None = None, environ: Mapping[str, str] | None = None,
           on_values: Callable[[Iterable[str]], None] | None = None) -> Result:
    """Empty the previous value of ``name`` (``NEXTAUTH_SECRET`` or ``NEXTAUTH_SECRET_PREVIOUS``).

    Sessions signed with it end; a warning says so when it is inside the
    session lifetime. Invariant: the env file is the complete old file or
    the old file with only that line emptied.
    """
    now = now or dt.datetime.now(dt.UTC)
    pairs = previous_of()
    current = next((c for c, p in pairs.items() if name in (c, p)), None)
    if current is None:
        choices = ", ".join(sorted({*pairs, *pairs.values()}))
        raise UsageError(f"{name} has no previous value to retire: choose one of {choices}")
    previous = pairs[current]
    with locked(path, lock_timeout_s):
        text = read_env_text(path)
        parsed = parse_text(text, path)
        raw = parsed.raw()
        held_raw = raw.get(previous, "")
        result = Result("retire", path, encrypted=dotenvx.file_public_key(text) is not None)
        if not held_raw:
            result.warnings.append(f"{previous} is already empty: nothing to retire")
            return result
        held = _plain(held_raw, path, text, environ, previous)
        if held and on_values is not None:
            on_values([held])
        age = audit.previous_secret_age(path, current, now)
        if age is not None and age < SESSION_LIFETIME:
            result.warnings.append(
                f"{current} was rotated {age.days} days ago: sessions signed with the retired secret "
                f"(up to {SESSION_LIFETIME.days} days old) now have to sign in again")
        fingerprint = audit.Fingerprinter(path)
        new_text = with_lines(parsed, {previous: f"{previous}=\n"})
        result.changes.append(Change(previous, "removed", fingerprint(held), None))
        done = commit(path, new_text, keep=keep, command="retire", changes={previous: (held, None)},
                      fingerprinter=fingerprint, now=now)
        result.backup, result.pruned, result.audit_error = done.backup, done.pruned, done.audit_error
        return result


# ----- rollback -----------------------------------------------------------------------------


def rollback(path: str, *, keep: int = DEFAULT_KEEP, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
             now: dt.datetime | None = None, environ: Mapping[str, str] | None = None,
             on_values: Callable[[Iterable[str]], None] | None = None) -> Result:
    """Restore the newest backup not yet restored; the current file is backed up first.

    Rolling back twice undoes two changes (backups made by a rollback,
    backups already restored, and backups identical to the file, which
    undo nothing, are skipped). ``undid`` is the audit record
    of the change whose backup was restored. Invariant: the env file is the
    chosen backup or stays as it was, and a file the apps could not use is
    never installed: a backup whose DATABASE_URL password the server no
    longer accepts (``rotate DATABASE_URL`` changed it there) is refused
    (RotationRefused, nothing changed); undoing a ``rekey`` puts the old
    private key back into ``.env.keys`` from the copy rekey kept (0600).
    """
    now = now or dt.datetime.now(dt.UTC)
    with locked(path, lock_timeout_s):
        text = read_env_text(path)
        records = audit.read(path)
        skip = set()
        for record in records:
            if record.command == "rollback":
                skip.add(str(record.extra.get("restored", "")))
                skip.add(str(record.extra.get("backup", "")))
        chosen, restored_text = _newest_restorable(path, text, skip)
        restored_raw = parse_text(restored_text, chosen).raw()  # a damaged backup is refused, not installed
        current_raw = parse_text(text, path).raw()
        undone = next((r for r in reversed(records)
                       if r.extra.get("backup") == os.path.basename(chosen) and r.command != "rollback"), None)
        keys_backup = _keys_backup_of(path, undone)
        for rewritten in (path, *([dotenvx.keys_path(path)] if keys_backup is not None else [])):
            links.refuse_hard_links(rewritten)  # before .env.keys changes: refused means nothing written
        fingerprint = audit.Fingerprinter(path)
        result = Result("rollback", path, encrypted=dotenvx.file_public_key(restored_text) is not None)
        keys_mode = keys_file_mode(path)
        changes_for_log: dict[str, tuple[str | None, str | None]] = {}
        values: list[str] = []
        restored_env = dict(environ if environ is not None else os.environ)
        if keys_backup is not None:  # the restored file opens with the key rekey replaced
            private_name, old_keys = keys_backup
            restored_env[private_name] = ",".join(old_keys)
        _refuse_unopenable(path, chosen, text, restored_text, restored_env)
        for name in sorted(set(current_raw) | set(restored_raw)):
            before, after = current_raw.get(name, ""), restored_raw.get(name, "")
            if before == after:
                continue
            old_plain = _plain(before, path, text, environ, name)
            new_plain = _plain(after, chosen, restored_text, restored_env, name)
            values += [v for v in (old_plain, new_plain) if v]
            result.changes.append(Change(name, "restored", fingerprint(old_plain), fingerprint(new_plain)))
            changes_for_log[name] = (old_plain, new_plain)
        if on_values is not None:
            on_values(values)
        if "DATABASE_URL" in changes_for_log:
            old_url, new_url = changes_for_log["DATABASE_URL"]
            if old_url != new_url or new_url is None:
                _refuse_dead_database_password(path, chosen, restored_raw.get("DATABASE_URL", ""), old_url, new_url)
        result.undid = undone.to_json() if undone else None
        extra: dict[str, Any] = {"restored": os.path.basename(chosen),
                                 "undid": (f"{undone.command} of {', '.join(undone.variables)} at {undone.time}"
                                           if undone else "a change with no audit record")}
        if keys_backup is not None:
            private_name, old_keys = keys_backup
            extra["keys_backup"] = _restore_private_key(path, private_name, old_keys)
        # keep the restored backup until it is pruned: the log marks it as used
        done = commit(path, restored_text, keep=keep, command="rollback", changes=changes_for_log, extra=extra,
                      fingerprinter=fingerprint, now=now)
        if keys_backup is not None:
            from muzo_ops.env.dotenvx import keys_path, set_private_key

            set_private_key(keys_path(path), keys_backup[0], ",".join(keys_backup[1]),
                            os.path.basename(path), owner_of=path)
        result.backup, result.pruned, result.audit_error = done.backup, done.pruned, done.audit_error
        if result.encrypted or dotenvx.file_public_key(text) is not None:
            result.warnings += keys_mode_warnings(path, keys_mode)
        return result


def _newest_restorable(path: str, text: str, skip: set[str]) -> tuple[str, str]:
    """The newest backup not yet restored that differs from the file, and its text.

    A backup identical to the file undoes nothing: a writer killed between
    linking its backup and renaming the new file leaves one, and restoring
    it would make the rollback a no-op that the next one takes for done.
    """
    for _number, candidate in reversed(numbered(path)):
        if os.path.basename(candidate) in skip:
            continue
        candidate_text = reading.read_text(candidate, what="an env file backup")
        if candidate_text != text:
            return candidate, candidate_text
    raise EnvFileError(path, "no backup left to restore (rollback restores the backups that "
                       "rotate, retire, encrypt, decrypt and rekey make; each is restored once)")


def _keys_backup_of(path: str, undone: audit.Record | None) -> tuple[str, list[str]] | None:
    """``(private key name, old keys)`` kept by the ``rekey`` being undone, or None for other changes."""
    if undone is None or undone.command != "rekey" or not undone.extra.get("keys_backup"):
        return None
    kept = os.path.join(os.path.dirname(dotenvx.keys_path(path)), str(undone.extra["keys_backup"]))
    private_name = str(undone.extra.get("private_key_name", ""))
    try:
        old = dotenvx.read_keys_file(kept).get(private_name, "")
    except dotenvx.DotenvxError as exc:
        raise RotationRefused(f"{path}: undoing the rekey needs the old private key kept in {kept}: {exc}; "
                              "nothing changed") from None
    keys = [k.strip() for k in old.split(",") if k.strip()]
    if not keys:
        raise RotationRefused(f"{path}: undoing the rekey needs the old private key, and {kept} (kept by rekey) "
                              f"is gone or lacks {private_name}: restore it first; nothing changed")
    return private_name, keys


def _restore_private_key(path: str, private_name: str, old_keys: list[str]) -> str | None:
    """Before the env file goes back to the old key: ``.env.keys`` is kept as a backup and holds
    old and new keys (so the file opens at every instant); the keys backup's name."""
    from muzo_ops.files import backups as numbered_backups

    keys_file = dotenvx.keys_path(path)
    kept = numbered_backups.make(keys_file)
    current = dotenvx.read_keys_file(keys_file).get(private_name, "")
    both = list(dict.fromkeys([*old_keys, *(k.strip() for k in current.split(",") if k.strip())]))
    dotenvx.set_private_key(keys_file, private_name, ",".join(both), os.path.basename(path), owner_of=path)
    return os.path.basename(kept) if kept else None


def _refuse_unopenable(path: str, chosen: str, text: str, restored_text: str,
                       restored_env: Mapping[str, str]) -> None:
    """RotationRefused when the backup is encrypted for another key than the file and no key at
    hand (environment, ``.env.keys``, the copy a rekey kept) opens it: the apps could not read it."""
    def encrypted_for(content: str) -> str | None:
        found = dotenvx.file_public_key(content)
        if found is None or not any(dotenvx.is_encrypted(v) for _k, v in dotenvx.bindings(content)):
            return None
        return found[1]

    restored_key = encrypted_for(restored_text)
    if restored_key is None or restored_key == encrypted_for(text):
        return  # nothing encrypted, or encrypted for the key the apps use now
    private_name, keys = dotenvx.private_keys_for(path, restored_text, restored_env)
    for key in keys:
        try:
            if dotenvx.public_key_of(key, private_name) == restored_key:
                return
        except dotenvx.DotenvxError:
            continue
    raise RotationRefused(f"{path}: {os.path.basename(chosen)} is encrypted for a key that is no longer at hand "
                          f"(not in the environment, {dotenvx.KEYS_FILE} or a keys backup a rekey kept): the apps "
                          f"could not decrypt it. Put its {private_name} in {dotenvx.KEYS_FILE} first; nothing "
                          "changed")


def _refuse_dead_database_password(path: str, chosen: str, restored_raw: str, current_url: str | None,
                                   restored_url: str | None) -> None:
    """RotationRefused when the backup's DATABASE_URL would not log in (nothing changed yet)."""
    from muzo_ops.secrets.mongo_password import authenticates

    if not restored_raw:
        return  # an empty URL was the state before: nothing to check against a server
    if restored_url is None:
        raise RotationRefused(f"{path}: the DATABASE_URL in {os.path.basename(chosen)} is encrypted and no private "
                              "key is at hand to check it still logs in to MongoDB: set the key; nothing changed")
    if authenticates(restored_url):
        return
    current = ("the current one still works" if current_url and authenticates(current_url)
               else "the current one does not work either (or MongoDB is unreachable)")
    raise RotationRefused(
        f"{path}: the DATABASE_URL in {os.path.basename(chosen)} does not log in to MongoDB ({current}): "
        "its password was replaced on the server by `secrets rotate DATABASE_URL`, so restoring it would lock "
        "the apps out. Nothing changed. To change the password again, run `muzo-ops secrets rotate "
        "DATABASE_URL`; to undo other changes, edit them with `muzo-ops init-env --set`")
