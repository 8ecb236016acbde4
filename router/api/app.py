"""The HTTP API application: `create_app(settings)` builds it; `pennyroute serve` runs it on uvicorn.

    /jobs, /reports, /budgets, /models, /quality   the CLI's commands (router/api/jobs.py)
    /v1/files, /v1/batches                         OpenAI Batch-compatible intake (router/api/openai_batch.py)
    /metrics                                       Prometheus (router/api/metrics.py)
    /docs, /openapi.json                           the API described

A shell, like cli/: it parses requests, calls jobs/, reports/ and the ledger, and answers. Keys and
Authorization headers are never logged (`log_config`: every uvicorn and pennyroute log line passes
through router/redact.py) nor stored (router/ledger/keys.py keeps a keyed hash).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from router.api import errors, jobs, metrics, openai_batch
from router.catalog import Catalog, load_catalog
from router.ledger.db import ensure_schema
from router.metrics import count_request
from router.redact import RedactingFilter, configured_secrets
from router.settings import Settings, get_settings

DESCRIPTION = """pennyroute's HTTP API for teams: submit batch jobs, read their state, results,
reports and budgets, and send OpenAI Batch files to /v1 with the official openai SDK.
Authenticate with `Authorization: Bearer <key>` (a key from `pennyroute keys create`)."""

# Every endpoint's router and its prefix (the isolation test reads the endpoints from these, and
# checks them against the app's OpenAPI paths).
ROUTERS: tuple[tuple[APIRouter, str], ...] = ((jobs.router, ""), (openai_batch.router, "/v1"), (metrics.router, ""))


def create_app(settings: Settings, catalog: Catalog | None = None) -> FastAPI:
    """The application over these settings (the server secret is required: ConfigError without it)."""
    settings.key_secret()
    ensure_schema(settings)
    app = FastAPI(title="pennyroute", version="1", description=DESCRIPTION)
    app.state.settings = settings
    app.state.catalog = catalog or load_catalog(settings.catalog, replace_default=settings.catalog_replace)
    app.state.threads = []
    app.state.trusted_keys = {}  # router/api/auth.py: keys found good lately, by their HMAC
    app.state.key_checks = set()  # router/api/auth.py: keys being read again in the background
    app.state.background = set()  # tasks started by requests that outlive them
    app.state.job_status = {}  # router/api/jobs.py: status answers read lately, by job id
    app.state.job_status_reads = {}  # router/api/jobs.py: the status read under way, by job id
    errors.install(app)
    for router, prefix in ROUTERS:
        app.include_router(router, prefix=prefix)

    @app.middleware("http")
    async def _count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        count_request(
            method=request.method,
            route=_template(request) if request.scope.get("route") is not None else "unmatched",
            status=response.status_code,
            seconds=time.perf_counter() - started,
        )
        return response

    return app


def from_environment() -> FastAPI:
    """The application over the process's settings: what each of `pennyroute serve --workers N`'s
    processes builds (uvicorn's factory)."""
    return create_app(get_settings())


def _template(request: Request) -> str:
    """The request's path with its parameters named, not valued (/jobs/{job_id}): a bounded label."""
    path = request.url.path
    for name, value in request.path_params.items():
        path = path.replace(f"/{value}", f"/{{{name}}}", 1)
    return path


def log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging, every handler behind the redacting filter (keys, bearer tokens, key=...)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactingFilter, "secrets": sorted(configured_secrets(settings))}},
        "formatters": {
            "default": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "pennyroute": {"handlers": ["default"], "level": "INFO", "propagate": False},
        },
        # Everything else (httpx, celery, sqlalchemy) at WARNING, through the same filter: a provider
        # URL with a key in its query string is never printed whole.
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
