"""Secrets: generation (``generate``) and redaction of every output (``redact``)."""
