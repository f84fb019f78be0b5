"""muzo_ops: the operations toolkit of the muzo web product.

One schema of every environment variable (``muzo_ops.env``), env files
rendered and validated from it, secrets (``muzo_ops.secrets``), and the
MongoDB ``Job`` queue worker (``muzo_ops.queue``). Works against MongoDB
6.0, 7.0 and 8.x (and MongoDB-compatible servers).

The handler API is exported here: a handler takes a ``Job`` and returns a
JSON-able result or raises (``FatalJobError`` fails the job at once).
"""

from muzo_ops.queue.jobs import FatalJobError, Job

__version__ = "0.1.0"

__all__ = ["FatalJobError", "Job", "__version__"]
