"""Example pyinfra inventory for the muzo worker deploy (copy it; keep secrets out of it).

Host data keys read by the deploy:

- ``muzo_queues``: the queues the host runs, one systemd instance each
  (``muzo-worker@generation.service``): "generation,mockup" or a list.
- ``muzo_concurrency``: jobs at once per instance (sets WORKER_CONCURRENCY).
- ``muzo_env``: per-host overrides of env values, {"LOG_LEVEL": "debug"}.
  Unknown names pass through to the env file (handler packages may read them).
- ``muzo_handlers``: {"GENERATION": "pkg.mod:fn"} (sets MUZO_WORKER_HANDLERS).
- ``muzo_handler_packages``: wheels or local project folders (built into
  wheels on the control machine) installed into the release's venv.
- ``muzo_health_timeout``: seconds the health gate waits (default 30, 1-3600).
- ``muzo_exporter_port`` (and ``muzo_exporter_host``, default 127.0.0.1): run the
  queue exporter ``muzo-jobs-metrics.service`` on this host (one per fleet).
- ``muzo_dashboard_port`` (and ``muzo_dashboard_host``): run the job dashboard
  ``muzo-dashboard.service`` on this host.

Values are checked before any host is touched (types, ranges, NaN): a wrong
one stops the deploy with one line (exit 2). List each machine once: two
names with the same /etc/machine-id are refused.
- ``muzo_env_file`` / ``muzo_lock``: for the plain ``pyinfra`` CLI only (see
  muzo_ops/deploy/cli_deploy.py); ``muzo-ops deploy`` takes --env-file/--lock.

pyinfra's own SSH keys work as pyinfra documents them: ``ssh_hostname``,
``ssh_port``, ``ssh_user`` (root: the deploy writes /etc and /opt and
installs units), ``ssh_key``, ``ssh_known_hosts_file``,
``ssh_strict_host_key_checking``.

    muzo-ops deploy --inventory deploy/inventories/example.py --env-file .env.production --serial 1 -y
    pyinfra deploy/inventories/example.py deploy/worker.py --data muzo_env_file=.env.production
    pyinfra deploy/inventories/example.py muzo_ops.deploy.cli_deploy.run --data muzo_env_file=.env.production
"""

workers = [
    ("worker-1.example.internal", {
        "ssh_user": "root",
        "muzo_queues": "generation,mockup",
        "muzo_concurrency": 4,
        "muzo_handlers": {"GENERATION": "myapp.handlers:generate", "MOCKUP": "myapp.handlers:mockup"},
        "muzo_handler_packages": ["../myapp-handlers"],
        "muzo_exporter_port": 9470,
    }),
    ("worker-2.example.internal", {
        "ssh_user": "root",
        "muzo_queues": ["generation"],
        "muzo_concurrency": 8,
        "muzo_env": {"LOG_LEVEL": "debug"},
        "muzo_handlers": {"GENERATION": "myapp.handlers:generate"},
        "muzo_handler_packages": ["../myapp-handlers"],
    }),
]
