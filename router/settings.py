"""One Settings, read once from the environment (and a .env file), passed down.

Only this module reads the environment. Nothing here is needed for a first run: with no settings
the ledger is a SQLite file in the working directory, jobs run in-process, and every model is
answered by the sandbox.
"""

from __future__ import annotations

import os
import types
import typing
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from router.errors import ConfigError

# The database URLs pennyroute can run on: Postgres (through psycopg 3) and SQLite.
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")
DATABASE_URL_HINT = "use postgresql://USER@HOST:5432/DB (or postgres://, postgresql+psycopg://) or sqlite:///PATH"
REDIS_SCHEMES = ("redis", "rediss", "unix")
# Settings whose values are never repeated in an error: URLs may carry a password, a webhook a token.
# A server secret shorter than this could be guessed, and every key hash checked against it offline.
MIN_SERVER_SECRET_BYTES = 16
UNSHOWN = frozenset({"alert_webhook", "api_keys", "openai_admin_key", "server_secret", "metrics_token"})


class Settings(BaseSettings):
    """Everything pennyroute can be told; see README.md, section Settings."""

    # allow_inf_nan: a timeout or a wait of "inf" or "nan" is a mistake, not a setting.
    model_config = SettingsConfigDict(env_prefix="PENNYROUTE_", env_file=".env", extra="ignore", allow_inf_nan=False)

    database_url: str = Field(
        default="sqlite:///pennyroute.db",
        validation_alias=AliasChoices("PENNYROUTE_DATABASE_URL", "DATABASE_URL"),
    )
    broker_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PENNYROUTE_BROKER_URL", "BROKER_URL", "CELERY_BROKER_URL"),
    )
    catalog: Path | None = None  # a TOML catalog that extends (or, with catalog_replace, replaces) the default
    catalog_replace: bool = False
    # auto: simulate every model when no provider key is set; on: always; off: never.
    sandbox: Literal["auto", "on", "off"] = "auto"
    # Items per queue message. A message costs ~1 ms of worker CPU; 100 items amortize it to 10 us.
    chunk_size: int = Field(default=100, ge=1, le=10_000)
    # Provider calls in flight per worker process, shared by all the chunks it runs. LLM calls take
    # 0.5 to 30 s, so throughput is about calls_in_flight / latency: 400 at 0.5 s is 800 calls/s.
    calls_in_flight: int = Field(default=400, ge=1, le=5_000)
    # Chunks one worker process holds at once. A chunk is done when its slowest call is, and LLM
    # latencies are heavy-tailed (a few calls take ten times the median), so the items held must far
    # exceed calls_in_flight to keep its slots busy while chunks wait for their stragglers. With a
    # lognormal latency (median 1 s, sigma 0.8), 8 chunks kept 34% of the ideal rate, 32 kept 84%;
    # at a constant latency 32 costs ~1 point at 500 ms and ~5% at 0 ms (bench/throughput.py).
    worker_threads: int = Field(default=32, ge=1, le=64)
    http_backend: Literal["aiohttp", "httpx"] = "aiohttp"
    # A worker's young-generation GC threshold (Python's default is 700). A worker holds hundreds of
    # thousands of long-lived objects (Celery, SQLAlchemy, the catalog) that it freezes once started,
    # and each call allocates dozens of short-lived ones; at 700 the collector ran so often that it
    # cost about 15% of the 0 ms rate (bench/throughput.py). 0 keeps Python's default.
    gc_gen0_threshold: int = Field(default=50_000, ge=0)
    # LLM calls take 0.5 to 30 s; a call still silent after 120 s is treated as failed.
    request_timeout_s: float = Field(default=120.0, gt=0)
    # An item claimed by a worker is its own for this long; after it, another worker may take it.
    # It must exceed the longest chunk (100 calls of up to request_timeout_s, with retries).
    lease_s: int = Field(default=900, ge=2)
    # Beat's sweeper looks this often for work that lost its queue message (a Redis restart, a
    # worker killed before acknowledging) and re-enqueues it; the DB, not the queue, says what is left.
    sweep_every_s: float = Field(default=60.0, gt=0)
    # Where rate limits and circuit breakers are shared between workers (PENNYROUTE_REDIS_URL);
    # by default the broker's Redis. Without one they are kept per process.
    redis_url: str | None = None
    # A running job none of whose calls started for this long, yet has pending items, is stalled:
    # the sweeper re-enqueues its pending items. (Expired leases are re-enqueued at once.)
    sweep_idle_s: float = Field(default=120.0, gt=0)
    # How long a chunk that fits no budget waits for other chunks' reservations to settle before
    # its items are handed back and the job pauses. Below lease_s, so the chunk keeps its claim.
    budget_wait_s: float = Field(default=120.0, ge=0)
    # How long a chunk keeps retrying an item's transient faults (429, 5xx, 529, timeouts, resets, an
    # open breaker) before the item fails with its reason: faults are deferred, never final, until
    # then. Capped at half the lease, so the chunk keeps its claim while it waits.
    fault_wait_s: float = Field(default=300.0, ge=0)
    # Beat asks the providers about open batches (provider batch APIs) this often, with one short task
    # each time; the in-process runner waits this long between looks (capped at 1 s in the sandbox).
    batch_poll_every_s: float = Field(default=30.0, gt=0)
    # The sandbox's batch API (simulated): knobs as "delay_s=0,errors=0.05,expired=0.02,bill_expired=true,
    # out_of_order=true,max_lines=50000" (router/providers/sandbox.py SandboxBatchKnobs), and where it
    # keeps its batches (a directory; by default one under the system's temporary directory).
    sandbox_batch: str = ""
    sandbox_batch_dir: Path | None = None
    # The configured exchange rate for EUR budgets: USD per EUR, recorded with every charge.
    usd_per_eur: Decimal | None = Field(default=None, gt=0)
    # Where a crossed soft budget limit is POSTed (JSON), besides the log line.
    alert_webhook: str | None = None
    api_keys: dict[str, SecretStr] = Field(default_factory=dict, exclude=True)
    # An OpenAI organization admin key, for `pennyroute reconcile --fetch` (the usage and costs APIs
    # refuse project keys). Not a *_API_KEY: it never makes a model call, nor turns the sandbox off.
    openai_admin_key: SecretStr | None = Field(
        default=None,
        exclude=True,
        validation_alias=AliasChoices("PENNYROUTE_OPENAI_ADMIN_KEY", "OPENAI_ADMIN_KEY"),
    )

    # The HTTP API's secret (`pennyroute serve`, `pennyroute keys`): tenant API keys are kept only as
    # an HMAC-SHA256 under it, so a copy of the database alone cannot check a guessed key. Not a
    # *_API_KEY: it never makes a model call, nor turns the sandbox off. Changing it voids every key.
    server_secret: SecretStr | None = Field(default=None, exclude=True)
    # The bearer token Prometheus sends to GET /metrics (its figures are every tenant's: a tenant key
    # never reads them). Without it /metrics answers 403.
    metrics_token: SecretStr | None = Field(default=None, exclude=True)
    # prometheus_client's multiprocess folder (its own variable, read here so only settings reads the
    # environment): set it, the same empty folder, for the server and every worker, and their
    # counters add up in one /metrics.
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "PENNYROUTE_PROMETHEUS_MULTIPROC_DIR")
    )
    # How long a repeated `POST /v1/batches` (same tenant, input file, endpoint and metadata) answers
    # with the batch the first one made: the openai SDK retries a POST on a timeout or a 5xx, with no
    # idempotency key, so a slow answer must not become two batches.
    batch_dedupe_s: float = Field(default=600.0, ge=0)
    # The largest file `POST /v1/files` takes, in MB of 1,048,576 bytes: OpenAI's Batch API takes input
    # files up to 200 MB (router/providers/openai_batch.py LIMITS reads it the same way). An upload is
    # counted as it arrives and refused once past this, its pieces rolled back.
    max_upload_mb: int = Field(default=200, ge=1, le=1_000_000)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        scheme, sep, _rest = value.partition("://")
        if not sep:
            raise ValueError(f"not a database URL: {DATABASE_URL_HINT}")
        if scheme.lower() not in POSTGRES_SCHEMES + SQLITE_SCHEMES:
            raise ValueError(f"'{scheme}' databases are not supported: {DATABASE_URL_HINT}")
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value is not None and not _scheme(value):
            raise ValueError("not a broker URL: use redis://HOST:6379/0 (or any URL Celery takes, e.g. amqp://)")
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and _scheme(value) not in REDIS_SCHEMES:
            raise ValueError("not a Redis URL: use redis://HOST:6379/0 (or rediss://, unix://)")
        return value or None

    @field_validator("alert_webhook")
    @classmethod
    def _check_alert_webhook(cls, value: str | None) -> str | None:
        if value is not None and (_scheme(value) not in ("http", "https") or not value.split("://", 1)[1].strip("/")):
            raise ValueError("not a web address: use http://HOST/PATH or https://HOST/PATH")
        return value or None

    @model_validator(mode="after")
    def _read_api_keys(self) -> Settings:
        # Provider keys are named by the catalog (api_key_env), so they are read by name, here;
        # keys given explicitly (tests) replace the environment's entirely.
        if not self.api_keys:
            for name, value in os.environ.items():
                if name.endswith("_API_KEY") and value:
                    self.api_keys[name] = SecretStr(value)
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver named, as SQLAlchemy wants it."""
        url = self.database_url
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def shared_state_url(self) -> str | None:
        """The Redis that rate limits and breakers live in, if any."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None

    @property
    def embedded(self) -> bool:
        """No broker: jobs run in this process."""
        return not self.broker_url

    def api_key(self, env_name: str | None) -> str | None:
        if not env_name:
            return None
        secret = self.api_keys.get(env_name)
        return secret.get_secret_value() if secret else None

    def key_secret(self) -> bytes:
        """The server secret's bytes, for hashing API keys; ConfigError when it is not set."""
        if self.server_secret is None or not self.server_secret.get_secret_value().strip():
            raise ConfigError(
                "PENNYROUTE_SERVER_SECRET is not set: the HTTP API keeps API keys only as a keyed hash under it. "
                'Set it to a long random value, e.g. `export PENNYROUTE_SERVER_SECRET="$(openssl rand -hex 32)"`, '
                "the same for `pennyroute serve` and `pennyroute keys`"
            )
        secret = self.server_secret.get_secret_value().encode()
        if len(secret) < MIN_SERVER_SECRET_BYTES:
            raise ConfigError(
                f"PENNYROUTE_SERVER_SECRET is too short: use at least {MIN_SERVER_SECRET_BYTES} characters, "
                'e.g. `export PENNYROUTE_SERVER_SECRET="$(openssl rand -hex 32)"`'
            )
        return secret

    @property
    def sandbox_active(self) -> bool:
        """True when every model is answered by the sandbox."""
        if self.sandbox == "on":
            return True
        if self.sandbox == "off":
            return False
        return not self.api_keys


def _scheme(url: str) -> str:
    """A URL's scheme, lower-cased; "" when `url` is not scheme://something."""
    scheme, sep, rest = url.partition("://")
    return scheme.lower() if sep and rest and scheme else ""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. A bad setting raises ConfigError naming its variable and
    what it accepts."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(settings_problem(exc)) from None


def settings_problem(exc: ValidationError) -> str:
    """One line per bad setting: the environment variable, the value (never a URL's, which may hold a
    password), and the values accepted."""
    lines = []
    for error in exc.errors():
        name = _field_of(str(error["loc"][0])) if error["loc"] else None
        if name is None:
            lines.append(str(error["msg"]))
            continue
        env = _env_name(name)
        shown = "" if name in UNSHOWN or name.endswith("_url") else f"={error.get('input')!s}"
        reason = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "value_error":
            lines.append(f"setting {env}: {reason}")
        else:
            lines.append(f"setting {env}{shown} is not accepted: {accepted_values(name)}")
    return "; ".join(lines)


def _field_of(loc: str) -> str | None:
    """The Settings field an error location names (a field name or one of its environment aliases)."""
    for name, info in Settings.model_fields.items():
        aliases = info.validation_alias.choices if isinstance(info.validation_alias, AliasChoices) else []
        if loc == name or loc in aliases or loc.upper() == f"PENNYROUTE_{name.upper()}":
            return name
    return None


def _env_name(name: str) -> str:
    """The environment variable that sets `name`: the one set, when it has several."""
    info = Settings.model_fields[name]
    choices = (
        [str(c) for c in info.validation_alias.choices]
        if isinstance(info.validation_alias, AliasChoices)
        else [f"PENNYROUTE_{name.upper()}"]
    )
    return next((c for c in choices if c in os.environ), choices[0])


def accepted_values(name: str) -> str:
    """What the setting `name` accepts, said from its type and bounds."""
    info = Settings.model_fields[name]
    kind = info.annotation
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:  # X | None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is Literal:
        return "use one of " + ", ".join(str(a) for a in typing.get_args(kind))
    if kind is bool:
        return "use true or false (or 1/0, yes/no, on/off)"
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        for key in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, key.capitalize())):
                bounds[key] = getattr(item, key)
    nouns: list[tuple[object, str]] = [
        (int, "a whole number"),
        (float, "a number"),
        (Decimal, "a decimal number"),
        (SecretStr, "a key, as text"),
    ]
    noun = next((words for type_, words in nouns if kind is type_), "a value")
    if "ge" in bounds and "le" in bounds:
        limits = f" from {bounds['ge']:,} to {bounds['le']:,}"
    else:
        words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
        limits = "".join(f" {words[key]} {value:,}" for key, value in bounds.items())
    example = " (USD per EUR, e.g. 1.08)" if name == "usd_per_eur" else ""
    return f"use {noun}{limits}{example}"
