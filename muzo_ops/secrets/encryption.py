"""``secrets encrypt | decrypt | rekey``: whole env files in dotenvx's format.

Each holds the env file's lock, decrypts or encrypts everything in memory
first (a wrong key or a damaged value stops it before anything is written),
backs the file up (0600) and writes it atomically (``secrets.commit``).
``.env.keys`` is written only through ``dotenvx.set_private_key``, under the
keys file's own lock (two env files of one folder share it).

Invariants. encrypt: the private key is in ``.env.keys`` (0600) before any
value is encrypted for it, so no instant has a file nobody can open; two
encrypt runs on two files of one folder keep both keys. decrypt: the file is
the complete encrypted one or the complete plain one (0600). rekey: at every
instant the keys at hand open the env file, and the old key stays in a
numbered ``.env.keys.N.bak`` (0600) named in the audit record, so
``rollback`` can undo the rekey.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from muzo_ops import faults
from muzo_ops.env import dotenvx, schema
from muzo_ops.errors import UsageError
from muzo_ops.files import backups, links
from muzo_ops.files.lock import DEFAULT_TIMEOUT_S, locked
from muzo_ops.secrets.commit import commit
from muzo_ops.secrets.rotation import DEFAULT_KEEP, keys_file_mode, keys_mode_warnings, read_env_text


@dataclass
class CryptResult:
    """What encrypt/decrypt/rekey did: names, files and warnings; never a value or a key."""

    command: str
    path: str
    names: list[str] = field(default_factory=list)
    public_key_name: str = ""
    keys_file: str | None = None
    backup: str | None = None
    pruned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    created_key: bool = False
    text: str | None = None  # decrypt --stdout only: the plain text, for standard output
    keys_backup: str | None = None  # rekey: the old .env.keys, kept for rollback
    audit_error: str | None = None  # the change was made but not recorded (exit 1)

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "env_file": self.path, "variables": self.names,
                "public_key_name": self.public_key_name, "keys_file": self.keys_file, "backup": self.backup,
                "pruned_backups": self.pruned, "created_key": self.created_key, "warnings": self.warnings,
                "keys_backup": self.keys_backup, "audit_error": self.audit_error}


def _commit(path: str, new_text: str, keep: int, command: str, names: list[str], result: CryptResult,
            extra: Mapping[str, Any] | None = None) -> None:
    done = commit(path, new_text, keep=keep, command=command, changes=dict.fromkeys(names, (None, None)),
                  extra=extra)
    result.backup, result.pruned, result.audit_error = done.backup, done.pruned, done.audit_error


def encrypt_file(path: str, *, keep: int = DEFAULT_KEEP, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
                 environ: Mapping[str, str] | None = None,
                 should_encrypt: Callable[[str], bool] = schema.is_sensitive) -> CryptResult:
    """Encrypt every sensitive value; a new key pair goes to ``.env.keys`` (0600) when none exists.

    Invariant: the key is in ``.env.keys`` before the file holds a value
    encrypted for it, so no crash leaves values nobody can decrypt.
    """
    with locked(path, lock_timeout_s):
        text = read_env_text(path)
        keys_mode = keys_file_mode(path)
        public_name, private_name = dotenvx.key_names(path, text)
        result = CryptResult("encrypt", path, public_key_name=public_name)
        found = dotenvx.file_public_key(text)
        public_hex = None
        if found is None:
            _name, keys = dotenvx.private_keys_for(path, text, environ)
            if keys:
                public_hex = dotenvx.public_key_of(keys[0], private_name)
            else:
                pair = dotenvx.KeyPair.generate()
                result.keys_file = dotenvx.keys_path(path)
                dotenvx.set_private_key(result.keys_file, private_name, pair.private_hex, os.path.basename(path),
                                        owner_of=path)
                public_hex = pair.public_hex
                result.created_key = True
        transformed = dotenvx.encrypt_text(text, path, should_encrypt, public_hex)
        result.names = transformed.names
        result.warnings += keys_mode_warnings(path, keys_mode)
        warning = dotenvx.keys_file_committable(path)
        if warning:
            result.warnings.append(warning)
        if transformed.text == text:
            return result
        _commit(path, transformed.text, keep, "encrypt", result.names, result)
        return result


def decrypt_file(path: str, *, to_stdout: bool = False, keep: int = DEFAULT_KEEP,
                 lock_timeout_s: float = DEFAULT_TIMEOUT_S, environ: Mapping[str, str] | None = None,
                 on_values: Callable[[Iterable[str]], None] | None = None) -> CryptResult:
    """Decrypt every value: into the file (0600, backed up), or only into ``result.text``.

    Invariant: the file is the complete encrypted one or the complete plain one (0600).
    """
    with locked(path, lock_timeout_s):
        text = read_env_text(path)
        keys_mode = keys_file_mode(path)
        private_name, keys = dotenvx.private_keys_for(path, text, environ)
        if not keys and any(dotenvx.is_encrypted(v) for _k, v in dotenvx.bindings(text)):
            raise UsageError(f"{path}: no private key: set {private_name} in the environment or put "
                             f"{dotenvx.KEYS_FILE} beside the file")
        transformed = dotenvx.decrypt_text(text, path, keys)
        result = CryptResult("decrypt", path, names=transformed.names, public_key_name=transformed.public_key_name,
                             warnings=keys_mode_warnings(path, keys_mode))
        if on_values is not None and not to_stdout:
            from muzo_ops.env.envfile import parse_text

            raw = parse_text(transformed.text, path).raw()
            on_values([raw[n] for n in transformed.names if raw.get(n)])
        if to_stdout:
            result.text = transformed.text
            return result
        if transformed.text != text:
            _commit(path, transformed.text, keep, "decrypt", result.names, result)
        return result


def rekey_file(path: str, *, keep: int = DEFAULT_KEEP, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
               environ: Mapping[str, str] | None = None) -> CryptResult:
    """A new key pair; every value re-encrypted for it in one atomic write.

    ``.env.keys`` is first kept as ``.env.keys.N.bak`` (0600; it holds the
    old key, for ``rollback``), then holds ``new,old`` while the env file is
    replaced, then only the new key. Invariant: at every instant the keys
    at hand open the env file, and the old key stays where rollback finds it.
    """
    with locked(path, lock_timeout_s):
        text = read_env_text(path)
        keys_mode = keys_file_mode(path)
        public_name, private_name = dotenvx.key_names(path, text)
        _name, old_keys = dotenvx.private_keys_for(path, text, environ)
        if dotenvx.file_public_key(text) is None:
            raise UsageError(f"{path}: not an encrypted file: run `muzo-ops secrets encrypt` first")
        if not old_keys:
            raise UsageError(f"{path}: no private key: set {private_name} in the environment or put "
                             f"{dotenvx.KEYS_FILE} beside the file")
        pair = dotenvx.KeyPair.generate()
        transformed = dotenvx.reencrypt_text(text, path, old_keys, pair.public_hex)
        keys_file = dotenvx.keys_path(path)
        for rewritten in (keys_file, path):  # before the keys backup: refused means nothing written
            links.refuse_hard_links(rewritten)
        result = CryptResult("rekey", path, names=transformed.names, public_key_name=public_name,
                             keys_file=keys_file, created_key=True)
        # the old key stays in a numbered backup of the keys file (0600, locked) for rollback
        result.keys_backup = backups.make(keys_file)
        if result.keys_backup is None or old_keys[0] not in dotenvx.read_keys_file(result.keys_backup).get(
                private_name, ""):
            # the old key came from the environment: the kept copy must hold it all the same
            dotenvx.set_private_key(keys_file, private_name, ",".join(old_keys), os.path.basename(path),
                                    owner_of=path)
            result.keys_backup = backups.make(keys_file)
        dotenvx.set_private_key(keys_file, private_name, ",".join([pair.private_hex, *old_keys]),
                                os.path.basename(path), owner_of=path)
        _commit(path, transformed.text, keep, "rekey", result.names, result,
                extra={"keys_backup": os.path.basename(result.keys_backup or ""),
                       "private_key_name": private_name})
        dotenvx.set_private_key(keys_file, private_name, pair.private_hex, os.path.basename(path), owner_of=path)
        backups.prune(keys_file, keep)
        faults.step(faults.BACKUPS_PRUNED)
        env = os.environ if environ is None else environ
        if env.get(private_name):
            result.warnings.append(f"{private_name} is set in the environment: replace it there with the new "
                                   f"key from {keys_file}, or the apps cannot decrypt the file")
        result.warnings.append(f"backups of {os.path.basename(path)} made before this rekey need the old key")
        result.warnings += keys_mode_warnings(path, keys_mode)
        warning = dotenvx.keys_file_committable(path)
        if warning:
            result.warnings.append(warning)
        return result
