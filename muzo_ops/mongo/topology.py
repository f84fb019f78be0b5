"""Whether the queue uses MongoDB transactions.

The reference's order: QUEUE_TRANSACTIONS when set; else the URL
(directConnection=true: off; replicaSet= or mongodb+srv://: on); else the
server's ``hello``. Unlike the old worker, a ``hello`` counts as a replica
set only with ``setName`` (or a mongos's ``msg: isdbgrid``): a standalone
mongod also reports ``logicalSessionTimeoutMinutes`` and
``topologyVersion``, and servers such as SecantusDB --standalone accept
transactions they cannot honour, so the topology decides, never an error.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from muzo_ops.booleans import parse_bool
from muzo_ops.mongo import url as mongourl


class Source(enum.StrEnum):
    """What settled the decision."""

    SETTING = "QUEUE_TRANSACTIONS"  # the variable was set
    URL = "DATABASE_URL"  # directConnection / replicaSet / SRV
    HELLO = "hello"  # the server's topology


@dataclass(frozen=True)
class TransactionMode:
    """The decision and why."""

    enabled: bool
    source: Source
    reason: str


def from_setting_or_url(setting: str | None, url: str) -> TransactionMode | None:
    """Decide without the server, or None when only ``hello`` can tell."""
    if setting is not None and setting.strip() != "":
        enabled = parse_bool(setting)
        return TransactionMode(enabled, Source.SETTING, f"QUEUE_TRANSACTIONS={setting.strip()}")
    parsed = mongourl.parse(url)
    from_url = mongourl.transactions_from_url(parsed)
    if from_url is None:
        return None
    if not from_url:
        return TransactionMode(False, Source.URL, "directConnection=true")
    return TransactionMode(True, Source.URL, "replicaSet=" if parsed.option("replicaSet") else "mongodb+srv")


def from_hello(hello: Mapping[str, Any]) -> TransactionMode:
    """Decide from a ``hello`` reply."""
    if hello.get("setName"):
        return TransactionMode(True, Source.HELLO, f"replica set {hello['setName']}")
    if hello.get("msg") == "isdbgrid":
        return TransactionMode(True, Source.HELLO, "sharded cluster (mongos)")
    return TransactionMode(False, Source.HELLO, "standalone server")
