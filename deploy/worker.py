"""pyinfra deploy of the muzo queue worker: ``pyinfra deploy/inventories/example.py deploy/worker.py``.

The operations live in ``muzo_ops.deploy`` (shipped in the wheel, so an
installed muzo-ops can deploy); see ``muzo_ops/deploy/cli_deploy.py`` for the
inputs and docs/DEPLOY.md for the whole story.
"""

from muzo_ops.deploy.cli_deploy import run

run()
