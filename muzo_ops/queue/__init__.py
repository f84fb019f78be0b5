"""The ``Job`` queue: the document contract (``jobs``), the store that owns
every filter and update (``store`` for the worker, ``opsstore`` for the
operators), payload validation, the worker (``settings``, ``retry``
policy, ``execution`` of handlers with their timeouts, ``connection`` to
MongoDB, ``changes``: the change-stream watcher, and the loop in
``worker``), the events it reports (``events``: ``Observer``/``Observers``;
``logobserver`` writes the log lines), the operators' commands (``admin``)
and the handlers.

Importing this package is light; pymongo is imported by ``store``,
``opsstore``, ``changes``, ``worker`` and ``admin`` only.
"""
