"""Text with a secret's shape (a Stripe key, a JWT, a URL password), found and masked anywhere."""

from __future__ import annotations

import re

from muzo_ops.constants import MASK

# Text with a secret's shape, masked wherever it appears (in a variable not
# meant for it, pasted on a line of its own, inside a URL option). Each
# pattern's group "s" is the secret; text around it stays readable. Short
# prefixes must start a token (not follow `-` or `_`), so a random base64url
# value does not look like one by chance.
SECRET_SHAPES: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"(?<![A-Za-z0-9])(?P<s>(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{6,})",  # Stripe secret / restricted
    r"(?<![A-Za-z0-9])(?P<s>whsec_[A-Za-z0-9]{10,})",  # Stripe webhook signing secret
    r"(?<![A-Za-z0-9_-])(?P<s>sk-(?:proj|svcacct|admin|ant-api03|ant-admin01)-[A-Za-z0-9_-]{20,})",  # OpenAI, Anthropic
    r"(?<![A-Za-z0-9_-])(?P<s>sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})",  # OpenAI, older keys
    r"(?<![A-Za-z0-9])(?P<s>(?:AKIA|ASIA)[0-9A-Z]{16})(?![0-9A-Z])",  # AWS access key id
    r"(?<![A-Za-z0-9_-])(?P<s>gh[pousr]_[A-Za-z0-9]{30,})",  # GitHub
    r"(?<![A-Za-z0-9_-])(?P<s>github_pat_[A-Za-z0-9_]{30,})",
    r"(?<![A-Za-z0-9_-])(?P<s>glpat-[A-Za-z0-9_-]{16,})",  # GitLab
    r"(?<![A-Za-z0-9_-])(?P<s>xox[abposr]-[A-Za-z0-9-]{10,})",  # Slack
    r"(?<![A-Za-z0-9_-])(?P<s>AIza[0-9A-Za-z_-]{35})",  # Google API key
    r"(?<![A-Za-z0-9])(?P<s>GOCSPX-[A-Za-z0-9_-]{10,})",  # Google OAuth client secret
    r"(?<![A-Za-z0-9_-])(?P<s>rpa_[A-Za-z0-9]{16,})",  # RunPod
    r"(?<![A-Za-z0-9_-])(?P<s>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",  # JWT
    r"(?P<s>-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z))",
    # the password of a URL's user:password@ part (any scheme)
    r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:\"']*:(?P<s>[^\s@/\"']+)@",
    # credentials inside URL options and key:value lists (MongoDB authMechanismProperties)
    r"(?i:AWS_SESSION_TOKEN|AWS_SECRET_ACCESS_KEY|SESSION_TOKEN)(?::|%3A)(?P<s>[^,&\s\"']+)",
    r"[?&;](?i:password|passwd|pwd|secret|token|api_?key|access_?token|auth_?token|sig|signature|"
    r"X-Amz-Signature|X-Amz-Security-Token|tlsCertificateKeyFilePassword|sslClientCertificateKeyPassword)"
    r"=(?P<s>[^&#\s\"']+)",
))
# One pass that tells whether any shape is there at all (most text has none).
_ANY_SHAPE = re.compile("|".join(p.pattern.replace("(?P<s>", "(?:") for p in SECRET_SHAPES))


def shaped_secrets(text: str) -> list[str]:
    """Every substring of ``text`` that has a secret's shape."""
    found: list[str] = []
    if not _ANY_SHAPE.search(text):
        return found
    for pattern in SECRET_SHAPES:
        found.extend(m.group("s") for m in pattern.finditer(text))
    return found


def mask_shapes(text: str) -> str:
    """``text`` with everything that has a secret's shape replaced by ``***``."""
    if not _ANY_SHAPE.search(text):
        return text
    for pattern in SECRET_SHAPES:
        if pattern.search(text):
            text = pattern.sub(lambda m: m.group(0)[: m.start("s") - m.start()] + MASK
                               + m.group(0)[m.end("s") - m.start():], text)
    return text
