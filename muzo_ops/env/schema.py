"""The ONE schema of every environment variable the muzo apps read.

Templates (``templates/*.j2``), the validator (``muzo_ops.env.checks``),
``init-env``, the docs page and the deploy all read this module; nothing
else lists variables. Add a variable here and ``render`` brings every
file up to date.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class App(enum.StrEnum):
    """A muzo process that reads the environment."""

    WEB = "web"  # apps/web, the Next.js site
    WORKER = "worker"  # the queue worker (muzo_ops.queue.worker or apps/worker)


class Group(enum.StrEnum):
    """A section of the env files, in the order they are rendered."""

    GENERAL = "General"  # runtime mode and logging
    DATABASE = "Database"  # MongoDB
    REDIS = "Redis"  # cache and rate limits
    STORAGE = "Storage (S3)"  # uploads and generated assets
    AUTH = "Authentication (Auth.js)"  # next-auth 5
    EMAIL = "E-mail (sign-in links)"  # SMTP for Auth.js e-mail provider
    STRIPE = "Payments (Stripe)"  # checkout
    PROVIDERS = "AI and print providers"  # RunPod, OpenAI, Cloudprinter
    WORKER = "Queue worker"  # the Job queue worker


class Kind(enum.StrEnum):
    """The type and format rule of a value."""

    STRING = "string"  # any non-empty text
    SECRET = "secret"  # non-empty text that is never shown
    URL = "url"  # http or https URL
    HTTPS_URL = "https-url"  # https URL
    MONGO_URL = "mongodb-url"  # mongodb:// or mongodb+srv://
    REDIS_URL = "redis-url"  # redis:// or rediss://
    BOOL = "boolean"  # true/false/1/0/yes/no/on/off
    AUTO_BOOL = "boolean-or-auto"  # a boolean, or unset for auto-detect
    PORT = "port"  # integer 1..65535
    POSITIVE_INT = "positive-integer"  # integer >= 1 (and <= ``maximum`` when set)
    NUMBER = "number"  # decimal number within [``minimum``, ``maximum``]
    HANDLERS = "handler-list"  # comma list of TYPE=module:function
    CHOICE = "choice"  # one of ``choices``
    CHOICE_LIST = "choice-list"  # comma list of ``choices``
    EMAIL = "email"  # address, or ``Name <address>``
    STRIPE_SECRET = "stripe-secret-key"  # sk_test_… / sk_live_…
    STRIPE_PUBLISHABLE = "stripe-publishable-key"  # pk_test_… / pk_live_…


class Generator(enum.StrEnum):
    """How ``init-env`` and ``secrets`` make a value nobody has to type."""

    TOKEN_URLSAFE_32 = "token-urlsafe-32"  # 32 random bytes, base64url, 43 chars


class Environment(enum.StrEnum):
    """What ``init-env`` prepares a file for."""

    DEVELOPMENT = "development"  # a developer's machine, local services
    PRODUCTION = "production"  # a server; no localhost defaults


@dataclass(frozen=True)
class Variable:
    """One environment variable and everything known about it."""

    name: str
    group: Group
    required: bool
    apps: frozenset[App]
    description: str
    kind: Kind
    example: str
    sensitive: bool = False
    dev_default: str | None = None
    prod_default: str | None = None
    generator: Generator | None = None
    choices: tuple[str, ...] = ()
    min_length: int = 0
    notes: tuple[str, ...] = field(default=())
    minimum: float | None = None  # NUMBER / POSITIVE_INT: lowest accepted value
    maximum: float | None = None  # NUMBER / POSITIVE_INT: highest accepted value
    default: str | None = None  # what the app uses when unset (shown in the docs)
    deprecated_by: str | None = None  # the variable that replaces this one

    def default_for(self, environment: Environment) -> str | None:
        """The value ``init-env`` fills in when nobody supplies one."""
        if environment is Environment.PRODUCTION:
            return self.prod_default
        return self.dev_default

    def needed_by(self, app: App | None) -> bool:
        """Whether ``app`` (None: any app) reads this variable."""
        return app is None or app in self.apps

    @property
    def apps_label(self) -> str:
        return ", ".join(a.value for a in App if a in self.apps)


WEB = frozenset({App.WEB})
WORKER = frozenset({App.WORKER})
BOTH = frozenset({App.WEB, App.WORKER})

QUEUE_NAMES = ("generation", "mockup", "fulfillment")
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")

VARIABLES: tuple[Variable, ...] = (
    Variable(
        "NODE_ENV", Group.GENERAL, False, BOTH,
        "Runtime mode of every app.", Kind.CHOICE, "development",
        choices=("development", "production", "test"),
        dev_default="development", prod_default="production",
    ),
    Variable(
        "LOG_LEVEL", Group.GENERAL, False, BOTH,
        "Lowest pino log level written.", Kind.CHOICE, "info",
        choices=LOG_LEVELS, dev_default="debug", prod_default="info",
    ),
    Variable(
        "DATABASE_URL", Group.DATABASE, True, BOTH,
        "MongoDB connection string (Prisma and the worker). Never both "
        "directConnection=true and replicaSet=; serverSelectionTimeoutMS=30000.",
        Kind.MONGO_URL,
        "mongodb://USER:PASSWORD@HOST:27017/muzo?directConnection=true&tls=true"
        "&serverSelectionTimeoutMS=30000",
        sensitive=True,
        dev_default="mongodb://127.0.0.1:27017/muzo?serverSelectionTimeoutMS=30000",
        notes=(
            "Production: one server over TLS, `directConnection=true` (no transactions).",
            "Development: neither `replicaSet` nor `directConnection`, so the driver and the "
            "server's `hello` decide: `muzo-ops dev-db` (replica set `secantus`) or any one-node "
            "replica set gives transactions; a standalone server gives none.",
            "Percent-encode reserved characters of the password (`@` → `%40`).",
        ),
    ),
    Variable(
        "REDIS_URL", Group.REDIS, True, WEB,
        "Redis connection string.", Kind.REDIS_URL,
        "rediss://default:PASSWORD@HOST:6379", sensitive=True,
        dev_default="redis://127.0.0.1:6379",
    ),
    Variable(
        "UPSTASH_REDIS_REST_URL", Group.REDIS, False, WEB,
        "Upstash REST endpoint (rate limiting).", Kind.HTTPS_URL,
        "https://your-database.upstash.io",
    ),
    Variable(
        "UPSTASH_REDIS_REST_TOKEN", Group.REDIS, False, WEB,
        "Upstash REST token.", Kind.SECRET, "your-upstash-rest-token", sensitive=True,
    ),
    Variable(
        "S3_ENDPOINT", Group.STORAGE, True, BOTH,
        "S3-compatible endpoint URL.", Kind.URL, "https://s3.your-region.example.com",
        dev_default="http://127.0.0.1:9000",
    ),
    Variable(
        "S3_ACCESS_KEY_ID", Group.STORAGE, True, BOTH,
        "S3 access key id.", Kind.SECRET, "your-s3-access-key-id", sensitive=True,
    ),
    Variable(
        "S3_SECRET_ACCESS_KEY", Group.STORAGE, True, BOTH,
        "S3 secret access key.", Kind.SECRET, "your-s3-secret-access-key", sensitive=True,
    ),
    Variable(
        "S3_BUCKET", Group.STORAGE, True, BOTH,
        "Bucket for uploads and generated assets.", Kind.STRING, "your-bucket-name",
        dev_default="muzo-dev",
    ),
    Variable(
        "S3_REGION", Group.STORAGE, True, BOTH,
        "Bucket region.", Kind.STRING, "your-region",
        dev_default="us-east-1",
    ),
    Variable(
        "S3_FORCE_PATH_STYLE", Group.STORAGE, False, BOTH,
        "Path-style bucket URLs (MinIO and most S3-compatible stores). "
        '"false" means false.', Kind.BOOL, "false",
        dev_default="true", prod_default="false",
    ),
    Variable(
        "NEXTAUTH_SECRET", Group.AUTH, True, WEB,
        "Auth.js signing and encryption secret: 32 random bytes, base64url.",
        Kind.SECRET, "replace-me-with-muzo-ops-secrets-generate", sensitive=True,
        generator=Generator.TOKEN_URLSAFE_32, min_length=32,
    ),
    Variable(
        "NEXTAUTH_SECRET_PREVIOUS", Group.AUTH, False, WEB,
        "The secret before the last rotation, kept for the session lifetime so existing "
        "sessions stay valid (auth config: secret: [current, previous].filter(Boolean)).",
        Kind.SECRET, "", sensitive=True, min_length=32,
    ),
    Variable(
        "NEXTAUTH_URL", Group.AUTH, True, WEB,
        "Public URL of the site (https in production).", Kind.URL,
        "https://your-domain.example.com", dev_default="http://localhost:3000",
    ),
    Variable(
        "GOOGLE_CLIENT_ID", Group.AUTH, False, WEB,
        "Google OAuth client id.", Kind.STRING, "your-google-client-id.apps.googleusercontent.com",
    ),
    Variable(
        "GOOGLE_CLIENT_SECRET", Group.AUTH, False, WEB,
        "Google OAuth client secret.", Kind.SECRET, "your-google-client-secret", sensitive=True,
    ),
    Variable(
        "EMAIL_FROM", Group.EMAIL, True, WEB,
        "Sender of sign-in e-mails.", Kind.EMAIL, "muzo <noreply@your-domain.example.com>",
        dev_default="muzo <noreply@localhost>",
    ),
    Variable(
        "EMAIL_SERVER_HOST", Group.EMAIL, True, WEB,
        "SMTP host.", Kind.STRING, "smtp.your-provider.example.com",
        dev_default="127.0.0.1",
    ),
    Variable(
        "EMAIL_SERVER_PORT", Group.EMAIL, True, WEB,
        "SMTP port.", Kind.PORT, "587", dev_default="1025", prod_default="587",
    ),
    Variable(
        "EMAIL_SERVER_USER", Group.EMAIL, True, WEB,
        "SMTP user name.", Kind.STRING, "your-smtp-user",
    ),
    Variable(
        "EMAIL_SERVER_PASSWORD", Group.EMAIL, True, WEB,
        "SMTP password.", Kind.SECRET, "your-smtp-password", sensitive=True,
    ),
    Variable(
        "STRIPE_SECRET_KEY", Group.STRIPE, True, BOTH,
        "Stripe secret API key (sk_test_… or sk_live_…).", Kind.STRIPE_SECRET,
        "sk_test_your_stripe_secret_key", sensitive=True,
    ),
    Variable(
        "STRIPE_PUBLISHABLE_KEY", Group.STRIPE, True, WEB,
        "Stripe publishable key (pk_test_… or pk_live_…).", Kind.STRIPE_PUBLISHABLE,
        "pk_test_your_stripe_publishable_key",
    ),
    Variable(
        "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY", Group.STRIPE, True, WEB,
        "The publishable key again, shipped to browsers: never a secret key.",
        Kind.STRIPE_PUBLISHABLE, "pk_test_your_stripe_publishable_key",
    ),
    Variable(
        "RUNPOD_API_KEY", Group.PROVIDERS, True, WORKER,
        "RunPod API key (upscaling).", Kind.SECRET, "your-runpod-api-key", sensitive=True,
    ),
    Variable(
        "OPENAI_API_KEY", Group.PROVIDERS, True, WORKER,
        "OpenAI API key (image generation).", Kind.SECRET, "your-openai-api-key",
        sensitive=True,
    ),
    Variable(
        "CLOUDPRINTER_API_KEY", Group.PROVIDERS, True, WORKER,
        "Cloudprinter API key (fulfillment).", Kind.SECRET, "your-cloudprinter-api-key",
        sensitive=True,
    ),
    Variable(
        "WORKER_QUEUES", Group.WORKER, False, WORKER,
        "Queues this worker serves: comma list of generation, mockup, fulfillment.",
        Kind.CHOICE_LIST, "generation", choices=QUEUE_NAMES,
        dev_default="generation", prod_default="generation",
    ),
    Variable(
        "QUEUE_TRANSACTIONS", Group.WORKER, False, WORKER,
        "Use MongoDB transactions: on/off/true/false/1/0; unset means auto-detect.",
        Kind.AUTO_BOOL, "",
    ),
    Variable(
        "WORKER_CONCURRENCY", Group.WORKER, False, WORKER,
        "Jobs one worker process runs at once (every queue it serves shares them).",
        Kind.POSITIVE_INT, "1", maximum=1000, default="1",
    ),
    Variable(
        "GENERATION_WORKER_CONCURRENCY", Group.WORKER, False, WORKER,
        "Deprecated name of WORKER_CONCURRENCY (the old worker's); WORKER_CONCURRENCY wins when both are set.",
        Kind.POSITIVE_INT, "1", maximum=1000, deprecated_by="WORKER_CONCURRENCY",
    ),
    Variable(
        "WORKER_LOCK_SECONDS", Group.WORKER, False, WORKER,
        "How long a claimed job stays locked; heartbeats renew it every third of it.",
        Kind.NUMBER, "300", minimum=1, maximum=86400, default="300",
    ),
    Variable(
        "WORKER_POLL_SECONDS", Group.WORKER, False, WORKER,
        "Poll interval when change streams are off or missed an event.",
        Kind.NUMBER, "1", minimum=0.05, maximum=3600, default="1",
    ),
    Variable(
        "WORKER_DRAIN_TIMEOUT_SECONDS", Group.WORKER, False, WORKER,
        "On stop, how long running jobs may finish before they are released to PENDING.",
        Kind.NUMBER, "30", minimum=0, maximum=86400, default="30",
    ),
    Variable(
        "WORKER_RETRY_BASE_SECONDS", Group.WORKER, False, WORKER,
        "First retry delay; attempt n waits between half and all of base x 2^(n-1).",
        Kind.NUMBER, "2", minimum=0.01, maximum=86400, default="2",
    ),
    Variable(
        "WORKER_RETRY_CAP_SECONDS", Group.WORKER, False, WORKER,
        "Longest retry delay.", Kind.NUMBER, "300", minimum=0.01, maximum=604800, default="300",
    ),
    Variable(
        "WORKER_CHANGE_STREAMS", Group.WORKER, False, WORKER,
        "Wake on change streams where the server offers them (on/off); off polls only.",
        Kind.BOOL, "on", default="on",
    ),
    Variable(
        "MUZO_WORKER_HANDLERS", Group.WORKER, False, WORKER,
        "Handlers per job type: comma list of TYPE=module:function (e.g. GENERATION=myapp.jobs:generate).",
        Kind.HANDLERS, "",
    ),
    Variable(
        "JOB_TIMEOUT_GENERATION_SECONDS", Group.WORKER, False, WORKER,
        "Longest a GENERATION job may run before it counts as failed (image generations take minutes).",
        Kind.NUMBER, "1800", minimum=1, maximum=86400, default="1800",
    ),
    Variable(
        "JOB_TIMEOUT_MOCKUP_SECONDS", Group.WORKER, False, WORKER,
        "Longest a MOCKUP job may run before it counts as failed (mockups take seconds).",
        Kind.NUMBER, "120", minimum=1, maximum=86400, default="120",
    ),
    Variable(
        "JOB_TIMEOUT_FULFILLMENT_SECONDS", Group.WORKER, False, WORKER,
        "Longest a FULFILLMENT job may run before it counts as failed.",
        Kind.NUMBER, "300", minimum=1, maximum=86400, default="300",
    ),
    Variable(
        "WORKER_METRICS_PORT", Group.WORKER, False, WORKER,
        "Serve /metrics, /healthz and /readyz on this port (a base: a single-queue process adds "
        "its queue's offset, generation 0, mockup 1, fulfillment 2); unset: off.",
        Kind.PORT, "9464",
    ),
    Variable(
        "WORKER_METRICS_HOST", Group.WORKER, False, WORKER,
        "Address the metrics port binds (unset: the loopback address, this host only).", Kind.STRING, "",
        default="127.0.0.1",
    ),
    Variable(
        "MUZO_HANDLER_SIGNING_SECRET", Group.WORKER, False, BOTH,
        "Key of the Muzo-Signature HMAC-SHA256 header the worker puts on every HTTP handler call; the "
        "web app's route verifies it. 32 random bytes, base64url.",
        Kind.SECRET, "replace-me-with-muzo-ops-secrets-generate", sensitive=True,
        generator=Generator.TOKEN_URLSAFE_32, min_length=32,
    ),
    Variable(
        "MUZO_HANDLER_SIGNING_SECRET_PREVIOUS", Group.WORKER, False, WEB,
        "The handler signing key before the last rotation: the web app's verifier accepts it too for "
        "the grace period, so no in-flight call is refused.",
        Kind.SECRET, "", sensitive=True, min_length=32,
    ),
    Variable(
        "DASHBOARD_USER", Group.WORKER, False, WORKER,
        "User name for the job dashboard's HTTP basic auth (muzo-ops dashboard).",
        Kind.STRING, "ops", default="ops",
    ),
    Variable(
        "DASHBOARD_PASSWORD", Group.WORKER, False, WORKER,
        "Password for the job dashboard's HTTP basic auth; unset: the dashboard binds the loopback address only.",
        Kind.SECRET, "replace-me-with-muzo-ops-secrets-generate", sensitive=True,
        generator=Generator.TOKEN_URLSAFE_32, min_length=16,
    ),
)

BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}


def get(name: str) -> Variable:
    """The variable called ``name``; KeyError when the schema lacks it."""
    return BY_NAME[name]


def grouped(variables: tuple[Variable, ...] = VARIABLES) -> list[tuple[Group, list[Variable]]]:
    """Variables by group, groups in render order."""
    return [(g, [v for v in variables if v.group is g]) for g in Group
            if any(v.group is g for v in variables)]


def for_app(app: App | None) -> tuple[Variable, ...]:
    """The variables ``app`` reads (all of them for None)."""
    return tuple(v for v in VARIABLES if v.needed_by(app))


TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


def parse_bool(text: str) -> bool:
    """Parse a boolean the way every muzo app must: "false" is False.

    >>> parse_bool("false"), parse_bool("ON")
    (False, True)
    """
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"not a boolean: use one of {', '.join(sorted(TRUE_WORDS | FALSE_WORDS))}")
