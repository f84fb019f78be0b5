"""Is this host this machine? Decided in one place, as the connecting client would decide it.

A host is this machine when the C library (``getaddrinfo``, which reads
IPv4 numbers with ``inet_aton``), Node's WHATWG ``URL`` or a common
``/etc/hosts`` would send the connection to a loopback or unspecified
address (``0.0.0.0`` and ``::`` reach the local host on Linux):

- ``inet_aton`` numbers: 1 to 4 parts, each decimal, octal (``0…``) or hex
  (``0x…``), the last part filling the remaining bytes (``127.1``,
  ``2130706433``, ``0x7f.1``, ``0``); text after whitespace is ignored;
- IPv6 loopback and unspecified (``::1``, ``::``, with or without brackets
  and a zone), and IPv4 loopback written in IPv6 (``::ffff:127.0.0.1``,
  ``::127.0.0.1``);
- the names distributions map to loopback (``localhost``,
  ``localhost.localdomain``, ``ip6-localhost``, ``localhost6``…) and every
  ``*.localhost`` name (RFC 6761);
- each of those percent-encoded (``%6c%6fcalhost``), in Unicode
  compatibility forms (full-width letters, ideographic full stops: what
  WHATWG's IDNA mapping turns into ASCII), with characters that mapping
  drops (soft hyphen, zero-width space, variation selectors), upper case,
  or with a final dot;
- a path (``/tmp/mongodb-27017.sock``): a Unix socket on this machine.
"""

from __future__ import annotations

from urllib.parse import unquote

LOOPBACK_NAMES = frozenset({
    "localhost", "localhost.localdomain", "localhost4", "localhost4.localdomain4",
    "localhost6", "localhost6.localdomain6", "ip6-localhost", "ip6-loopback",
})
# Full stops WHATWG's IDNA mapping (UTS #46) reads as ".".
_DOTS = ("\u3002", "\uff0e", "\uff61")
# Code points UTS #46 (the IDNA mapping of WHATWG's URL, so Node's) maps to nothing: a host
# holding them is the host without them (``lo\u00adcalhost`` is localhost). Measured in Node.
_IGNORED = ((0xAD, 0xAD), (0x34F, 0x34F), (0x180B, 0x180D), (0x180F, 0x180F), (0x200B, 0x200B),
            (0x2060, 0x2060), (0x2064, 0x2064), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
            (0x1BCA0, 0x1BCA3), (0xE0100, 0xE01EF))
_SPACE = " \t\n\v\f\r"


def _part(text: str) -> int | None:
    """One ``inet_aton`` part: decimal, octal with a leading 0, hex with 0x; None when invalid."""
    if not text or not text[0].isascii() or not text[0].isdigit():
        return None
    try:
        if text[:2].lower() == "0x":
            return int(text[2:], 16) if text[2:] and all(c in "0123456789abcdefABCDEF" for c in text[2:]) else None
        if text[0] == "0":
            return int(text, 8) if all(c in "01234567" for c in text) else None
        return int(text) if text.isascii() and text.isdigit() else None
    except ValueError:
        return None


def inet_aton(host: str) -> int | None:
    """``host`` read as the C library's ``inet_aton`` reads it (a 32-bit number), or None."""
    for i, c in enumerate(host):
        if c in _SPACE:
            host = host[:i]
            break
    texts = host.split(".")
    if not 1 <= len(texts) <= 4:
        return None
    parts = [_part(t) for t in texts]
    if any(p is None for p in parts):
        return None
    numbers = [p for p in parts if p is not None]
    *head, last = numbers
    if any(p > 0xFF for p in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = last
    for i, p in enumerate(head):
        value |= p << (8 * (3 - i))
    return value


def _ipv4_is_local(number: int) -> bool:
    """127.0.0.0/8 (loopback) or 0.0.0.0 (unspecified: the local host on Linux)."""
    return number >> 24 == 127 or number == 0


def normalized(host: str) -> str:
    """``host`` as a client compares it: percent-decoded, Unicode compatibility forms folded,
    lower case, brackets and one final dot removed."""
    name = unquote(host)
    if not name.isascii():
        import unicodedata

        name = "".join(c for c in name if not any(low <= ord(c) <= high for low, high in _IGNORED))
        name = unicodedata.normalize("NFKC", name)
    for dot in _DOTS:
        name = name.replace(dot, ".")
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name[:-1] if name.endswith(".") and not name.endswith("..") else name


def is_this_machine(host: str) -> bool:
    """Whether a client connecting to ``host`` reaches the machine it runs on."""
    name = normalized(host)
    if name.startswith("/"):
        return True  # a Unix domain socket path
    if not name:
        return False
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    number = inet_aton(name)
    if number is not None:
        return _ipv4_is_local(number)
    if ":" not in name:
        return False  # a host name, not an address
    import ipaddress

    try:
        address = ipaddress.IPv6Address(name.split("%", 1)[0])
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified:
        return True
    mapped = address.ipv4_mapped
    if mapped is not None:
        return _ipv4_is_local(int(mapped))
    if int(address) >> 32 == 0:  # IPv4-compatible (::127.0.0.1)
        return _ipv4_is_local(int(address) & 0xFFFFFFFF)
    return False
