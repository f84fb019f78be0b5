"""The ``Job`` queue: the document contract (``jobs``), the store that owns
every filter and update (``store``), payload validation, the worker, the
events it reports (``events``: ``Observer``/``Observers``; ``logobserver``
writes the log lines), the operators' commands (``admin``) and the handlers.

Importing this package is light; pymongo is imported by ``store``,
``worker`` and ``admin`` only.
"""
