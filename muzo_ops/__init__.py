"""muzo_ops: the operations toolkit of the muzo web product.

One schema of every environment variable (``muzo_ops.schema``), env files
rendered and validated from it, and the MongoDB ``Job`` queue worker.
Works against MongoDB 6.0, 7.0 and 8.0 (and MongoDB-compatible servers).
"""

__version__ = "0.1.0"
