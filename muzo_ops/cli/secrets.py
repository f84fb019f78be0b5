"""``secrets …``: generate, rotate, confirm, retire, rollback, log, encrypt, decrypt, rekey, scan.

Each action parses, makes one library call and prints names, files and
fingerprints; no value is ever printed (``decrypt --stdout`` prints the
plain file because that is what it is asked for, and nothing else).
"""

from __future__ import annotations

import argparse
from typing import Any

from muzo_ops.cli.common import Parser, add_env_file, add_format, add_lock_timeout, help_kwargs, positive_int
from muzo_ops.cli.output import Output
from muzo_ops.constants import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE

_DEFAULT_KEEP = 5  # rotation.DEFAULT_KEEP, without importing the library at parse time


def cmd_secrets_generate(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.env import generate

    out.out(generate.generate(generate.generator_for(args.name)))
    return EXIT_OK


def _fp(value: str | None) -> str:
    return value or "-"


def _print_result(args: argparse.Namespace, out: Output, result: Any, lines: list[str]) -> None:
    if args.format == "json":
        out.json(result.to_json())
        return
    for line in lines:
        out.out(line)
    for warning in result.warnings:
        out.err(f"warning: {warning}")


def _done(out: Output, result: Any, code: int = EXIT_OK) -> int:
    """``code``, or 1 with one ``error:`` line when the change was made but not audited (exit 2
    always means nothing changed)."""
    audit_error = getattr(result, "audit_error", None)
    if audit_error:
        out.err(f"error: {audit_error}")
        return EXIT_PROBLEMS
    return code


def cmd_secrets_rotate(args: argparse.Namespace, out: Output) -> int:
    names = list(args.names)
    if "DATABASE_URL" in names:
        from muzo_ops.secrets import mongo_password

        if names != ["DATABASE_URL"]:
            out.err("error: rotate DATABASE_URL on its own (it changes the database user's password), "
                    f"then {' '.join(n for n in names if n != 'DATABASE_URL')}")
            return EXIT_USAGE
        mongo = mongo_password.rotate_cli(args.env_file, dry_run=args.dry_run, yes=args.yes,
                                          keep=args.keep, lock_timeout_s=args.lock_timeout,
                                          on_values=out.redactor.add, say=out.err, swap_users=args.swap_users)
        if args.deploy and mongo.ok:
            return _deploy(args, out, mongo, mongo.lines(), {"DATABASE_URL": (mongo.old, mongo.new)})
        _print_result(args, out, mongo, mongo.lines())
        return _done(out, mongo, EXIT_OK if mongo.ok or mongo.dry_run else EXIT_PROBLEMS)
    if args.swap_users:
        out.err("error: --swap-users applies to DATABASE_URL only (see: muzo-ops secrets rotate --help)")
        return EXIT_USAGE
    from muzo_ops.secrets import rotation

    result = rotation.rotate(args.env_file, names or None, dry_run=args.dry_run, keep=args.keep,
                             force=args.force, lock_timeout_s=args.lock_timeout, on_values=out.redactor.add)
    verb = "Would rotate" if result.dry_run else "Rotated"
    lines = []
    for change in (c for c in result.changes if c.action == "rotated"):
        new = "a fresh value" if result.dry_run else _fp(change.new)
        lines.append(f"{verb} {change.name} in {args.env_file}: {_fp(change.old)} → {new}")
        for moved in (c for c in result.changes if c.action == f"moved from {change.name}"):
            lines.append(f"  {moved.name} {'would take' if result.dry_run else 'now holds'} the old value "
                         f"({_fp(moved.new)}, was {_fp(moved.old)}): sessions signed with it stay valid "
                         "while the auth config passes secret: [current, previous] (docs/SECRETS.md)")
    if not result.dry_run:
        lines.append(f"Backup: {result.backup} (0600){'; encrypted values stay encrypted' if result.encrypted else ''}."
                     " Restart the apps that read the file.")
        lines.append(f"Undo: muzo-ops secrets rollback --env-file {args.env_file}")
    if args.deploy and not result.dry_run:
        return _deploy(args, out, result, lines, {c.name: (c.old, c.new) for c in result.changes})
    _print_result(args, out, result, lines)
    return _done(out, result)


def _deploy(args: argparse.Namespace, out: Output, rotated: Any, lines: list[str],
            changes: dict[str, tuple[str | None, str | None]]) -> int:
    """The rotation is done: push the file through the worker deploy and say which host runs what."""
    from muzo_ops.secrets import propagate

    as_json = args.format == "json"
    if not as_json:
        for line in lines:
            out.out(line)
        for warning in rotated.warnings:
            out.err(f"warning: {warning}")
    progress = (lambda _line: None) if as_json else out.err
    result = propagate.deploy(args.env_file, args.deploy, changes, serial=args.deploy_serial,
                              source=args.deploy_source, lock=args.deploy_lock, progress=progress)
    if as_json:
        out.json({"rotation": rotated.to_json(), "deploy": result.to_json()})
    else:
        for line in result.lines():
            out.out(line)
    return _done(out, rotated, EXIT_OK if result.ok else EXIT_PROBLEMS)


def cmd_secrets_confirm(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.secrets import mongo_password

    result = mongo_password.confirm_cli(args.env_file, lock_timeout_s=args.lock_timeout, on_values=out.redactor.add)
    _print_result(args, out, result, result.lines())
    return _done(out, result)


def cmd_secrets_retire(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.secrets import rotation

    result = rotation.retire(args.env_file, args.name, keep=args.keep, lock_timeout_s=args.lock_timeout,
                             on_values=out.redactor.add)
    lines = [f"Retired {c.name} ({_fp(c.old)}) in {args.env_file}; backup {result.backup} (0600). "
             "Restart the web app." for c in result.changes]
    _print_result(args, out, result, lines)
    return _done(out, result)


def cmd_secrets_rollback(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.secrets import rotation

    result = rotation.rollback(args.env_file, keep=args.keep, lock_timeout_s=args.lock_timeout,
                               on_values=out.redactor.add)
    undid = result.undid
    what = (f"the {undid['command']} of {', '.join(undid['variables'])} at {undid['time']} by "
            f"{undid['user']}@{undid['host']}" if undid else "a change with no audit record")
    lines = [f"Rolled back {args.env_file}: undid {what}."]
    lines += [f"  {c.name}: {_fp(c.old)} → {_fp(c.new)}" for c in result.changes]
    lines.append(f"The file before the rollback is kept as {result.backup} (0600). Restart the apps that read it.")
    _print_result(args, out, result, lines)
    return _done(out, result)


def cmd_secrets_log(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.secrets import audit

    records = audit.read_for(args.env_file)
    if args.format == "json":
        out.json([r.to_json() for r in records])
    else:
        out.out(audit.format_text(records).rstrip("\n") or f"no secret changes recorded for {args.env_file}")
    return EXIT_OK


def cmd_secrets_encrypt(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.secrets import encryption

    result = encryption.encrypt_file(args.env_file, keep=args.keep, lock_timeout_s=args.lock_timeout)
    lines = [f"Encrypted {len(result.names)} values in {args.env_file} ({', '.join(result.names) or 'none new'}) "
             f"for {result.public_key_name}."]
    if result.created_key:
        lines.append(f"New private key in {result.keys_file} (0600): never commit it; give it to the apps as "
                     f"{result.public_key_name.replace('PUBLIC', 'PRIVATE')}.")
    if result.backup:
        lines.append(f"Backup: {result.backup} (0600).")
    _print_result(args, out, result, lines)
    return _done(out, result)


def cmd_secrets_decrypt(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.secrets import encryption

    result = encryption.decrypt_file(args.env_file, to_stdout=args.stdout, keep=args.keep,
                                     lock_timeout_s=args.lock_timeout, on_values=out.redactor.add)
    if args.stdout:
        for warning in result.warnings:  # on stderr: standard output is the plain file and nothing else
            out.err(f"warning: {warning}")
        out.value((result.text or "").rstrip("\n"))  # asked for: the plain file, unredacted, and nothing else
        return EXIT_OK
    lines = [f"Decrypted {len(result.names)} values in {args.env_file} (mode 0600)"
             + (f"; backup {result.backup} (0600)." if result.backup else ".")]
    _print_result(args, out, result, lines)
    return _done(out, result)


def cmd_secrets_rekey(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.secrets import encryption

    result = encryption.rekey_file(args.env_file, keep=args.keep, lock_timeout_s=args.lock_timeout)
    lines = [f"Re-encrypted {len(result.names)} values in {args.env_file} for a new {result.public_key_name}; "
             f"the new private key is in {result.keys_file} (0600). Give it to every app that reads the file.",
             f"Backup: {result.backup} (0600)."]
    _print_result(args, out, result, lines)
    return _done(out, result)


def cmd_secrets_scan(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.secrets import scan

    report = scan.gate(args.path, args.env_file, args.env_file_given, history=args.history,
                       baseline=args.baseline, update_baseline=args.update_baseline, on_values=out.redactor.add)
    if args.format == "json":
        out.json(report.to_json())
    else:
        if report.note:
            out.err(f"note: {report.note}")
        for line in report.lines():
            out.out(line)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _add_write_options(p: argparse.ArgumentParser) -> None:
    add_env_file(p)
    add_format(p)
    p.add_argument("--keep", type=positive_int, default=_DEFAULT_KEEP, metavar="N",
                   help=f"backups to keep (they hold old secrets; default {_DEFAULT_KEEP})")
    add_lock_timeout(p)


class _EnvFileGiven(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        namespace.env_file = values
        namespace.env_file_given = True


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """Register ``secrets`` and its actions."""
    p = sub.add_parser("secrets", help="generate, rotate, encrypt and scan for secrets",
                       **help_kwargs("Generate, rotate, retire and roll back secrets; encrypt env files in "
                                     "dotenvx's format; scan the repository for leaks.",
                                     "muzo-ops secrets rotate --env-file /etc/muzo/.env"))
    ssub = p.add_subparsers(dest="secrets_command", metavar="ACTION", parser_class=Parser)
    ssub.required = True
    g = ssub.add_parser("generate", help="print a fresh value",
                        **help_kwargs("Print a fresh value for a generated secret.",
                                      "muzo-ops secrets generate NEXTAUTH_SECRET"))
    g.add_argument("name", nargs="?", default="NEXTAUTH_SECRET", metavar="NAME")
    g.set_defaults(func=cmd_secrets_generate)

    r = ssub.add_parser("rotate", help="replace secrets in the env file (old one kept as …_PREVIOUS)", **help_kwargs(
        "Replace generated secrets (default: all of them) with fresh ones; the old value of a secret with a "
        "…_PREVIOUS variable (NEXTAUTH_SECRET, MUZO_HANDLER_SIGNING_SECRET) moves there for the grace period. "
        "Locked, backed up (0600), atomic, "
        "audited; values are never printed. DATABASE_URL changes the database user's password "
        "(admin connection from MUZO_MONGO_ADMIN_URI or a hidden prompt).",
        "muzo-ops secrets rotate NEXTAUTH_SECRET --env-file /etc/muzo/.env --dry-run"))
    r.add_argument("names", nargs="*", metavar="NAME")
    _add_write_options(r)
    r.add_argument("--dry-run", action="store_true", help="say what would change (fingerprints only)")
    r.add_argument("--force", action="store_true",
                   help="rotate even if the previous secret is still inside the session lifetime")
    r.add_argument("--yes", action="store_true", help="DATABASE_URL: do not ask for confirmation")
    r.add_argument("--deploy", metavar="INVENTORY",
                   help="then push the env file through the worker deploy (pyinfra inventory), batch by batch")
    r.add_argument("--deploy-serial", type=positive_int, default=1, metavar="N", help="hosts per deploy batch")
    r.add_argument("--deploy-source", default=None, help=argparse.SUPPRESS)  # tests: a frozen checkout
    r.add_argument("--deploy-lock", default=None, help=argparse.SUPPRESS)
    r.add_argument("--swap-users", action="store_true",
                   help="DATABASE_URL: new password on the idle user of <user>_a/<user>_b and point the URL at it; "
                        "the active user keeps working until `secrets confirm`")
    r.set_defaults(func=cmd_secrets_rotate)

    c = ssub.add_parser("confirm", help="finish an interrupted or --swap-users DATABASE_URL rotation", **help_kwargs(
        "After an interrupted DATABASE_URL rotation (MongoDB stopped answering): find out which password "
        "MongoDB accepts and keep that one (the pending file moves in, or is removed). After --swap-users, "
        "once every app runs with the swapped DATABASE_URL (workers deployed, web app redeployed): retire "
        "the previously active MongoDB user's password.", "muzo-ops secrets confirm --env-file /etc/muzo/.env"))
    add_env_file(c)
    add_format(c)
    add_lock_timeout(c)
    c.set_defaults(func=cmd_secrets_confirm)

    t = ssub.add_parser("retire", help="remove a secret's previous value", **help_kwargs(
        "Empty a secret's …_PREVIOUS variable (NEXTAUTH_SECRET_PREVIOUS, MUZO_HANDLER_SIGNING_SECRET_PREVIOUS): "
        "sessions and signatures made with the old secret stop being accepted.",
        "muzo-ops secrets retire NEXTAUTH_SECRET_PREVIOUS --env-file /etc/muzo/.env"))
    t.add_argument("name", metavar="NAME")
    _add_write_options(t)
    t.set_defaults(func=cmd_secrets_retire)

    b = ssub.add_parser("rollback", help="restore the last backup", **help_kwargs(
        "Restore the newest backup not yet restored (the current file is backed up first) and say "
        "which change it undid. Refused when the backup's DATABASE_URL no longer logs in to MongoDB; "
        "undoing a rekey puts the old private key back into .env.keys.",
        "muzo-ops secrets rollback --env-file /etc/muzo/.env"))
    _add_write_options(b)
    b.set_defaults(func=cmd_secrets_rollback)

    lg = ssub.add_parser("log", help="print the audit log", **help_kwargs(
        "Print the audit log of the env file: who changed which secret when, by fingerprint.",
        "muzo-ops secrets log --env-file /etc/muzo/.env --format json"))
    add_env_file(lg)
    add_format(lg)
    lg.set_defaults(func=cmd_secrets_log)

    e = ssub.add_parser("encrypt", help="encrypt sensitive values (dotenvx format)", **help_kwargs(
        "Encrypt each sensitive value as dotenvx does; a new private key goes to .env.keys (0600).",
        "muzo-ops secrets encrypt --env-file .env.production"))
    _add_write_options(e)
    e.set_defaults(func=cmd_secrets_encrypt)

    d = ssub.add_parser("decrypt", help="decrypt an encrypted env file", **help_kwargs(
        "Decrypt every value into the file (0600, backed up), or print the plain file with --stdout. "
        "The key comes from DOTENV_PRIVATE_KEY[_ENV] or .env.keys beside the file.",
        "muzo-ops secrets decrypt --env-file .env.production"))
    _add_write_options(d)
    d.add_argument("--stdout", action="store_true", help="print the plain file instead of writing it")
    d.set_defaults(func=cmd_secrets_decrypt)

    k = ssub.add_parser("rekey", help="new key pair, every value re-encrypted", **help_kwargs(
        "Make a new key pair and re-encrypt every value in one atomic write; .env.keys gets the new key.",
        "muzo-ops secrets rekey --env-file .env.production"))
    _add_write_options(k)
    k.set_defaults(func=cmd_secrets_rekey)

    s = ssub.add_parser("scan", help="look for leaked secrets in the repository (a CI gate)", **help_kwargs(
        "Look through every file git tracks (and with --history every file version of every commit, merges "
        "included) for the env file's sensitive values (also percent- and base64-encoded) and credential "
        "shapes, in UTF-8, UTF-16 and base64 text. Exit 1 when anything is found that --baseline does "
        "not accept; --update-baseline FILE writes the current findings' fingerprints (no values) to FILE.",
        "muzo-ops secrets scan . --history --baseline .secrets-baseline.json"))
    s.add_argument("path", nargs="?", default=".", metavar="PATH")
    s.add_argument("--env-file", default=".env", metavar="PATH", action=_EnvFileGiven,
                   help="env file whose sensitive values to look for (default: ./.env if it exists)")
    s.set_defaults(env_file_given=False)
    s.add_argument("--history", action="store_true", help="also every commit on every ref")
    accept = s.add_mutually_exclusive_group()
    accept.add_argument("--baseline", metavar="FILE",
                        help="accept the findings whose fingerprints FILE lists; exit 1 only for new ones")
    accept.add_argument("--update-baseline", "--write-baseline", dest="update_baseline", metavar="FILE",
                        help="write the current findings' fingerprints to FILE (atomically; no values) and exit 0")
    add_format(s)
    s.set_defaults(func=cmd_secrets_scan)
