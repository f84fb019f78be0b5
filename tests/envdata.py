"""A complete, valid muzo environment with realistic (fake) secrets."""

from __future__ import annotations

from pathlib import Path

from muzo_ops.env.envfile import format_line

MONGO_PASSWORD = "S3cr3tMongoPass9f2k"
REDIS_PASSWORD = "redisPassw0rd77xq"

FULL: dict[str, str] = {
    "NODE_ENV": "production",
    "LOG_LEVEL": "info",
    "DATABASE_URL": f"mongodb://muzo_app:{MONGO_PASSWORD}@db.internal:27017/muzo"
                    "?directConnection=true&tls=true&serverSelectionTimeoutMS=30000",
    "REDIS_URL": f"rediss://default:{REDIS_PASSWORD}@cache.internal:6379",
    "UPSTASH_REDIS_REST_URL": "https://eu1-muzo.upstash.io",
    "UPSTASH_REDIS_REST_TOKEN": "AXupstashRealToken0000000000001",
    "S3_ENDPOINT": "https://s3.eu-west-3.amazonaws.com",
    "S3_ACCESS_KEY_ID": "AKIAIOSFODNN7REAL123",
    "S3_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYREALKEY99",
    "S3_BUCKET": "muzo-prod-assets",
    "S3_REGION": "eu-west-3",
    "S3_FORCE_PATH_STYLE": "false",
    "NEXTAUTH_SECRET": "kq3N2v9Yb0Zc7XwH1pR8sT4uV6yA5dE2fG3hJ7kL9mQ",
    "NEXTAUTH_URL": "https://muzo.app",
    "GOOGLE_CLIENT_ID": "1234-abc.apps.googleusercontent.com",
    "GOOGLE_CLIENT_SECRET": "GOCSPX-real-google-secret-1",
    "EMAIL_FROM": "muzo <hello@muzo.app>",
    "EMAIL_SERVER_HOST": "smtp.postmarkapp.com",
    "EMAIL_SERVER_PORT": "587",
    "EMAIL_SERVER_USER": "apikey-user-77",
    "EMAIL_SERVER_PASSWORD": "smtp-Pa55word-real-42",
    "STRIPE_SECRET_KEY": "sk_live_51HrealSecret000000000abc",
    "STRIPE_PUBLISHABLE_KEY": "pk_live_51Hreal000000000000pub",
    "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY": "pk_live_51Hreal000000000000pub",
    "RUNPOD_API_KEY": "rpa_REALRUNPODKEY0000000001",
    "OPENAI_API_KEY": "sk-proj-realopenaikey000000000001",
    "CLOUDPRINTER_API_KEY": "cp_real_cloudprinter_key_0001",
    "WORKER_QUEUES": "generation,mockup",
    "WORKER_CONCURRENCY": "2",
}

# Every value that must never be printed.
SECRETS = [
    MONGO_PASSWORD, REDIS_PASSWORD, FULL["UPSTASH_REDIS_REST_TOKEN"], FULL["S3_ACCESS_KEY_ID"],
    FULL["S3_SECRET_ACCESS_KEY"], FULL["NEXTAUTH_SECRET"], FULL["GOOGLE_CLIENT_SECRET"],
    FULL["EMAIL_SERVER_PASSWORD"], FULL["STRIPE_SECRET_KEY"], FULL["RUNPOD_API_KEY"],
    FULL["OPENAI_API_KEY"], FULL["CLOUDPRINTER_API_KEY"],
]


def write_env(path: Path, values: dict[str, str], extra: str = "") -> Path:
    path.write_text("".join(format_line(k, v) for k, v in values.items()) + extra, encoding="utf-8")
    path.chmod(0o600)
    return path
