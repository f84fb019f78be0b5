"""``python -m muzo_ops``: the command line."""

from muzo_ops.cli import main

raise SystemExit(main())
