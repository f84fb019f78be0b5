"""Sensitivity and redaction: what is secret, and how every output hides it.

- ``sensitivity``: the one rule for "is this variable sensitive" (declared names, else name shape).
- ``shapes``: text with a secret's shape, found and masked anywhere.
- ``masking``: a value or URL as it may be shown.
- ``redactor``: ``Redactor``, which hides every known secret in text.

Nothing here imports the env schema or MongoDB code: callers pass what they know in.
"""
