"""Encrypted env files in dotenvx's format, read and written by muzo_ops.

The format (checked against the real ``@dotenvx/dotenvx`` npm package in
``tests/test_secrets_dotenvx.py``, both ways):

- a value is ``encrypted:`` + standard base64 (with padding) of an eciesjs
  ciphertext: ECIES on secp256k1, uncompressed 65-byte ephemeral public
  key, HKDF-SHA256 over ephemeral key + the whole shared point, AES-256-GCM
  with a 16-byte nonce; laid out ephemeral key | nonce | tag | ciphertext.
  ``eciespy`` (the Python twin of eciesjs) does exactly that with its
  defaults; no curve arithmetic is written here.
- the file names its public key (33-byte compressed point, hex) in
  ``DOTENV_PUBLIC_KEY`` for ``.env`` or ``DOTENV_PUBLIC_KEY_<ENV>`` for
  ``.env.<env>`` (``.env.production`` → ``_PRODUCTION``,
  ``.env.production.local`` → ``_PRODUCTION_LOCAL``), under dotenvx's
  comment header; a public-key name already in the file wins.
- the private key (32 bytes, hex) is ``DOTENV_PRIVATE_KEY[_<ENV>]``, taken
  from the environment first and then from ``.env.keys`` beside the file;
  several keys may be given separated by commas.

muzo_ops writes an encrypted value in single quotes (``NAME='encrypted:…'``):
dotenvx expands ``$VAR`` and runs ``$(…)`` in a decrypted value unless the
encrypted value was single-quoted, and a secret must never be executed.

No message here contains a value or a key: errors name the variable, the
file and the line.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from muzo_ops.constants import DOTENVX_ENCRYPTED_PREFIX
from muzo_ops.errors import MuzoOpsError

PREFIX = DOTENVX_ENCRYPTED_PREFIX
PUBLIC_KEY_NAME = "DOTENV_PUBLIC_KEY"
PRIVATE_KEY_NAME = "DOTENV_PRIVATE_KEY"
KEYS_FILE = ".env.keys"

# eciesjs layout: 65-byte uncompressed ephemeral key, 16-byte nonce, 16-byte tag.
_MIN_CIPHERTEXT = 65 + 16 + 16
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_PUBLIC_HEX = re.compile(r"0[23][0-9a-fA-F]{64}\Z")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}\Z")

HEADER_LINES = (
    "#/-------------------[DOTENV_PUBLIC_KEY]--------------------/",
    "#/            public-key encryption for .env files          /",
    "#/       [how it works](https://dotenvx.com/encryption)     /",
    "#/----------------------------------------------------------/",
)
KEYS_HEADER_LINES = (
    "#/------------------!DOTENV_PRIVATE_KEYS!-------------------/",
    "#/ private decryption keys. DO NOT commit to source control /",
    "#/     [how it works](https://dotenvx.com/encryption)       /",
    "#/----------------------------------------------------------/",
)


class DotenvxError(MuzoOpsError):
    """An encrypted env file or key that cannot be used (exit 2)."""


class DecryptionError(DotenvxError):
    """One value that cannot be decrypted; the message names the variable, never the value."""

    def __init__(self, name: str, reason: str, path: str | None = None, line: int | None = None) -> None:
        self.name = name
        where = ""
        if path is not None:
            where = f" in {path}" + (f" line {line}" if line is not None else "")
        super().__init__(f"cannot decrypt {name}{where}: {reason}")


# ----- names -------------------------------------------------------------------------


def canonical_filename(path: str) -> str:
    """The file name as dotenvx compares it: lower case, a trailing ``.txt`` dropped."""
    name = os.path.basename(path).lower()
    if name.startswith(".env") and name.endswith(".txt"):
        name = name[:-4]
    return name


def environment_of(path: str) -> str:
    """dotenvx's environment for a file name: ``.env.production`` → ``production``.

    Mirrors dotenvx's ``conventions/environment.js``: the parts after
    ``.env.`` (at most two, joined by ``_``); ``.env1`` → ``development1``.
    """
    filename = canonical_filename(path)
    parts = filename.split(".")[2:]
    if not parts:
        return filename.replace(".env", "development", 1)
    return "_".join(parts[:2])


def key_names(path: str, text: str | None = None) -> tuple[str, str]:
    """``(public key name, private key name)`` for the env file at ``path``.

    A ``DOTENV_PUBLIC_KEY…`` binding already in ``text`` wins (as in
    dotenvx); else ``.env`` gives the bare names and ``.env.<env>`` the
    ``_<ENV>`` suffix.
    """
    if text is not None:
        for name, _value in bindings(text):
            if name.startswith(PUBLIC_KEY_NAME):
                return name, PRIVATE_KEY_NAME + name[len(PUBLIC_KEY_NAME):]
    if canonical_filename(path) == ".env":
        return PUBLIC_KEY_NAME, PRIVATE_KEY_NAME
    suffix = "_" + environment_of(path).upper()
    return PUBLIC_KEY_NAME + suffix, PRIVATE_KEY_NAME + suffix


def keys_path(env_path: str) -> str:
    """``.env.keys`` beside the env file."""
    return os.path.join(os.path.dirname(os.path.abspath(env_path)), KEYS_FILE)


# ----- keys and values ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A secp256k1 key pair as dotenvx stores it (hex). ``repr`` hides the private key."""

    public_hex: str
    private_hex: str = field(repr=False)

    @classmethod
    def generate(cls) -> KeyPair:
        from coincurve import PrivateKey

        key = PrivateKey()
        return cls(key.public_key.format(compressed=True).hex(), key.secret.hex())

    @classmethod
    def from_private(cls, private_hex: str, key_name: str = PRIVATE_KEY_NAME) -> KeyPair:
        return cls(public_key_of(private_hex, key_name), private_hex.lower())


def public_key_of(private_hex: str, key_name: str = PRIVATE_KEY_NAME) -> str:
    """The compressed public key (hex) of a private key; DotenvxError when it is not one."""
    from coincurve import PrivateKey

    if not _HEX64.match(private_hex):
        raise DotenvxError(f"{key_name} is not a private key (64 hex digits): copy it again from {KEYS_FILE}")
    try:
        return PrivateKey(bytes.fromhex(private_hex)).public_key.format(compressed=True).hex()
    except ValueError as exc:
        raise DotenvxError(f"{key_name} is not a valid secp256k1 private key: copy it again "
                           f"from {KEYS_FILE}") from exc


def is_encrypted(value: str | None) -> bool:
    return value is not None and value.startswith(PREFIX)


def encrypt_value(public_hex: str, plaintext: str) -> str:
    """``encrypted:<base64>`` of ``plaintext`` for the holder of ``public_hex``'s private key."""
    import ecies

    if not _PUBLIC_HEX.match(public_hex):
        raise DotenvxError(f"{PUBLIC_KEY_NAME} is not a compressed secp256k1 public key "
                           "(66 hex digits starting 02 or 03): restore the header from version control")
    return PREFIX + base64.b64encode(ecies.encrypt(public_hex, plaintext.encode("utf-8"))).decode("ascii")


def decrypt_value(name: str, value: str, private_keys: Iterable[str], public_hex: str | None = None,
                  path: str | None = None, line: int | None = None) -> str:
    """The plaintext of one ``encrypted:`` value; a plain value is returned as it is.

    Each key is tried in turn (dotenvx allows a comma-separated list).
    DecryptionError says whether the key is wrong (it does not match the
    file's public key) or the value is truncated or tampered with.
    """
    import ecies

    if not is_encrypted(value):
        return value
    keys = [k.strip() for k in private_keys if k.strip()]
    if not keys:
        raise DecryptionError(name, f"no private key: set {PRIVATE_KEY_NAME}[_ENV] in the environment "
                              f"or put {KEYS_FILE} beside the file", path, line)
    body = value[len(PREFIX):]
    if not _BASE64.match(body):
        raise DecryptionError(name, "the encrypted value is not base64 (edited by hand?): "
                              "restore it from version control or set the value again", path, line)
    try:
        data = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptionError(name, "the encrypted value is truncated: restore it from version control "
                              "or set the value again", path, line) from exc
    if len(data) <= _MIN_CIPHERTEXT - 1:
        raise DecryptionError(name, "the encrypted value is truncated: restore it from version control "
                              "or set the value again", path, line)
    matching = False
    for key in keys:
        try:
            own_public = public_key_of(key)
        except DotenvxError as exc:
            raise DecryptionError(name, f"the private key is not 64 hex digits of a secp256k1 key: "
                                  f"copy {PRIVATE_KEY_NAME}[_ENV] again from {KEYS_FILE}", path, line) from exc
        if public_hex is not None and own_public != public_hex.lower():
            continue
        matching = True
        try:
            plain = ecies.decrypt(key, data)
        except ValueError:
            continue
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecryptionError(name, "the decrypted value is not UTF-8 text: set the value again",
                                  path, line) from exc
    if public_hex is not None and not matching:
        raise DecryptionError(name, "wrong private key: it does not belong to the file's public key; "
                              f"use the {PRIVATE_KEY_NAME} that encrypted this file", path, line)
    raise DecryptionError(name, "the encrypted value was altered or truncated, or was encrypted for "
                          "another key: restore it from version control or set the value again", path, line)


# ----- private keys: environment and .env.keys ---------------------------------------


def read_keys_file(path: str) -> dict[str, str]:
    """Bindings of a ``.env.keys`` file ({} when it does not exist)."""
    from muzo_ops.errors import EnvFileError
    from muzo_ops.files.reading import read_text_or_none

    try:
        text = read_text_or_none(path)
    except EnvFileError as exc:
        raise DotenvxError(str(exc)) from exc
    return dict(bindings(text or ""))


def private_keys_for(env_path: str, text: str | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """``(private key name, keys)`` for the env file: environment first, then ``.env.keys``.

    ``keys`` is empty when neither has the key.
    """
    environ = os.environ if environ is None else environ
    _public_name, private_name = key_names(env_path, text)
    raw = environ.get(private_name) or read_keys_file(keys_path(env_path)).get(private_name, "")
    return private_name, [k.strip() for k in raw.split(",") if k.strip()]


def set_private_key(keys_file: str, private_name: str, private_hex: str, comment: str,
                    owner_of: str | None = None) -> None:
    """Write ``private_name=private_hex`` into ``keys_file`` (created 0600, atomic, under its lock).

    An existing binding of that name is replaced in place; others are kept.
    Invariant: the read-modify-write holds the keys file's own lock, so two
    commands adding keys for two env files of one folder keep both keys. A
    new keys file gets the owner of ``owner_of`` (the env file).
    """
    from muzo_ops.files import atomic

    line = f"{private_name}={private_hex}\n"
    pattern = re.compile(rf"^{re.escape(private_name)}=.*$\n?", re.MULTILINE)

    def change(text: str) -> str:
        if pattern.search(text):
            return pattern.sub(lambda _m: line, text, count=1)
        if not text:
            text = "\n".join(KEYS_HEADER_LINES) + "\n"
        if not text.endswith("\n"):
            text += "\n"
        return text + f"\n# {comment}\n{line}"

    atomic.update(keys_file, change, owner_of=owner_of)


def keys_file_committable(env_path: str) -> str | None:
    """A warning when ``.env.keys`` beside the file could be committed, else None.

    Inside a git work tree the file must be ignored (``git check-ignore``)
    and not tracked; outside one there is nothing to check.
    """
    import subprocess

    keys_file = keys_path(env_path)
    folder = os.path.dirname(keys_file)
    try:
        inside = subprocess.run(["git", "-C", folder, "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True, timeout=30)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        tracked = subprocess.run(["git", "-C", folder, "ls-files", "--error-unmatch", KEYS_FILE],
                                 capture_output=True, text=True, timeout=30)
        if tracked.returncode == 0:
            return (f"{keys_file} is tracked by git: `git rm --cached {KEYS_FILE}`, add it to "
                    ".gitignore and rotate the key with `muzo-ops secrets rekey`")
        ignored = subprocess.run(["git", "-C", folder, "check-ignore", "-q", KEYS_FILE],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if ignored.returncode != 0:
        return f"{keys_file} is not in .gitignore: add the line `{KEYS_FILE}` so it is never committed"
    return None


# ----- whole files -------------------------------------------------------------------


@dataclass
class Transformed:
    """The result of encrypting or decrypting a file's text: names only, never values."""

    text: str
    names: list[str]  # variables whose value was encrypted / decrypted
    public_key_name: str


def bindings(text: str) -> list[tuple[str, str]]:
    """``(name, value)`` of every well-formed binding, as python-dotenv reads them."""
    import io

    from dotenv.parser import parse_stream

    return [(b.key, b.value) for b in parse_stream(io.StringIO(text))
            if b.key is not None and b.value is not None and not b.error]


def file_public_key(text: str) -> tuple[str, str] | None:
    """``(name, public key hex)`` of the header's public key, or None."""
    for name, value in bindings(text):
        if name.startswith(PUBLIC_KEY_NAME):
            return name, value
    return None


def header(public_name: str, public_hex: str, filename: str) -> str:
    """dotenvx's header block, a blank line and ``# <filename>``, as dotenvx writes it."""
    return "\n".join([*HEADER_LINES, f'{public_name}="{public_hex}"', "", f"# {filename}"]) + "\n"


def encrypted_line(name: str, public_hex: str, plaintext: str, newline: str = "\n") -> str:
    """``NAME='encrypted:…'`` (single quotes: dotenvx never expands or executes them)."""
    return f"{name}='{encrypt_value(public_hex, plaintext)}'{newline}"


def plain_line(name: str, value: str) -> str:
    """``envfile.format_line``: it single-quotes a value with ``$(`` (dotenvx runs ``$(…)`` outside
    single quotes) or refuses it when single quotes cannot carry it."""
    from muzo_ops.env.envfile import format_line

    return format_line(name, value)


def encrypt_text(text: str, path: str, should_encrypt: Callable[[str], bool],
                 public_hex: str | None = None) -> Transformed:
    """Encrypt every non-empty value whose name ``should_encrypt`` accepts.

    The header's public key is used when the file has one (``public_hex``
    must then be None or equal); otherwise ``public_hex`` is required and
    the header is prepended. Already encrypted values, comments, order and
    every other line are kept byte for byte.
    """
    from muzo_ops.env.envfile import parse_text, replace_line

    existing = file_public_key(text)
    public_name, _private = key_names(path, text)
    if existing is not None:
        if public_hex is not None and public_hex.lower() != existing[1].lower():
            raise DotenvxError(f"{path}: the file is encrypted for another key ({existing[0]}): "
                               "decrypt it first or use `muzo-ops secrets rekey`")
        public_hex = existing[1]
    if public_hex is None:
        raise DotenvxError(f"{path}: no {public_name} in the file and no key given")
    parsed = parse_text(text, path)
    parts: list[str] = []
    names: list[str] = []
    for entry in parsed.entries:
        if (entry.key is not None and entry.value not in (None, "") and not entry.key.startswith(PUBLIC_KEY_NAME)
                and not is_encrypted(entry.value) and should_encrypt(entry.key)):
            assert entry.value is not None
            parts.append(replace_line(entry, encrypted_line(entry.key, public_hex, entry.value)))
            if entry.key not in names:
                names.append(entry.key)
        else:
            parts.append(entry.text)
    body = "".join(parts)
    if existing is None:
        body = header(public_name, public_hex, os.path.basename(path)) + body
    return Transformed(body, names, public_name)


def decrypt_text(text: str, path: str, private_keys: Iterable[str]) -> Transformed:
    """Every ``encrypted:`` value replaced by its plaintext, quoted by ``envfile.format_line``.

    The header stays (as ``dotenvx decrypt`` leaves it), so encrypting again
    uses the same key. DecryptionError names the first value that fails;
    nothing is returned in that case.
    """
    from muzo_ops.env.envfile import parse_text, replace_line

    keys = list(private_keys)
    existing = file_public_key(text)
    public_hex = existing[1] if existing else None
    public_name = existing[0] if existing else key_names(path)[0]
    parsed = parse_text(text, path)
    parts: list[str] = []
    names: list[str] = []
    for entry in parsed.entries:
        if entry.key is not None and is_encrypted(entry.value):
            assert entry.value is not None
            plain = decrypt_value(entry.key, entry.value, keys, public_hex, path, entry.line)
            parts.append(replace_line(entry, plain_line(entry.key, plain)))
            if entry.key not in names:
                names.append(entry.key)
        else:
            parts.append(entry.text)
    return Transformed("".join(parts), names, public_name)


def reencrypt_text(text: str, path: str, old_keys: Iterable[str], new_public_hex: str,
                   new_public_name: str | None = None) -> Transformed:
    """Every encrypted value re-encrypted for ``new_public_hex`` and the header's key replaced.

    Used by ``secrets rekey``; all values are decrypted first, so a bad one
    stops the whole change before anything is written.
    """
    from muzo_ops.env.envfile import parse_text, replace_line

    keys = list(old_keys)
    existing = file_public_key(text)
    if existing is None:
        raise DotenvxError(f"{path}: not an encrypted file (no {PUBLIC_KEY_NAME} header): "
                           "use `muzo-ops secrets encrypt`")
    public_name, old_public = existing
    parsed = parse_text(text, path)
    parts: list[str] = []
    names: list[str] = []
    for entry in parsed.entries:
        if entry.key == public_name:
            parts.append(replace_line(entry, f'{public_name}="{new_public_hex}"'))
        elif entry.key is not None and is_encrypted(entry.value):
            assert entry.value is not None
            plain = decrypt_value(entry.key, entry.value, keys, old_public, path, entry.line)
            parts.append(replace_line(entry, encrypted_line(entry.key, new_public_hex, plain)))
            if entry.key not in names:
                names.append(entry.key)
        else:
            parts.append(entry.text)
    return Transformed("".join(parts), names, new_public_name or public_name)


def decrypted_values(values: Mapping[str, str], path: str, text: str | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """For env-file readers: ``(values with encrypted ones decrypted, names left encrypted)``.

    When a private key is found (environment, then ``.env.keys``) every
    encrypted value is decrypted and a bad one raises DecryptionError; with
    no key, encrypted values stay as they are and their names are returned
    so the caller can report them as not checkable.
    """
    encrypted = [k for k, v in values.items() if is_encrypted(v)]
    if not encrypted:
        return dict(values), []
    _name, keys = private_keys_for(path, text, environ)
    if not keys:
        return dict(values), encrypted
    found = file_public_key(text) if text is not None else None
    public_hex = found[1] if found else None
    out = dict(values)
    for key in encrypted:
        out[key] = decrypt_value(key, values[key], keys, public_hex, path)
    return out, []


class LineWriter:
    """Formats ``NAME=…`` lines for one env file: encrypted (single-quoted) when the file is and the
    value is sensitive (a name the schema does not know counts as sensitive)."""

    def __init__(self, text: str) -> None:
        found = file_public_key(text)
        self.public_hex = found[1] if found else None

    @property
    def encrypted(self) -> bool:
        return self.public_hex is not None

    def line(self, name: str, value: str) -> str:
        from muzo_ops.env import schema

        var = schema.BY_NAME.get(name)
        if self.public_hex is not None and value and not is_encrypted(value) and (
                var is None or var.sensitive):
            return encrypted_line(name, self.public_hex, value)
        if is_encrypted(value):
            return f"{name}='{value}'\n"
        return plain_line(name, value)

    def addition(self, name: str, value: str) -> str:
        """``line`` under the schema's comment for a variable the file does not have yet."""
        from muzo_ops.env import schema

        var = schema.BY_NAME.get(name)
        head = ""
        if var is not None:
            flag = "REQUIRED" if var.required else "OPTIONAL"
            head = f"# {var.description} [{flag}; {var.apps_label}]\n"
        return head + self.line(name, value)
