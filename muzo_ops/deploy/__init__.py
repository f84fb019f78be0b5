"""The worker deploy (``muzo-ops deploy``, ``deploy/worker.py``); see docs/DEPLOY.md.

``release`` (wheels, lock, release id) and ``plan`` (per-host env file and
unit, checked) need no pyinfra; ``ops`` (the pyinfra operations),
``driver`` (the Python-API runs behind ``muzo-ops deploy``) and
``cli_deploy`` (the plain ``pyinfra`` CLI entry) import it. Nothing is
imported here, so ``import muzo_ops.deploy`` stays light.
"""
