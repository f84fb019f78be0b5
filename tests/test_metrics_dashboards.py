"""The Grafana dashboard and the Prometheus alert rules name only what the worker and exporter expose.

Every ``muzo_*`` metric, label and label value in their PromQL is looked up
in a real exposition (a PrometheusObserver fed events, a QueueExporter on
SecantusDB); the rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``); the dashboard's queries parse with promtool.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from muzo_ops.metrics.exporter import QueueExporter, exporter_registry
from muzo_ops.metrics.observer import PrometheusObserver
from muzo_ops.queue.events import JobInfo, Outcome, WorkerInfo
from muzo_ops.queue.jobs import JobType
from tests.helpers import ROOT
from tests.servers import Secantus

DASHBOARD = ROOT / "deploy" / "grafana" / "muzo-worker.json"
RULES = ROOT / "deploy" / "prometheus" / "muzo-worker-rules.yml"
RULES_TESTS = ROOT / "deploy" / "prometheus" / "muzo-worker-rules.test.yml"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = ("promtool is not installed: apt-get install prometheus (tests/install-deps.sh installs it); "
               "the rules and dashboard queries are NOT checked")
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
PROMETHEUS_METRICS = {"up"}  # Prometheus's own series about each target
PROMQL_WORDS = {"sum", "max", "min", "count", "avg", "rate", "increase", "by", "without", "on", "ignoring",
                "and", "or", "unless", "histogram_quantile", "time", "absent", "le", "bool", "offset"}

Exposed = dict[str, dict[str, set[str]]]  # sample name -> label name -> values seen


@pytest.fixture(scope="module")
def exposed(secantus: Secantus) -> Exposed:
    """Sample names, labels and label values of a worker and an exporter after some work."""
    worker = PrometheusObserver()
    worker.worker_ready(WorkerInfo("w:1:a", "0.1.0", tuple(JobType), 2, True, True))
    worker.claim_tick()
    for n, job_type in enumerate(JobType):
        job = JobInfo(f"{n:024x}", job_type, 1, 3)
        worker.job_started(job, 0.1)
        worker.job_finished(job, Outcome.DONE, 0.2, None)
        worker.connection_error("claim", 1, ConnectionError())
    texts = [generate_latest(worker.registry).decode()]
    name = "d" + uuid.uuid4().hex[:10]
    client: MongoClient[dict[str, Any]] = MongoClient(secantus.uri)
    try:
        texts.append(generate_latest(exporter_registry(QueueExporter(client[name]["Job"]))).decode())
    finally:
        client.drop_database(name)
        client.close()
    out: Exposed = defaultdict(lambda: defaultdict(set))
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = out[s.name]
                for k, v in s.labels.items():
                    labels[k].add(v)
    assert "muzo_queue_jobs" in out and "muzo_worker_jobs_total" in out
    return out


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")


def problems(expr: str, exposed: Exposed) -> list[str]:
    """What in ``expr`` names a metric, label or value that nothing exposes."""
    found: list[str] = []
    code = re.sub(r'"[^"]*"', '""', expr)  # label values and strings are not names
    code = re.sub(r"\[[^\]]*\]", "", code)  # range selectors
    metrics: list[str] = []
    for m in SELECTOR.finditer(expr):
        token, braces = m.group(1), m.group(2)
        if token in PROMQL_WORDS or token.startswith("__") or not re.search(rf"\b{re.escape(token)}\b", code):
            continue
        if token.startswith("muzo_") or token in PROMETHEUS_METRICS:
            metrics.append(token)
            if token.startswith("muzo_") and token not in exposed:
                found.append(f"metric {token} is not exposed")
                continue
            for label, _op, value in MATCHER.findall(braces or ""):
                if label in TARGET_LABELS or token in PROMETHEUS_METRICS:
                    continue
                seen = exposed[token].get(label)
                if seen is None:
                    found.append(f"{token} has no label {label}")
                    continue
                for alternative in value.split("|"):
                    if "$" not in alternative and alternative not in seen:
                        found.append(f"{token}{{{label}}} never has the value {alternative!r} (seen: {sorted(seen)})")
    known = TARGET_LABELS | {"le"} | {label for metric in metrics if metric in exposed for label in exposed[metric]}
    for group in GROUPING.findall(code):
        for label in filter(None, (g.strip() for g in group.split(","))):
            if label not in known:
                found.append(f"grouping by {label}, which none of {metrics} has")
    if not metrics:
        found.append("names no metric")
    return found


def dashboard_exprs() -> list[tuple[str, str]]:
    data = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in data["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[tuple[str, str]]:
    data = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in data["groups"] for r in g["rules"]]


def test_checker_catches_wrong_names(exposed: Exposed) -> None:
    assert problems('sum by (queue) (rate(muzo_worker_jobs_total{outcome="failed"}[5m]))', exposed) == []
    assert problems("rate(muzo_worker_job_total[5m])", exposed) == ["metric muzo_worker_job_total is not exposed"]
    assert problems('muzo_queue_jobs{status="PENDING"}', exposed)[0].startswith(
        "muzo_queue_jobs{status} never has the value 'PENDING'")
    assert problems('muzo_queue_jobs{state="DONE"}', exposed) == ["muzo_queue_jobs has no label state"]
    assert problems("sum by (outcome) (muzo_queue_jobs)", exposed) == [
        "grouping by outcome, which none of ['muzo_queue_jobs'] has"]


def test_dashboard_names_only_exposed_metrics(exposed: Exposed) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    found = {f"{title}: {expr}: {p}" for title, expr in exprs for p in problems(expr, exposed)}
    assert found == set()


def test_dashboard_has_the_panels_operators_need() -> None:
    data = json.loads(DASHBOARD.read_text())
    assert data["uid"] == "muzo-worker"
    titles = " | ".join(p["title"].lower() for p in data["panels"])
    for needed in ("throughput", "failure rate", "p95 job duration", "queue depth", "oldest due", "workers up"):
        assert needed in titles, needed
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in data["panels"])
    assert len({p["id"] for p in data["panels"]}) == len(data["panels"])


def test_rules_name_only_exposed_metrics(exposed: Exposed) -> None:
    exprs = rule_exprs()
    names = {name for name, _ in exprs}
    assert {"MuzoQueueLatencyHigh", "MuzoJobFailureRateHigh", "MuzoNoWorkerUp"} <= names
    found = {f"{name}: {p}" for name, expr in exprs for p in problems(expr, exposed)}
    assert found == set()


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_check_rules() -> None:
    proc = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in proc.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_rule_unit_tests() -> None:
    """Each alert fires on the series it is for and stays quiet otherwise (the .test.yml)."""
    proc = subprocess.run([str(PROMTOOL), "test", "rules", str(RULES_TESTS)], capture_output=True, text=True,
                          timeout=120, cwd=RULES_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULES_TESTS.read_text()))
    alerts = {name for name, _ in rule_exprs()}
    assert tested == alerts, f"alerts without a unit test: {sorted(alerts - tested)}"


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_parses_dashboard_queries(tmp_path: Path) -> None:
    """Grafana's variables replaced, each query as a recording rule: promtool parses the PromQL."""
    rules = [{"record": f"muzo:dashboard_query_{i}",
              "expr": expr.replace("$__rate_interval", "5m").replace("$worker_job", "muzo-worker")}
             for i, (_title, expr) in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_exposed_metric_is_documented(exposed: Exposed) -> None:
    doc = (ROOT / "docs" / "METRICS.md").read_text()
    families = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in exposed}
    families = {name.removesuffix("_total") if name.endswith("_total") else name for name in families}
    missing = sorted(f for f in families if f not in doc)
    assert missing == []
