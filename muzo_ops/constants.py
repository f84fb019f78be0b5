"""Constants shared by muzo_ops, in one place."""

from __future__ import annotations

# The distribution's version (muzo_ops.__version__, muzo-ops --version, the worker's info metric).
VERSION = "0.1.0"

# Exit codes of every command.
EXIT_OK = 0  # nothing wrong
EXIT_PROBLEMS = 1  # the check or job found problems
EXIT_USAGE = 2  # unusable input or usage

# Env files.
DEFAULT_ENV_FILE = ".env"
EXAMPLE_ENV_FILE = ".env.example"
TEMPLATE_ENV_FILE = ".env.template"
DOCS_ENV_PAGE = "docs/ENVIRONMENT_VARIABLES.md"
SECRET_FILE_MODE = 0o600
DEFAULT_LOCK_TIMEOUT_S = 10.0  # how long a writer waits for another one holding the file's lock
BACKUP_SUFFIX = ".bak"
DOTENVX_ENCRYPTED_PREFIX = "encrypted:"  # a value dotenvx encrypted starts with this

# Secrets.
NEXTAUTH_SECRET_BYTES = 32
NEXTAUTH_SECRET_MIN_CHARS = 32
MASK = "***"
SESSION_LIFETIME_DAYS = 30  # Auth.js sessions: a previous signing secret is needed this long
MASK_VISIBLE_TAIL = 4

# Booleans as the muzo apps read them (environment variables; not MongoDB URL options,
# which the driver reads as `true`/`false` only).
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})

# MongoDB URL rules.
RECOMMENDED_SERVER_SELECTION_TIMEOUT_MS = 30000
MIN_SERVER_SELECTION_TIMEOUT_MS = 10000

# check-env --connect.
CONNECT_TIMEOUT_S = 5.0

# The Job queue (names written by Prisma in the web app).
JOB_COLLECTION = "Job"
DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_LOCK_DURATION_S = 300.0
DEFAULT_HEARTBEAT_FRACTION = 1 / 3  # heartbeat every third of the lock
DEFAULT_RETRY_BASE_S = 2.0
DEFAULT_RETRY_CAP_S = 300.0
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DEFAULT_MAX_ATTEMPTS = 3
ERROR_BACKOFF_BASE_S = 0.5
ERROR_BACKOFF_CAP_S = 10.0
STALE_SWEEP_INTERVAL_S = 30.0  # fail expired jobs on their last attempt
TAKEOVER_INTERVAL_S = 5.0  # a busy worker still looks for expired locks this often

# Logging.
WORKER_LOGGER_NAME = "muzo-worker"
QUEUE_INIT_LOGGER_NAME = "muzo-queue-init"

# Handlers in any language (exec and HTTP; docs/HANDLERS.md).
HANDLER_KILL_GRACE_S = 10.0  # SIGTERM to an exec handler's process group, then SIGKILL after this
HANDLER_STDERR_TAIL_BYTES = 4096  # the last bytes of an exec handler's stderr kept for lastError
HANDLER_MAX_OUTPUT_BYTES = 16 * 1024 * 1024  # a result larger than MongoDB's document limit is refused
HANDLER_ERROR_BODY_CHARS = 500  # the start of an HTTP handler's error response kept for lastError
HANDLER_HTTP_CONNECT_TIMEOUT_S = 10.0
EXIT_DATAERR = 65  # exec handler: fatal, no retry (sysexits EX_DATAERR)
EXIT_TEMPFAIL = 75  # exec handler: retry (sysexits EX_TEMPFAIL)
SIGNATURE_HEADER = "Muzo-Signature"
SIGNATURE_TOLERANCE_S = 300  # the verifier refuses a t older (or newer) than this
