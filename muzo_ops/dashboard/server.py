"""``muzo-ops dashboard``: the app served by uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from muzo_ops.errors import UsageError
from muzo_ops.logs import Logger
from muzo_ops.redact.redactor import Redactor

if TYPE_CHECKING:
    import uvicorn

LOCAL_ONLY = "127.0.0.1"


def check_bind(host: str, values: Mapping[str, str]) -> None:
    """UsageError when ``host`` is not 127.0.0.1 and no DASHBOARD_PASSWORD is set (nobody would be asked)."""
    if host != LOCAL_ONLY and not values.get("DASHBOARD_PASSWORD"):
        raise UsageError(f"--host {host[:60]}: without DASHBOARD_PASSWORD the dashboard binds 127.0.0.1 only; "
                         "set one (muzo-ops init-env generates it) or drop --host")


class _PinoHandler(logging.Handler):
    """uvicorn's own messages as pino lines through the redacting logger (no traceback: a type and a message)."""

    def __init__(self, logger: Logger) -> None:
        super().__init__(logging.INFO)
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warn" if record.levelno >= logging.WARNING \
            else "info"
        fields: dict[str, str] = {}
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields["errType"] = type(exc).__name__
        self.logger.log(level, record.getMessage(), None, **fields)


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGTERM/SIGINT end it with exit code 0 (uvicorn raises the signal again)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def serve(values: Mapping[str, str], host: str = LOCAL_ONLY, port: int = 8090, allow_actions: bool = False,
          redactor: Redactor | None = None, on_ready: Callable[[str], None] | None = None,
          timeout_s: float | None = None) -> int:
    """Serve the dashboard of env ``values`` until SIGTERM/SIGINT; 0. UsageError for a refused bind.

    ``timeout_s``: every request answers within it whatever MongoDB does (default 5 s).
    """
    import uvicorn

    from muzo_ops.dashboard.app import LOGGER_NAME, create_app
    from muzo_ops.dashboard.deadline import DEFAULT_TIMEOUT_S

    check_bind(host, values)
    redactor = redactor or Redactor()
    redactor.add_values(values)
    logger = Logger(LOGGER_NAME, values.get("LOG_LEVEL") or "info", redactor=redactor)
    handler = _PinoHandler(logger)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers = [handler]
        uv.propagate = False
    timeout_s = timeout_s or DEFAULT_TIMEOUT_S
    app = create_app(values, allow_actions=allow_actions, redactor=redactor, logger=logger, timeout_s=timeout_s)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, server_header=False,
                            lifespan="on", timeout_graceful_shutdown=3)
    server = _server_class()(config)
    if on_ready is not None:
        auth = "basic auth" if values.get("DASHBOARD_PASSWORD") else "no password: 127.0.0.1 only"
        on_ready(f"serving the job dashboard on http://{host}:{port}/ ({auth}; "
                 f"{'actions on' if allow_actions else 'read-only'}; every answer within {timeout_s:g} s)")
    server.run()
    return 0 if server.started else 1
