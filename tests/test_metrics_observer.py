"""PrometheusObserver and HealthState, driven by the worker's events called directly."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from muzo_ops.metrics.health import HealthState
from muzo_ops.metrics.observer import DURATION_BUCKETS, PrometheusObserver
from muzo_ops.queue.events import JobInfo, Observers, Outcome, WorkerInfo
from muzo_ops.queue.jobs import JobType

INFO = WorkerInfo(worker_id="host-a:42:abc123", version="0.1.0", queues=(JobType.MOCKUP, JobType.GENERATION),
                  concurrency=4, transactions=True, change_streams=False)


def job(n: int, job_type: JobType = JobType.MOCKUP, attempt: int = 1) -> JobInfo:
    return JobInfo(id=f"{n:024x}", type=job_type, attempt=attempt, max_attempts=3)


def samples(observer: PrometheusObserver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back: (name, sorted labels) -> value."""
    text = generate_latest(observer.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(observer: PrometheusObserver, name: str, **labels: str) -> float | None:
    return samples(observer).get((name, tuple(sorted(labels.items()))))


def test_ready_initialises_series_and_info() -> None:
    obs = PrometheusObserver()
    obs.worker_ready(INFO)
    got = samples(obs)
    assert got[("muzo_worker_info", (("change_streams", "false"), ("transactions", "true"),
                                     ("version", "0.1.0"), ("worker_id", "host-a:42:abc123")))] == 1.0
    assert value(obs, "muzo_worker_concurrency") == 4.0
    for job_type in INFO.queues:
        assert value(obs, "muzo_worker_jobs_in_progress", queue=job_type.queue) == 0.0
        for outcome in Outcome:
            assert value(obs, "muzo_worker_jobs_total", queue=job_type.queue, type=job_type.value,
                         outcome=outcome.value) == 0.0
        assert value(obs, "muzo_worker_job_duration_seconds_count", queue=job_type.queue,
                     type=job_type.value) == 0.0
    assert value(obs, "muzo_worker_jobs_in_progress", queue="fulfillment") is None


def test_runs_counted_timed_and_in_progress() -> None:
    obs = PrometheusObserver(clock=lambda: 1_700_000_000.5)
    obs.worker_ready(INFO)
    obs.claim_tick()
    assert value(obs, "muzo_worker_last_claim_timestamp_seconds") == 1_700_000_000.5
    obs.job_started(job(1), 0.2)
    obs.job_started(job(2), None)
    obs.job_started(job(3, JobType.GENERATION), 12.0)
    assert value(obs, "muzo_worker_jobs_in_progress", queue="mockup") == 2.0
    assert value(obs, "muzo_worker_jobs_in_progress", queue="generation") == 1.0
    obs.job_finished(job(1), Outcome.DONE, 0.004, None)
    obs.job_finished(job(2), Outcome.RETRIED, 3.0, RuntimeError("boom"))
    obs.job_finished(job(3, JobType.GENERATION), Outcome.TIMED_OUT, 900.0, TimeoutError())
    obs.job_finished(job(3, JobType.GENERATION), Outcome.RETRIED, 900.0, TimeoutError())  # same run again
    assert value(obs, "muzo_worker_jobs_in_progress", queue="mockup") == 0.0
    assert value(obs, "muzo_worker_jobs_in_progress", queue="generation") == 0.0
    m = {"queue": "mockup", "type": "MOCKUP"}
    g = {"queue": "generation", "type": "GENERATION"}
    assert value(obs, "muzo_worker_jobs_total", outcome="done", **m) == 1.0
    assert value(obs, "muzo_worker_jobs_total", outcome="retried", **m) == 1.0
    assert value(obs, "muzo_worker_jobs_total", outcome="timed_out", **g) == 1.0
    assert value(obs, "muzo_worker_jobs_total", outcome="retried", **g) == 1.0
    # The duration histogram counts runs: the timed-out run once.
    assert value(obs, "muzo_worker_job_duration_seconds_count", **m) == 2.0
    assert value(obs, "muzo_worker_job_duration_seconds_count", **g) == 1.0
    assert value(obs, "muzo_worker_job_duration_seconds_bucket", le="0.005", **m) == 1.0
    assert value(obs, "muzo_worker_job_duration_seconds_bucket", le="900.0", **g) == 1.0
    assert value(obs, "muzo_worker_job_duration_seconds_bucket", le="600.0", **g) == 0.0
    # wait: observed only when known
    assert value(obs, "muzo_worker_job_wait_seconds_count", **m) == 1.0
    assert value(obs, "muzo_worker_job_wait_seconds_sum", **m) == 0.2
    assert value(obs, "muzo_worker_job_wait_seconds_bucket", le="10.0", **g) == 0.0
    assert value(obs, "muzo_worker_job_wait_seconds_bucket", le="30.0", **g) == 1.0


def test_buckets_span_5ms_to_15min() -> None:
    assert DURATION_BUCKETS[0] == 0.005 and DURATION_BUCKETS[-1] == 900.0
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)
    obs = PrometheusObserver()
    obs.job_started(job(1), None)
    obs.job_finished(job(1), Outcome.DONE, 1.0, None)
    les = {dict(labels)["le"] for (name, labels) in samples(obs) if name == "muzo_worker_job_duration_seconds_bucket"}
    assert les == {str(b) for b in DURATION_BUCKETS} | {"+Inf"}


def test_db_errors_released_and_exhausted() -> None:
    obs = PrometheusObserver()
    obs.connection_error("claim", 1, ConnectionError("x"))
    obs.connection_error("claim", 2, ConnectionError("x"))
    obs.connection_error("heartbeat", 1, ConnectionError("x"))
    assert value(obs, "muzo_worker_db_errors_total", where="claim") == 2.0
    assert value(obs, "muzo_worker_db_errors_total", where="heartbeat") == 1.0
    obs.job_started(job(5), 0.0)
    obs.jobs_released([job(5)])
    obs.job_finished(job(5), Outcome.RELEASED, 1.0, None)
    assert value(obs, "muzo_worker_jobs_total", queue="mockup", type="MOCKUP", outcome="released") == 1.0
    assert value(obs, "muzo_worker_jobs_in_progress", queue="mockup") == 0.0
    obs.exhausted_failed([job(6, attempt=3), job(7, JobType.FULFILLMENT, 3)], ["dead:1", None])
    assert value(obs, "muzo_worker_jobs_total", queue="mockup", type="MOCKUP", outcome="failed") == 1.0
    assert value(obs, "muzo_worker_jobs_total", queue="fulfillment", type="FULFILLMENT", outcome="failed") == 1.0


def test_no_job_id_or_error_text_in_any_label() -> None:
    obs = PrometheusObserver()
    obs.worker_ready(INFO)
    secret = "mongodb://muzo_app:hunter2-secret@db.example.com"
    for n in range(5):
        obs.job_started(job(n), 1.0)
        obs.job_finished(job(n), Outcome.FAILED, 1.0, RuntimeError(secret))
    obs.connection_error("claim", 1, ConnectionError(secret))
    text = generate_latest(obs.registry).decode()
    assert "hunter2" not in text
    for n in range(5):
        assert f"{n:024x}" not in text
    label_names = {k for (_name, labels) in samples(obs) for k, _v in labels}
    assert label_names <= {"queue", "type", "outcome", "where", "le", "version", "worker_id", "transactions",
                           "change_streams"}


def test_each_observer_has_its_own_registry() -> None:
    a, b = PrometheusObserver(), PrometheusObserver()
    a.job_started(job(1), None)
    a.job_finished(job(1), Outcome.DONE, 1.0, None)
    assert value(a, "muzo_worker_jobs_total", queue="mockup", type="MOCKUP", outcome="done") == 1.0
    assert value(b, "muzo_worker_jobs_total", queue="mockup", type="MOCKUP", outcome="done") is None


def test_observers_fan_out_reaches_metrics_and_health() -> None:
    metrics, health = PrometheusObserver(), HealthState()
    fan = Observers([metrics, health])
    fan.worker_ready(INFO)
    fan.job_started(job(1), 0.5)
    assert value(metrics, "muzo_worker_jobs_in_progress", queue="mockup") == 1.0
    assert health.healthz()[1]["inProgress"] == 1
    assert health.readyz()[0] == 200


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_health_ready_and_ticks() -> None:
    clock = Clock()
    health = HealthState(stale_after_s=60, outage_grace_s=20, clock=clock)
    assert health.readyz() == (503, {"status": "starting", "ready": False,
                                     "reasons": ["not connected to MongoDB or indexes not checked yet"]})
    code, body = health.healthz()
    assert (code, body["status"]) == (200, "starting")
    clock.now += 61
    code, body = health.healthz()
    assert code == 503 and body["reasons"] == ["worker not ready for 61s"]
    health.worker_ready(INFO)
    assert health.readyz()[0] == 200
    assert health.healthz() == (200, {"status": "ok", "ready": True, "inProgress": 0,
                                      "lastClaimAgeSeconds": 0.0, "mongoOutageSeconds": None, "loopWaitSeconds": None})
    clock.now += 59
    health.claim_tick()
    clock.now += 59
    assert health.healthz()[0] == 200
    clock.now += 2
    code, body = health.healthz()
    assert code == 503 and body["reasons"] == ["claim loop has not run for 61s"]
    # Every slot busy: the loop waits for a job to end, which is not a hang.
    health.job_started(job(1), 0.0)
    assert health.healthz()[0] == 200
    health.job_finished(job(1), Outcome.DONE, 1.0, None)
    assert health.healthz()[0] == 503
    health.claim_tick()
    assert health.healthz()[0] == 200


def test_health_outage_grace_and_recovery() -> None:
    clock = Clock()
    health = HealthState(stale_after_s=60, outage_grace_s=20, clock=clock)
    health.worker_ready(INFO)
    health.connection_error("claim", 1, ConnectionError("db.example.com:27017 refused"))
    clock.now += 10
    health.claim_tick()
    health.connection_error("claim", 2, ConnectionError("refused"))
    code, body = health.healthz()
    assert (code, body["mongoOutageSeconds"]) == (200, 10.0)
    clock.now += 10
    health.claim_tick()
    code, body = health.healthz()
    assert code == 503
    assert body["reasons"] == ["MongoDB out of reach for 20s (last error in claim: ConnectionError, 2 in a row)"]
    assert "example.com" not in str(body)
    health.claim_idle()  # a claim was answered
    assert health.healthz() == (200, {"status": "ok", "ready": True, "inProgress": 0,
                                      "lastClaimAgeSeconds": 0.0, "mongoOutageSeconds": None, "loopWaitSeconds": None})
    health.connection_error("heartbeat", 1, ConnectionError("x"))
    clock.now += 30
    health.claim_tick()
    assert health.healthz()[0] == 503
    health.db_ok()
    assert health.healthz()[0] == 200


def test_health_stopping() -> None:
    clock = Clock()
    health = HealthState(stale_after_s=60, clock=clock)
    health.worker_ready(INFO)
    health.worker_stopping()
    clock.now += 120  # draining: the claim loop no longer runs, on purpose
    assert health.healthz()[0] == 200
    assert health.healthz()[1]["status"] == "stopping"
    assert health.readyz() == (503, {"status": "stopping", "ready": False})
