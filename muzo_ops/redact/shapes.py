"""Text with a secret's shape (a Stripe key, a JWT, a URL password), found and masked anywhere."""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

from muzo_ops.constants import MASK

# Text with a secret's shape, masked wherever it appears (in a variable not
# meant for it, pasted on a line of its own, inside a URL option). Each
# pattern's group "s" is the secret; text around it stays readable. Short
# prefixes must start a token (not follow `-` or `_`), so a random base64url
# value does not look like one by chance. Each pattern comes with the literal
# text it cannot match without (lower-case hints are looked for in the
# lower-cased text): a pattern is compiled only when text holds a hint, so
# start-up pays for none of them.
_SHAPES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("sk_", "rk_"), r"(?<![A-Za-z0-9])(?P<s>(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{6,})"),  # Stripe secret / restricted
    (("whsec_",), r"(?<![A-Za-z0-9])(?P<s>whsec_[A-Za-z0-9]{10,})"),  # Stripe webhook signing secret
    (("sk-",), r"(?<![A-Za-z0-9_-])(?P<s>sk-(?:proj|svcacct|admin|ant-api03|ant-admin01)-[A-Za-z0-9_-]{20,})"),
    (("T3BlbkFJ",), r"(?<![A-Za-z0-9_-])(?P<s>sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})"),  # OpenAI, older keys
    (("AKIA", "ASIA"), r"(?<![A-Za-z0-9])(?P<s>(?:AKIA|ASIA)[0-9A-Z]{16})(?![0-9A-Z])"),  # AWS access key id
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), r"(?<![A-Za-z0-9_-])(?P<s>gh[pousr]_[A-Za-z0-9]{30,})"),  # GitHub
    (("github_pat_",), r"(?<![A-Za-z0-9_-])(?P<s>github_pat_[A-Za-z0-9_]{30,})"),
    (("glpat-",), r"(?<![A-Za-z0-9_-])(?P<s>glpat-[A-Za-z0-9_-]{16,})"),  # GitLab
    (("xox",), r"(?<![A-Za-z0-9_-])(?P<s>xox[abposr]-[A-Za-z0-9-]{10,})"),  # Slack
    (("AIza",), r"(?<![A-Za-z0-9_-])(?P<s>AIza[0-9A-Za-z_-]{35})"),  # Google API key
    (("GOCSPX-",), r"(?<![A-Za-z0-9])(?P<s>GOCSPX-[A-Za-z0-9_-]{10,})"),  # Google OAuth client secret
    (("rpa_",), r"(?<![A-Za-z0-9_-])(?P<s>rpa_[A-Za-z0-9]{16,})"),  # RunPod
    (("eyJ",), r"(?<![A-Za-z0-9_-])(?P<s>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"),  # JWT
    (("-----BEGIN ",), r"(?P<s>-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z))"),
    # the password of a URL's user:password@ part (any scheme)
    (("://",), r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:\"']*:(?P<s>[^\s@/\"']+)@"),
    # credentials inside URL options and key:value lists (MongoDB authMechanismProperties)
    (("session_token", "aws_secret_access_key"),
     r"(?i:AWS_SESSION_TOKEN|AWS_SECRET_ACCESS_KEY|SESSION_TOKEN)(?::|%3A)(?P<s>[^,&\s\"']+)"),
    (("=",), r"[?&;](?i:password|passwd|pwd|secret|token|api_?key|access_?token|auth_?token|sig|signature|"
     r"X-Amz-Signature|X-Amz-Security-Token|tlsCertificateKeyFilePassword|sslClientCertificateKeyPassword)"
     r"=(?P<s>[^&#\s\"']+)"),
)

_ANY_CASE = frozenset({15})  # the index of the pattern whose hints are looked for in lower case


_HINTS = tuple((index, hints) for index, (hints, _) in enumerate(_SHAPES))


@functools.cache
def _pattern(index: int) -> re.Pattern[str]:
    return re.compile(_SHAPES[index][1])


def _candidates(text: str) -> list[re.Pattern[str]]:
    """The patterns whose hints ``text`` holds, in order (most text holds none)."""
    lower = text.lower() if "_" in text else ""  # the only case-insensitive hints hold "_"
    found = []
    for index, hints in _HINTS:
        where = lower if index in _ANY_CASE else text
        for hint in hints:
            if hint in where:
                found.append(_pattern(index))
                break
    return found


def secret_shapes() -> tuple[re.Pattern[str], ...]:
    """Every secret-shape pattern, compiled."""
    return tuple(_pattern(i) for i in range(len(_SHAPES)))


def shaped_secrets(text: str) -> list[str]:
    """Every substring of ``text`` that has a secret's shape."""
    found: list[str] = []
    for pattern in _candidates(text):
        found.extend(m.group("s") for m in pattern.finditer(text))
    return found


# A run of text between URL and word delimiters: the unit an encoded secret is masked in.
_ENCODED_TOKEN = re.compile(r"[^\s\"'<>&?=#/;,]*%[0-9A-Fa-f]{2}[^\s\"'<>&?=#/;,]*")
_MAX_DECODINGS = 3  # %255F is "_" decoded twice; a client decoding more often is not known


def decoded_forms(text: str) -> list[str]:
    """``text`` percent-decoded once, twice, … (each distinct form; none when nothing decodes)."""
    forms: list[str] = []
    current = text
    for _ in range(_MAX_DECODINGS):
        if "%" not in current:
            break
        decoded = unquote(current)
        if decoded == current:
            break
        forms.append(decoded)
        current = decoded
    return forms


# What a reader skips when reading a key cut in two: quotes, backslashes, `#`, white space,
# control and invisible (format) characters (``sk_live_51HL""eakLeak…`` is the key).
_JUNK = re.compile("[\\s\"'`\\\\#\x00-\x1f\x7f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
                   "\u2060-\u2064\ufeff]+")


_JOINED_PIECES = 8  # a key cut more often than this is not read as one
_JOINED_CHARS = 256


def hides_shaped_secret(text: str) -> bool:
    """Whether a form of ``text`` a reader or a client makes has a secret's shape that ``text``
    itself hides: percent-decoded (``sk%5Flive%5F…``) or with the junk cutting it removed."""
    forms = decoded_forms(text)
    pieces = _JUNK.split(text)
    if len(pieces) > 1 and _candidates("".join(pieces)):
        # a key may start at any piece (``key sk_live_51HL eak…``): join from each piece on
        forms += ["".join(pieces[i:i + _JOINED_PIECES])[:_JOINED_CHARS] for i in range(len(pieces))]
    return any(shaped_secrets(form) for form in forms)


def mask_shapes(text: str) -> str:
    """``text`` with everything that has a secret's shape replaced by ``***``; a percent-encoded
    secret is masked as the whole run of text it is encoded in."""
    for pattern in _candidates(text):
        if pattern.search(text):
            text = pattern.sub(lambda m: m.group(0)[: m.start("s") - m.start()] + MASK
                               + m.group(0)[m.end("s") - m.start():], text)
    if "%" in text:
        text = _ENCODED_TOKEN.sub(lambda m: MASK if hides_shaped_secret(m.group(0)) else m.group(0), text)
    return text
