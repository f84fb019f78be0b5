"""Rotating generated secrets with a grace period; retiring, rolling back, keeping N backups.

``rotate`` replaces each generated secret (NEXTAUTH_SECRET) with a fresh
value and moves the old one to its ``…_PREVIOUS`` variable, so sessions
signed with it stay valid while next-auth tries both (``secret: [current,
previous]``). Every change of an env file here:

1. holds the exclusive lock ``<envfile>.lock`` (``filelock.locked``), so two
   runners never lose an update;
2. reads the file, computes the new text (changing only the lines it must);
3. writes a backup ``<envfile>.N.bak`` (N = highest + 1, mode 0600) through
   a temporary file, fsync and link: a backup is complete or absent;
4. writes the new file the same way (temporary file, fsync, rename, folder
   fsync): the env file is at every instant the complete old or new one;
5. keeps the newest ``keep`` backups (5) and appends an audit record
   (fingerprints only).

An encrypted file (dotenvx header) stays encrypted: new and moved sensitive
values are encrypted with the header's public key, so rotation needs no
private key. No function returns or logs a value.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from muzo_ops.constants import BACKUP_SUFFIX
from muzo_ops.env import dotenvx, schema
from muzo_ops.errors import MuzoOpsError, UsageError
from muzo_ops.files.lock import DEFAULT_TIMEOUT_S, locked
from muzo_ops.secrets import audit

# next-auth's default session maxAge (30 days): a previous secret is needed this long.
SESSION_LIFETIME = dt.timedelta(days=30)
DEFAULT_KEEP = 5
# Each secret with a grace period and the variable holding its previous value.
PREVIOUS_OF: dict[str, str] = {"NEXTAUTH_SECRET": "NEXTAUTH_SECRET_PREVIOUS"}


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

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "env_file": self.path, "dry_run": self.dry_run,
                "changes": [c.to_json() for c in self.changes], "backup": self.backup,
                "pruned_backups": self.pruned, "encrypted": self.encrypted, "warnings": self.warnings,
                "undid": self.undid}


# ----- files: backups, atomic writes, line edits -----------------------------------------


def backups(path: str) -> list[tuple[int, str]]:
    """``(N, path)`` of every ``<target>.N.bak`` (a symlink's target), oldest (lowest N) first."""
    target = os.path.realpath(path)
    pattern = re.compile(re.escape(os.path.basename(target)) + r"\.(\d+)" + re.escape(BACKUP_SUFFIX) + r"\Z")
    found = []
    for candidate in glob.glob(glob.escape(target) + ".*" + BACKUP_SUFFIX):
        match = pattern.match(os.path.basename(candidate))
        if match:
            found.append((int(match.group(1)), candidate))
    return sorted(found)


def write_atomic(path: str, text: str) -> None:
    """``envfile.write_atomic``: temporary file beside the target, fsync, rename; owner and 0600 kept."""
    from muzo_ops.env import envfile

    envfile.write_atomic(path, text)


def make_backup(path: str) -> str:
    """``envfile.backup``: the next ``<target>.N.bak`` (0600), complete or not at all."""
    from muzo_ops.env import envfile

    made = envfile.backup(path)
    if made is None:
        from muzo_ops.errors import EnvFileError

        raise EnvFileError(path, "disappeared while it was locked: check who else writes it")
    return made


def prune_backups(path: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` backups (they hold old secrets); the deleted paths."""
    removed = []
    for _n, old in backups(path)[:-keep] if keep > 0 else backups(path):
        os.unlink(old)
        removed.append(old)
    return removed


def remove_stale_temps(path: str) -> None:
    """Temporary files a killed writer left beside ``path`` (call under the lock)."""
    from muzo_ops.env import envfile

    envfile.remove_stale_temps(path)


def read_bytes(path: str) -> bytes:
    from muzo_ops.errors import EnvFileError

    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise EnvFileError(path, "no such file: create it with `muzo-ops init-env`") from exc
    except OSError as exc:
        raise EnvFileError(path, f"cannot read: {exc.strerror}") from exc


def decode_text(path: str, data: bytes) -> str:
    from muzo_ops.errors import EnvFileError

    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvFileError(path, "not UTF-8 text: save the file as UTF-8") from exc


def apply_lines(text: str, path: str, lines: Mapping[str, str], additions: Iterable[str] = ()) -> str:
    """``text`` with the last binding of each name in ``lines`` replaced by that full line.

    Every other statement is kept byte for byte; ``additions`` (full lines)
    are appended after a blank line.
    """
    from muzo_ops.env.envfile import parse_text

    parsed = parse_text(text, path)
    last = {e.key: i for i, e in enumerate(parsed.entries) if e.key is not None}
    parts = []
    for index, entry in enumerate(parsed.entries):
        if entry.key is not None and entry.key in lines and last[entry.key] == index:
            parts.append(dotenvx.reframe(entry, lines[entry.key]))  # indent, `export `, comment kept
        else:
            parts.append(entry.text)
    out = "".join(parts)
    extra = "".join(additions)
    if extra:
        if out and not out.endswith("\n"):
            out += "\n"
        out += ("\n" if out else "") + extra
    return out


class LineWriter:
    """Formats lines for one env file: encrypted (single-quoted) when the file is and the value is sensitive."""

    def __init__(self, text: str) -> None:
        found = dotenvx.file_public_key(text)
        self.public_hex = found[1] if found else None

    @property
    def encrypted(self) -> bool:
        return self.public_hex is not None

    def line(self, name: str, value: str) -> str:
        from muzo_ops.env import schema

        var = schema.BY_NAME.get(name)
        if self.public_hex is not None and value and not dotenvx.is_encrypted(value) and (
                var is None or var.sensitive):
            return dotenvx.encrypted_line(name, self.public_hex, value)
        if dotenvx.is_encrypted(value):
            return f"{name}='{value}'\n"
        return dotenvx.plain_line(name, value)

    def addition(self, name: str, value: str) -> str:
        from muzo_ops.env import schema

        var = schema.BY_NAME.get(name)
        head = ""
        if var is not None:
            flag = "REQUIRED" if var.required else "OPTIONAL"
            head = f"# {var.description} [{flag}; {var.apps_label}]\n"
        return head + self.line(name, value)


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


def _age_of_previous(path: str, name: str, now: dt.datetime) -> dt.timedelta | None:
    record = audit.last_change(path, name, commands=("rotate",))
    when = record.when if record else None
    return None if when is None else now - when


def rotate(path: str, names: list[str] | None = None, *, dry_run: bool = False, keep: int = DEFAULT_KEEP,
           force: bool = False, lock_timeout_s: float = DEFAULT_TIMEOUT_S, now: dt.datetime | None = None,
           environ: Mapping[str, str] | None = None,
           on_values: Callable[[Iterable[str]], None] | None = None) -> Result:
    """Rotate ``names`` (default: every generated secret) in the env file at ``path``.

    ``on_values`` receives every old and new value (the CLI's redactor), so
    nothing printed afterwards can show them. RotationRefused when a
    previous secret is still inside the session lifetime (``force`` drops
    it anyway).
    """
    from muzo_ops.env import generate

    now = now or dt.datetime.now(dt.UTC)
    wanted = list(dict.fromkeys(names or default_names()))
    generators = {name: generate.generator_for(name) for name in wanted}  # SchemaError for the rest
    optional_unless_present = set() if names else {n for n in wanted if not schema.get(n).required}
    if keep < 1:
        raise UsageError("--keep must be at least 1: the last backup is what rollback restores")
    with locked(path, lock_timeout_s):
        remove_stale_temps(path)
        data = read_bytes(path)
        text = decode_text(path, data)
        from muzo_ops.env.envfile import parse_text

        raw = parse_text(text, path).raw()
        # with no names: every generated secret the file holds, and the required ones it lacks
        wanted = [n for n in wanted if n not in optional_unless_present or raw.get(n)]
        writer = LineWriter(text)
        fingerprint = audit.Fingerprinter(path)
        result = Result("rotate", path, dry_run=dry_run, encrypted=writer.encrypted)
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
            previous = PREVIOUS_OF.get(name)
            if previous is not None and old_raw:
                held_raw = raw.get(previous, "")
                held = _plain(held_raw, path, text, environ, previous)
                if held_raw and not force:
                    age = _age_of_previous(path, name, now)
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
        new_text = apply_lines(text, path, lines, additions)
        if dry_run:
            for change in result.changes:
                if change.action == "rotated":
                    change.new = None  # a dry run draws no value that will ever be used
            return result
        result.backup = make_backup(path)
        write_atomic(path, new_text)
        result.pruned = prune_backups(path, keep)
        audit.append(path, "rotate", changes_for_log, extra={"backup": os.path.basename(result.backup)},
                     fingerprinter=fingerprint, now=now)
        return result


# ----- retire -------------------------------------------------------------------------------


def retire(path: str, name: str, *, keep: int = DEFAULT_KEEP, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
           now: dt.datetime | None = None, environ: Mapping[str, str] | None = None,
           on_values: Callable[[Iterable[str]], None] | None = None) -> Result:
    """Empty the previous value of ``name`` (``NEXTAUTH_SECRET`` or ``NEXTAUTH_SECRET_PREVIOUS``).

    Sessions signed with it end; a warning says so when it is inside the
    session lifetime.
    """
    now = now or dt.datetime.now(dt.UTC)
    current = next((c for c, p in PREVIOUS_OF.items() if name in (c, p)), None)
    if current is None:
        choices = ", ".join(sorted({*PREVIOUS_OF, *PREVIOUS_OF.values()}))
        raise UsageError(f"{name} has no previous value to retire: choose one of {choices}")
    previous = PREVIOUS_OF[current]
    with locked(path, lock_timeout_s):
        remove_stale_temps(path)
        data = read_bytes(path)
        text = decode_text(path, data)
        from muzo_ops.env.envfile import parse_text

        raw = parse_text(text, path).raw()
        held_raw = raw.get(previous, "")
        result = Result("retire", path, encrypted=dotenvx.file_public_key(text) is not None)
        if not held_raw:
            result.warnings.append(f"{previous} is already empty: nothing to retire")
            return result
        held = _plain(held_raw, path, text, environ, previous)
        if held and on_values is not None:
            on_values([held])
        age = _age_of_previous(path, current, now)
        if age is not None and age < SESSION_LIFETIME:
            result.warnings.append(
                f"{current} was rotated {age.days} days ago: sessions signed with the retired secret "
                f"(up to {SESSION_LIFETIME.days} days old) now have to sign in again")
        fingerprint = audit.Fingerprinter(path)
        new_text = apply_lines(text, path, {previous: f"{previous}=\n"})
        result.backup = make_backup(path)
        write_atomic(path, new_text)
        result.pruned = prune_backups(path, keep)
        result.changes.append(Change(previous, "removed", fingerprint(held), None))
        audit.append(path, "retire", {previous: (held, None)},
                     extra={"backup": os.path.basename(result.backup)}, fingerprinter=fingerprint, now=now)
        return result


# ----- rollback -----------------------------------------------------------------------------


def rollback(path: str, *, keep: int = DEFAULT_KEEP, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
             now: dt.datetime | None = None, environ: Mapping[str, str] | None = None,
             on_values: Callable[[Iterable[str]], None] | None = None) -> Result:
    """Restore the newest backup not yet restored; the current file is backed up first.

    Rolling back twice undoes two changes (backups made by a rollback, and
    backups already restored, are skipped). ``undid`` is the audit record
    of the change whose backup was restored.
    """
    from muzo_ops.env.envfile import parse_text
    from muzo_ops.errors import EnvFileError

    now = now or dt.datetime.now(dt.UTC)
    with locked(path, lock_timeout_s):
        remove_stale_temps(path)
        records = audit.read(path)
        skip = set()
        for record in records:
            if record.command == "rollback":
                skip.add(str(record.extra.get("restored", "")))
                skip.add(str(record.extra.get("backup", "")))
        candidates = [(n, b) for n, b in backups(path) if os.path.basename(b) not in skip]
        if not candidates:
            raise EnvFileError(path, "no backup left to restore (rollback restores the backups that "
                               "rotate, retire, encrypt and decrypt make; each is restored once)")
        _number, chosen = candidates[-1]
        restored = read_bytes(chosen)
        restored_text = decode_text(chosen, restored)
        parse_text(restored_text, chosen)  # a damaged backup is refused, not installed
        data = read_bytes(path)
        text = decode_text(path, data)
        current_raw = parse_text(text, path).raw()
        restored_raw = parse_text(restored_text, chosen).raw()
        fingerprint = audit.Fingerprinter(path)
        result = Result("rollback", path, encrypted=dotenvx.file_public_key(restored_text) is not None)
        changes_for_log: dict[str, tuple[str | None, str | None]] = {}
        values: list[str] = []
        for name in sorted(set(current_raw) | set(restored_raw)):
            before, after = current_raw.get(name, ""), restored_raw.get(name, "")
            if before == after:
                continue
            old_plain = _plain(before, path, text, environ, name)
            new_plain = _plain(after, chosen, restored_text, environ, name)
            values += [v for v in (old_plain, new_plain) if v]
            result.changes.append(Change(name, "restored", fingerprint(old_plain), fingerprint(new_plain)))
            changes_for_log[name] = (old_plain, new_plain)
        if on_values is not None:
            on_values(values)
        undone = next((r for r in reversed(records)
                       if r.extra.get("backup") == os.path.basename(chosen) and r.command != "rollback"), None)
        result.undid = undone.to_json() if undone else None
        result.backup = make_backup(path)
        write_atomic(path, restored_text)
        # keep the restored backup until it is pruned: the log marks it as used
        result.pruned = prune_backups(path, keep)
        audit.append(path, "rollback", changes_for_log,
                     extra={"backup": os.path.basename(result.backup), "restored": os.path.basename(chosen),
                            "undid": (f"{undone.command} of {', '.join(undone.variables)} at {undone.time}"
                                      if undone else "a change with no audit record")},
                     fingerprinter=fingerprint, now=now)
        return result


# ----- for check-env ------------------------------------------------------------------------


def previous_secret_problems(path: str, values: Mapping[str, str],
                             now: dt.datetime | None = None) -> list[tuple[str, str, str]]:
    """``(level, variable, message)`` for check-env: ``error`` when a previous secret equals
    the current one, ``warning`` when it was replaced longer ago than the session lifetime.

    ``values`` are the file's values as the apps see them (decrypted when
    possible; two equal ciphertexts are also caught). Messages hold no value.
    """
    now = now or dt.datetime.now(dt.UTC)
    problems: list[tuple[str, str, str]] = []
    for current, previous in PREVIOUS_OF.items():
        held, active = values.get(previous, ""), values.get(current, "")
        if not held:
            continue
        if held == active:
            problems.append(("error", previous, f"equals {current}: it must hold the secret before the "
                             f"last rotation; run `muzo-ops secrets retire {previous}`"))
            continue
        age = _age_of_previous(path, current, now)
        if age is not None and age > SESSION_LIFETIME:
            problems.append(("warning", previous, f"replaced {age.days} days ago, longer than the "
                             f"{SESSION_LIFETIME.days}-day session lifetime: no session needs it any "
                             f"more; run `muzo-ops secrets retire {previous}`"))
    return problems
