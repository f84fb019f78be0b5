"""Sensitivity and redaction: what is secret, and how every output hides it."""
