"""The worker deploy as a plain pyinfra deploy file (``pyinfra INVENTORY deploy/worker.py``).

pyinfra runs each operation on every host before the next, so phase 1 ends
everywhere before phase 2 starts, and hosts restart in parallel (use
``muzo-ops deploy --serial N`` for batches). Idempotence, the health gate and
the rollback of a failing host are the same as with ``muzo-ops deploy``.

Inputs besides the inventory's host data: the env file from the data key
``muzo_env_file`` (e.g. ``--data muzo_env_file=.env.production``) or the
environment variable ``MUZO_ENV_FILE`` (default ``.env``), and the lock from
``muzo_lock`` / ``MUZO_DEPLOY_LOCK`` (default ``muzo-worker.lock`` in the
current folder), and the checkout to ship from ``muzo_source`` /
``MUZO_DEPLOY_SOURCE`` (default: the running one).
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

from pyinfra.context import host

from muzo_ops.deploy import ops
from muzo_ops.deploy.hoststate import Desired, lease_is_stale, lease_owner
from muzo_ops.deploy.plan import plan_host, read_env_file
from muzo_ops.deploy.release import Release, build_release

_lock = threading.Lock()
_releases: dict[tuple[tuple[str, ...], str], Release] = {}
_token = uuid.uuid4().hex


def run() -> None:
    """Both phases on the current host (called by ``deploy/worker.py`` once per host)."""
    data: dict[str, object] = host.data.dict()  # type: ignore[no-untyped-call]
    env_file = str(data.get("muzo_env_file") or os.environ.get("MUZO_ENV_FILE") or ".env")
    lock = Path(str(data.get("muzo_lock") or os.environ.get("MUZO_DEPLOY_LOCK") or "muzo-worker.lock"))
    plan = plan_host(host.name, read_env_file(env_file), data)
    source_text = data.get("muzo_source") or os.environ.get("MUZO_DEPLOY_SOURCE")
    source = Path(str(source_text)) if source_text else None
    key = (plan.handler_packages, f"{lock}\0{source}")
    with _lock:
        if key not in _releases:
            _releases[key] = build_release(plan.handler_packages, lock, source)
        release = _releases[key]
    desired = Desired.of(plan, release.name)
    state = ops.host_state()
    stale = state.lease.token if state.lease.token and lease_is_stale(state.lease, state.now) else ""
    nothing = not desired.differences(state)
    ops.stage(plan, release, _token, lease_owner(), stale, give_back=nothing)
    if not nothing:
        switch, _ = ops.switch(desired, _token)
        ops.failed_unless_healthy(name="fail the host unless it ended healthy", switch=switch)
