"""Rules between variables: secrets in public variables, Stripe modes, typos, previous secrets."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from muzo_ops.constants import SESSION_LIFETIME_DAYS
from muzo_ops.env import schema
from muzo_ops.env.problems import Note, Report, Severity

if TYPE_CHECKING:
    import datetime as dt

# When a current secret was last rotated, as a time ago (None: no record). The audit log
# knows; the caller above env passes this in (env never reads the secrets' audit log).
SecretAge = Callable[[str], "dt.timedelta | None"]


def check_previous_secrets(report: Report, values: Mapping[str, str], secret_age: SecretAge | None) -> None:
    """A previous secret (rotation's grace period) equal to the current one, or, when
    ``secret_age`` says when the current one was rotated, kept past the session lifetime."""
    if not any(values.get(previous) for previous in schema.PREVIOUS_OF.values()):
        return
    import datetime as dt

    lifetime = dt.timedelta(days=SESSION_LIFETIME_DAYS)
    for current, previous in schema.PREVIOUS_OF.items():
        held, active = values.get(previous, ""), values.get(current, "")
        if not held:
            continue
        if held == active:
            report.add(previous, Severity.ERROR, "previous-secret-equal",
                       f"{previous} equals {current}: it must hold the secret before the last rotation; "
                       f"run `muzo-ops secrets retire {previous}`")
            continue
        age = secret_age(current) if secret_age is not None else None
        if age is not None and age > lifetime:
            report.add(previous, Severity.WARNING, "previous-secret-old",
                       f"{previous} replaced {age.days} days ago, longer than the {lifetime.days}-day "
                       f"session lifetime: no session needs it any more; run `muzo-ops secrets retire "
                       f"{previous}`")


def check_public_secrets(report: Report, values: Mapping[str, str]) -> None:
    for name, value in values.items():
        if name.startswith("NEXT_PUBLIC_") and re.search(r"\b(sk|rk)_(test|live)_", value):
            report.add(name, Severity.ERROR, "secret-in-public",
                       f"{name} holds a Stripe secret key, and NEXT_PUBLIC_* variables ship to "
                       "every browser: put the pk_… publishable key there and rotate the "
                       "secret key in the Stripe dashboard", special=True)


def stripe_mode(value: str) -> str | None:
    match = re.match(r"^(?:sk|rk|pk)_(test|live)_", value)
    return match.group(1) if match else None


def check_stripe(report: Report, values: Mapping[str, str], names: set[str]) -> None:
    keys = [n for n in ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY",
                        "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY") if n in names]
    modes = {n: stripe_mode(values.get(n, "")) for n in keys}
    seen = {m for m in modes.values() if m}
    if len(seen) > 1:
        detail = ", ".join(f"{n} is {m}" for n, m in modes.items() if m)
        report.add("STRIPE_SECRET_KEY", Severity.ERROR, "stripe-mode-mixed",
                   f"Stripe test and live keys are mixed ({detail}): use keys of one mode",
                   special=True)
    elif seen:
        report.notes.append(Note(f"Stripe keys: all {seen.pop()} mode"))
    public = values.get("NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY", "")
    private = values.get("STRIPE_PUBLISHABLE_KEY", "")
    if public and private and public != private and "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY" in names:
        report.add("NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY", Severity.WARNING, "stripe-publishable-differ",
                   "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY differs from STRIPE_PUBLISHABLE_KEY: "
                   "they should be the same key", special=True)


def check_unknown(report: Report, values: Mapping[str, str]) -> None:
    unknown = [n for n in values if n not in schema.BY_NAME]
    if not unknown:
        return
    import difflib

    by_length: dict[int, list[str]] = {}  # a name 0.8 alike has a length within 2/3 of the other's
    for name in unknown:
        size = len(name)
        if size not in by_length:
            by_length[size] = [k for k in schema.BY_NAME
                               if 3 * min(len(k), size) >= 2 * max(len(k), size)]
        candidates = by_length[size]
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8) if candidates else []
        if close:
            report.add(name, Severity.WARNING, "unknown-variable-typo",
                       f"{name}: did you mean {close[0]}?")
