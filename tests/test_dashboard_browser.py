"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

One ``muzo-ops dashboard --allow-actions`` process and one worker (the demo
``echo`` handler for MOCKUP) on a fresh database. Each test saves a
screenshot under the run's temporary folder; with MUZO_DASHBOARD_SCREENSHOT
set, the overview's is also saved there (docs/dashboard.png in the README).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from pymongo.collection import Collection

from tests.dashboard_helpers import DASHBOARD_PASSWORD, SECRETS, env_values, fresh_jobs, secret_payload
from tests.helpers import assert_no_secret
from tests.servers import Secantus, free_port, stop_pid, wait_port
from tests.workers import WorkerProcess, generation_payload, now, prisma_job, start_worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
Doc = dict[str, Any]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed "
                                "(tests/install-deps.sh installs it)")


@dataclass
class Site:
    base: str
    jobs: Collection[Doc]
    shots: Path
    failed: list[Doc]
    worker: WorkerProcess
    dashboard_log: Path
    pages: list[str] = field(default_factory=list)  # every page's HTML, searched for secrets at the end


@pytest.fixture(scope="module")
def site(secantus: Secantus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("dashboard-browser")
    with fresh_jobs(secantus) as (jobs, _commands, url):
        t = now()
        failed = [prisma_job("MOCKUP", secret_payload(i), status="FAILED", attempts=3, updatedAt=t,
                             lastError={"name": "UpstreamError", "message": "print provider said 502",
                                        "stack": "Traceback (most recent call last): …"}) for i in range(3)]
        jobs.insert_many([*failed, *(prisma_job("MOCKUP", status="DONE", updatedAt=t, result={"ok": True})
                                     for _ in range(12)),
                          *(prisma_job("GENERATION", generation_payload(), availableAt=t - dt.timedelta(seconds=40))
                            for _ in range(2)),
                          prisma_job("FULFILLMENT", {}, availableAt=t + dt.timedelta(hours=2)),
                          prisma_job("GENERATION", generation_payload(), status="RUNNING", attempts=1, updatedAt=t,
                                     lockedBy="gpu-host-2:4711:9f3a1c", lockedAt=t,
                                     lockedUntil=t + dt.timedelta(minutes=5))])
        env = folder / ".env"
        env.write_text("".join(f"{k}={v}\n" for k, v in env_values(url).items()))
        env.chmod(0o600)
        port = free_port()
        log = folder / "dashboard.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "dashboard", "--env-file", str(env),
                                     "--port", str(port), "--allow-actions"], stdout=sink, stderr=subprocess.STDOUT)
        worker = start_worker(folder, url, "--poll-seconds", "0.5", handler="MOCKUP=muzo_ops.queue.handlers.demo:echo")
        try:
            wait_port(port, 30, proc)  # type: ignore[arg-type]
            site = Site(f"http://127.0.0.1:{port}", jobs, folder, failed, worker, log)
            yield site
            for html in site.pages:
                assert_no_secret(html, SECRETS)
        finally:
            worker.terminate()
            stop_pid(proc)  # type: ignore[arg-type]
        assert_no_secret(log.read_text() + worker.text(), SECRETS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    context = browser.new_context(http_credentials={"username": "ops", "password": DASHBOARD_PASSWORD},
                                  viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: problems.append(str(exc)))
    yield tab
    site.pages.append(tab.content())
    context.close()
    # no script error, nothing refused by the CSP (an aborted /events and the 409 page a test asks for aside)
    assert [p for p in problems if "ERR_FAILED" not in p and "409 (Conflict)" not in p] == []


def shot(tab: Any, site: Site, name: str) -> Path:
    path = site.shots / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path


def test_refused_without_credentials(browser: Any, site: Site) -> None:
    from playwright.sync_api import Error

    for credentials in (None, {"username": "ops", "password": "not-the-password"}):
        context = browser.new_context(http_credentials=credentials)
        tab = context.new_page()
        statuses: list[int] = []
        tab.on("response", lambda response, seen=statuses: seen.append(response.status))
        try:  # no credentials: Chromium gives up; wrong ones: it shows the 401 answer
            response = tab.goto(f"{site.base}/jobs")
            assert response is not None and response.status == 401 and "credentials required" in tab.content()
        except Error as exc:
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
        assert statuses and set(statuses) == {401}
        assert context.request.get(f"{site.base}/api/overview").status == 401
        # a new tab: after ERR_INVALID_AUTH_CREDENTIALS Chromium may still be committing its error page in
        # the first one, and that navigation would interrupt ours
        health = context.new_page()
        answer = health.goto(f"{site.base}/healthz")
        assert answer is not None and answer.status == 200
        shot(health, site, "refused")
        context.close()


def test_overview(page: Any, site: Site) -> None:
    page.goto(f"{site.base}/")
    row = page.locator('tr[data-type="GENERATION"]')
    assert row.locator('td[data-count="PENDING_DUE"]').inner_text() == "2"
    assert page.locator('tr[data-type="MOCKUP"] td[data-count="FAILED"]').inner_text() == "3"
    assert page.locator('tr[data-type="FULFILLMENT"] td[data-count="PENDING_SCHEDULED"]').inner_text() == "1"
    assert "gpu-host-2:4711:9f3a1c" in page.locator("table.workers").inner_text()
    expect(page.locator("#live")).to_contain_text("change stream")
    path = shot(page, site, "overview")
    target = os.environ.get("MUZO_DASHBOARD_SCREENSHOT")
    if target:
        shutil.copyfile(path, target)


def test_filter_the_list_and_open_a_masked_job(page: Any, site: Site) -> None:
    page.goto(f"{site.base}/jobs")
    page.select_option('select[name="status"]', "FAILED")
    page.select_option('select[name="type"]', "MOCKUP")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/jobs?status=FAILED&type=MOCKUP**")
    statuses = page.locator("table.jobs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.status)")
    assert statuses == ["FAILED"] * 3
    shot(page, site, "list-failed")
    page.locator("a.id").first.click()
    page.wait_for_selector("#payload")
    payload = page.locator("#payload").inner_text()
    assert '"password": "***"' in payload and '"accessToken": "***"' in payload and "order-" in payload
    assert_no_secret(page.content(), SECRETS)
    shot(page, site, "job-masked")


def test_retry_a_failed_job_and_see_it_run(page: Any, site: Site) -> None:
    job = site.failed[0]
    page.goto(f"{site.base}/jobs/{job['_id']}")
    assert page.locator("#status").inner_text() == "FAILED"
    page.get_by_role("button", name="Retry").click()
    page.wait_for_url(f"**/jobs/{job['_id']}?done=retry")
    page.evaluate("window.__sameDocument = true")
    try:
        expect(page.locator("#status")).to_have_text("DONE", timeout=30_000)
    except AssertionError:
        print(site.jobs.find_one({"_id": job["_id"]}))
        print(site.worker.text()[-3000:])
        print(site.dashboard_log.read_text()[-2000:])
        raise
    assert page.evaluate("window.__sameDocument") is True  # updated in place: no reload
    assert '"digest"' in page.locator("#result").inner_text()
    assert site.jobs.find_one({"_id": job["_id"]})["status"] == "DONE"
    shot(page, site, "retried-done")


def test_a_job_changed_meanwhile_is_not_touched(page: Any, site: Site) -> None:
    job = site.failed[1]
    page.route("**/events*", lambda route: route.abort())  # no live redraw: the page stays as drawn
    page.goto(f"{site.base}/jobs/{job['_id']}")
    site.jobs.update_one({"_id": job["_id"]}, {"$set": {"updatedAt": now() + dt.timedelta(seconds=1)}})
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("p.message")).to_have_text("changed meanwhile, reload")
    assert site.jobs.find_one({"_id": job["_id"]})["status"] == "FAILED"
    shot(page, site, "changed-meanwhile")


def test_enqueue_and_see_the_count_change_without_reload(page: Any, site: Site) -> None:
    page.goto(f"{site.base}/")
    cell = 'tr[data-type="GENERATION"] td[data-count="PENDING_DUE"]'
    before = int(page.locator(cell).inner_text())
    expect(page.locator("#live")).to_contain_text("change stream")
    page.evaluate("window.__sameDocument = true")
    site.jobs.insert_one(prisma_job("GENERATION", generation_payload()))
    expect(page.locator(cell)).to_have_text(str(before + 1), timeout=20_000)
    assert page.evaluate("window.__sameDocument") is True
    shot(page, site, "count-changed")


def test_an_action_while_the_database_is_frozen_says_reload(browser: Any, site: Site, secantus: Secantus) -> None:
    """SIGSTOP the database and press Retry: within the bound (5 s; 3x allowed) the browser shows one line
    saying the outcome is unknown and to reload; after SIGCONT the reloaded page shows the job, retried or
    not (never half: one command)."""
    import signal
    import time

    job = site.failed[2]
    context = browser.new_context(http_credentials={"username": "ops", "password": DASHBOARD_PASSWORD})
    tab = context.new_page()
    tab.route("**/events*", lambda route: route.abort())  # no live redraw: the page stays as drawn
    tab.goto(f"{site.base}/jobs/{job['_id']}")
    assert tab.locator("#status").inner_text() == "FAILED"
    assert secantus.proc is not None
    os.kill(secantus.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        tab.get_by_role("button", name="Retry").click()
        expect(tab.locator("p.message")).to_contain_text("is unknown", timeout=15_000)
        took = time.monotonic() - started
    finally:
        os.kill(secantus.proc.pid, signal.SIGCONT)
    message = tab.locator("p.message").inner_text()
    print(f"frozen: the action's page after {took:.2f} s: {message}")
    assert took < 15.0 and "reload the job" in message
    shot(tab, site, "frozen-action")
    site.pages.append(tab.content())
    deadline = time.monotonic() + 30
    while True:
        shown = tab.goto(f"{site.base}/jobs/{job['_id']}")
        if shown is not None and shown.status == 200:
            break
        assert time.monotonic() < deadline, "the job page did not come back after SIGCONT"
        time.sleep(0.5)
    doc = site.jobs.find_one({"_id": job["_id"]})
    assert doc is not None and tab.locator("#status").inner_text() in ("FAILED", "PENDING", "RUNNING", "DONE")
    assert (doc["status"] == "FAILED") == (doc["attempts"] == 3)  # retried (attempts reset) or untouched
    context.close()
