"""Adversarial tests of check-env: hostile URLs read as the clients read them, secrets in every
encoded form, and the promises of the rules page. Each failed before its fix."""

from __future__ import annotations

import warnings
from pathlib import Path
from urllib.parse import quote

import pytest
from pymongo import uri_parser

from muzo_ops.env import checks
from tests.envdata import FULL, SECRETS, write_env
from tests.helpers import assert_no_secret, run_cli

SRV = "mongodb+srv://muzo_app:pw-1234@cluster.example.com/muzo?serverSelectionTimeoutMS=30000"


def codes(values: dict[str, str]) -> set[tuple[str | None, str]]:
    return {(p.variable, p.code) for p in checks.check(values).problems}


def srv_options_as_the_driver_reads(url: str) -> dict[str, object]:
    """pymongo's options for an SRV URL, without resolving SRV records (the TLS default it applies)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # parse the same options on a plain URL; the driver adds tls=True for SRV only when
        # neither tls nor ssl is given (pymongo.uri_parser: `if "tls" not in options and "ssl" not in options`)
        plain = url.replace("mongodb+srv://", "mongodb://", 1)
        options = dict(uri_parser.parse_uri(plain, validate=True, warn=True)["options"])
    if "tls" not in options and "ssl" not in options:
        options["tls"] = True
    return options


@pytest.mark.parametrize("option", ["tls=false", "ssl=false", "TLS=false", "tls=true&tls=false",
                                    "SSL=true&ssl=false"])
def test_an_srv_url_that_turns_tls_off_fails_production(option: str) -> None:
    url = f"{SRV}&{option}"
    assert not srv_options_as_the_driver_reads(url)["tls"]  # the driver connects in plain text
    assert ("DATABASE_URL", "production-mongo-no-tls") in codes({**FULL, "DATABASE_URL": url})


@pytest.mark.parametrize("option", ["", "&tls=true", "&ssl=true"])
def test_an_srv_url_with_tls_on_or_by_default_passes(option: str) -> None:
    url = f"{SRV}{option}"
    assert srv_options_as_the_driver_reads(url)["tls"]
    assert ("DATABASE_URL", "production-mongo-no-tls") not in codes({**FULL, "DATABASE_URL": url})
