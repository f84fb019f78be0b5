"""Payload validation, the transaction decision, handler registration, log lines."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from muzo_ops.errors import ConfigError
from muzo_ops.logs import Logger
from muzo_ops.mongo import topology
from muzo_ops.queue import handlers
from muzo_ops.queue.jobs import JobType, PayloadError
from muzo_ops.queue.payloads import validate
from muzo_ops.queue.worker import WorkerSettings, backoff_delay
from muzo_ops.redact.redactor import Redactor
from muzo_ops.sdnotify import Notifier
from tests.workers import generation_payload, mockup_payload

FULFILLMENT: dict[str, Any] = {
    "provider": "printful",
    "order": {"orderId": "o1", "files": [{"url": "https://cdn.example.com/a.png", "type": "default"}],
              "shipping": {"name": "A", "address1": "1 Main St", "city": "Lyon", "zip": "69001", "country": "FR"},
              "items": [{"productId": "p1", "variantId": 42, "quantity": 1, "productOptions": {"a": 1}}]},
}


def test_valid_payloads_pass() -> None:
    validate(JobType.GENERATION, generation_payload(parameters={
        "stage": "final", "quality": "high", "size": "1024x1536", "outputFormat": "webp",
        "background": "transparent", "moderation": "low", "n": 4, "partialImages": 0,
        "inputFidelity": "high", "upscale": {"target": "8k", "provider": "runpod"}}))
    validate(JobType.MOCKUP, mockup_payload(template="tee"))
    validate(JobType.FULFILLMENT, FULFILLMENT)


@pytest.mark.parametrize(
    ("job_type", "payload", "expected"),
    [
        (JobType.GENERATION, generation_payload(prompt=""), "prompt: must be a non-empty string"),
        (JobType.GENERATION, generation_payload(inputImageUrl="ftp://x/y"), "inputImageUrl: must be an http(s) URL"),
        (JobType.GENERATION, generation_payload(parameters={"n": 5}), "parameters.n: must be an integer from 1 to 4"),
        (JobType.GENERATION, generation_payload(parameters={"size": "2048x2048"}), "parameters.size: must be one of"),
        (JobType.GENERATION, generation_payload(parameters={"upscale": {"target": "16k", "provider": "runpod"}}),
         "parameters.upscale.target"),
        (JobType.GENERATION, {"prompt": "x"}, "projectId: required"),
        (JobType.MOCKUP, {"orderId": "o"}, "outputAssetId: required; productVariantId: required"),
        (JobType.FULFILLMENT, {**FULFILLMENT, "provider": "gelato"}, "provider: must be one of"),
        (JobType.FULFILLMENT, {**FULFILLMENT, "order": {**FULFILLMENT["order"], "items": [
            {"variantId": "v", "quantity": 0}]}}, "order.items[0].quantity: must be an integer > 0"),
        (JobType.FULFILLMENT, {**FULFILLMENT, "order": {**FULFILLMENT["order"], "files": [
            {"url": "https://x/y", "type": "preview"}]}}, "order.files[0].type"),
        (JobType.MOCKUP, ["not", "an", "object"], "payload must be an object"),
    ],
)
def test_invalid_payloads_name_the_field(job_type: JobType, payload: Any, expected: str) -> None:
    with pytest.raises(PayloadError) as info:
        validate(job_type, payload)
    assert expected in str(info.value)


def test_transaction_decision_order() -> None:
    direct = "mongodb://h:27017/muzo?directConnection=true"
    rs = "mongodb://h:27017/muzo?replicaSet=rs0"
    plain = "mongodb://h:27017/muzo"
    assert topology.from_setting_or_url("on", direct).enabled is True  # the setting wins
    assert topology.from_setting_or_url("0", rs).enabled is False
    assert topology.from_setting_or_url(None, direct).enabled is False
    assert topology.from_setting_or_url(None, rs).enabled is True
    assert topology.from_setting_or_url(None, "mongodb+srv://c.example.net/muzo").enabled is True
    assert topology.from_setting_or_url(None, plain) is None
    assert topology.from_hello({"setName": "rs0", "hosts": ["h:1"]}).enabled is True
    assert topology.from_hello({"msg": "isdbgrid"}).enabled is True
    # a standalone mongod reports these too: not a replica set
    assert topology.from_hello({"logicalSessionTimeoutMinutes": 30, "topologyVersion": {}}).enabled is False


def test_backoff_doubles_with_jitter_and_cap() -> None:
    for attempt, full in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 300.0)]:
        delays = [backoff_delay(attempt, 2.0, 300.0) for _ in range(200)]
        assert full / 2 <= min(delays) and max(delays) <= full
        assert len(set(delays)) > 1


def test_settings_only_need_database_url() -> None:
    settings = WorkerSettings.from_values({"DATABASE_URL": "mongodb://h/muzo"})
    assert settings.queues == (JobType.GENERATION,) and settings.concurrency == 1
    settings = WorkerSettings.from_values({"DATABASE_URL": "mongodb://h/muzo", "WORKER_QUEUES": "mockup, fulfillment",
                                  "GENERATION_WORKER_CONCURRENCY": "3"}, concurrency=None)
    assert settings.queues == (JobType.MOCKUP, JobType.FULFILLMENT) and settings.concurrency == 3
    with pytest.raises(ConfigError, match="DATABASE_URL is not set"):
        WorkerSettings.from_values({})


def test_handler_sources_and_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    class FakeEntryPoint:
        name = "mockup"
        value = "muzo_ops.queue.handlers.demo:sleep"

    real = metadata.entry_points

    def fake(**kwargs: Any) -> Any:
        if kwargs.get("group") == handlers.ENTRY_POINT_GROUP:
            return [FakeEntryPoint()]
        return real(**kwargs)

    monkeypatch.setattr(metadata, "entry_points", fake)
    from muzo_ops.queue.handlers import demo

    loaded = handlers.load([JobType.MOCKUP])
    assert loaded[JobType.MOCKUP] is demo.sleep
    loaded = handlers.load([JobType.MOCKUP], environ={handlers.ENV_VARIABLE: "MOCKUP=muzo_ops.queue.handlers.demo:echo"})
    assert loaded[JobType.MOCKUP] is demo.echo
    loaded = handlers.load([JobType.MOCKUP], ["mockup=muzo_ops.queue.handlers.demo:sleep"],
                           {handlers.ENV_VARIABLE: "MOCKUP=muzo_ops.queue.handlers.demo:echo"})
    assert loaded[JobType.MOCKUP] is demo.sleep
    with pytest.raises(ConfigError, match="unknown job type 'PRINT'"):
        handlers.load([JobType.MOCKUP], ["PRINT=x:y"])
    with pytest.raises(ConfigError, match="has no nothing"):
        handlers.load([JobType.MOCKUP], ["MOCKUP=muzo_ops.queue.handlers.demo:nothing"])


def test_demo_handlers() -> None:
    import asyncio

    from muzo_ops.queue.handlers import demo
    from muzo_ops.queue.jobs import FatalJobError, Job

    job = Job("a" * 24, JobType.MOCKUP, {"b": 1, "a": [1, 2]}, 1, 3, None)
    same = Job("b" * 24, JobType.MOCKUP, {"a": [1, 2], "b": 1}, 2, 3, None)
    assert demo.echo(job)["digest"] == demo.echo(same)["digest"]
    assert asyncio.run(demo.sleep(Job("c" * 24, JobType.MOCKUP, {"seconds": 0.01}, 1, 3, None))) == {"slept": 0.01}
    with pytest.raises(FatalJobError):
        asyncio.run(demo.sleep(Job("c" * 24, JobType.MOCKUP, {"seconds": "x"}, 1, 3, None)))


def test_pino_lines() -> None:
    stream = io.StringIO()
    log = Logger("muzo-worker", "info", stream, Redactor(["topsecretvalue"]))
    log.debug("hidden")
    child = log.child("muzo-queue-init")
    child.info("Queue worker started", queue="generation")
    try:
        raise ValueError("bad topsecretvalue")
    except ValueError as exc:
        log.log("error", "boom", err=exc)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert {"level", "time", "pid", "hostname", "name", "msg"} <= set(first)
    assert first["level"] == 30 and first["name"] == "muzo-queue-init" and first["queue"] == "generation"
    assert lines[1]["level"] == 50 and lines[1]["err"]["type"] == "ValueError"
    assert "topsecretvalue" not in stream.getvalue() and "bad ***" in lines[1]["err"]["message"]


def test_notifier_is_silent_without_systemd_and_parses_watchdog() -> None:
    assert Notifier({}).notify("READY=1") is False
    n = Notifier({"NOTIFY_SOCKET": "@muzo-test", "WATCHDOG_USEC": "2000000"})
    assert n.address == "\0muzo-test" and n.watchdog_s == 2.0
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"}).watchdog_s is None
