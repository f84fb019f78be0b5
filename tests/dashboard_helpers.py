"""What the dashboard tests share: known secrets, env values, a counted client, the app under TestClient."""

from __future__ import annotations

import base64
import io
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymongo import MongoClient, monitoring
from pymongo.collection import Collection

from muzo_ops.queue.store import CODEC_OPTIONS
from tests.servers import Secantus
from tests.test_metrics_exporter import Commands  # every command a client sends

Doc = dict[str, Any]
__all__ = ["Commands"]

DASHBOARD_PASSWORD = "Dash-Board-Pass-1234567890"
NEXTAUTH_SECRET = "nextauth-secret-value-0123456789abcdefXYZ"  # sensitive in the schema
STRIPE_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"  # a secret by its shape
PAYLOAD_PASSWORD = "payload-pass-Q7r8s9"  # only under a secret-named key
PAYLOAD_TOKEN = "tok-Zz91-only-in-the-payload"
SECRETS = [DASHBOARD_PASSWORD, NEXTAUTH_SECRET, STRIPE_KEY, PAYLOAD_PASSWORD, PAYLOAD_TOKEN]


def secret_payload(i: int = 0) -> Doc:
    """A MOCKUP payload carrying secrets every way the mask must catch."""
    return {"orderId": f"order-{i}", "outputAssetId": f"asset-{i}", "productVariantId": "var-1",
            "password": PAYLOAD_PASSWORD, "provider": {"apiKey": 12345, "accessToken": PAYLOAD_TOKEN},
            "note": f"signed with {NEXTAUTH_SECRET}", "stripe": STRIPE_KEY}


def env_values(url: str, password: str | None = DASHBOARD_PASSWORD) -> dict[str, str]:
    values = {"DATABASE_URL": url, "NEXTAUTH_SECRET": NEXTAUTH_SECRET, "DASHBOARD_USER": "ops"}
    if password:
        values["DASHBOARD_PASSWORD"] = password
    return values


def basic(user: str = "ops", password: str = DASHBOARD_PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextmanager
def fresh_jobs(secantus: Secantus, *listeners: monitoring.CommandListener
               ) -> Iterator[tuple[Collection[Doc], Commands, str]]:
    """A new database's Job collection (the store's codec options) on a client whose commands are counted."""
    name = "d" + uuid.uuid4().hex[:10]
    commands = Commands()
    client: MongoClient[Doc] = MongoClient(secantus.uri, event_listeners=[commands, *listeners])
    jobs = client[name].get_collection("Job", codec_options=CODEC_OPTIONS)
    jobs.create_index([("type", 1), ("status", 1), ("availableAt", 1)])
    jobs.create_index([("status", 1), ("lockedUntil", 1)])
    try:
        yield jobs, commands, secantus.url(name, directConnection="true")
    finally:
        client.drop_database(name)
        client.close()


def form_fields(html: str, action: str) -> dict[str, str]:
    """The hidden fields of the form posting to a URL ending in ``action``."""
    match = re.search(r'<form method="post" action="[^"]*' + re.escape(action) + r'"[^>]*>(.*?)</form>', html, re.S)
    assert match, f"no form for {action}"
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', match.group(1)))


def log_stream() -> io.StringIO:
    return io.StringIO()
