"""Thin tasks: they take ids, re-read their rows, call into router, and are safe to run twice."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_shutdown, worker_ready
from sqlalchemy.exc import InterfaceError, OperationalError

from router.catalog import Catalog, load_catalog
from router.engine import runtime
from router.engine.batch_mode import poll_batches
from router.engine.chunk import run_chunk
from router.jobs import lifecycle
from router.jobs.dispatch import (
    CALIBRATE_TASK,
    POLL_BATCHES_TASK,
    RESUME_PAUSED_TASK,
    RUN_CHUNK_TASK,
    SWEEP_TASK,
    Dispatcher,
)
from router.jobs.sweeper import sweep
from router.providers.registry import close_all
from router.redact import RedactingFilter, configured_secrets
from router.settings import get_settings
from workers.app import app


@lru_cache(maxsize=1)
def _catalog() -> Catalog:
    settings = get_settings()
    return load_catalog(settings.catalog, replace_default=settings.catalog_replace)


@lru_cache(maxsize=1)
def _dispatcher() -> Dispatcher:
    """How this worker hands work on (a worker has a broker: its chunks go back to the queue)."""
    return lifecycle.dispatcher_for(get_settings(), _catalog())


# Postgres unreachable (restarting, failing over): the task is tried again later with a growing
# delay (1 s, 2 s, 4 s ... up to 60 s), for about an hour, well within the broker's visibility timeout.
DB_DOWN = (OperationalError, InterfaceError)
DB_RETRY = {
    "autoretry_for": DB_DOWN,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 60,
}


@app.task(name=RUN_CHUNK_TASK, **DB_RETRY)
def run_chunk_task(job_id: str, lo: int, hi: int) -> dict[str, int]:
    """Run one chunk (items lo <= seq < hi) of a job; items already done or held elsewhere are skipped."""
    outcome = run_chunk(get_settings(), _catalog(), job_id=job_id, lo=lo, hi=hi)
    return {"claimed": outcome.claimed, "done": outcome.done, "failed": outcome.failed}


@app.task(name=SWEEP_TASK)
def sweep_task() -> int:
    """Re-enqueue work whose queue message was lost, expire /v1 batches past their window (run by
    beat); the DB says what is left."""
    return sweep(get_settings(), dispatcher=_dispatcher(), catalog=_catalog())


@app.task(name=POLL_BATCHES_TASK)
def poll_batches_task() -> int:
    """Look at every open provider batch once (run by beat): recover, poll, cancel, ingest. Another
    poll still running makes this one return at once (an advisory lock): polls never pile up."""
    return poll_batches(get_settings(), _catalog())


@app.task(name=CALIBRATE_TASK, **DB_RETRY)
def calibrate_job_task(job_id: str) -> str:
    """Calibrate a job on a sample, then hand its chunks to workers (if a model was chosen)."""
    summary = lifecycle.calibrate_then_run(get_settings(), _catalog(), job_id=job_id, dispatcher=_dispatcher())
    return str(summary.get("outcome"))


@app.task(name=RESUME_PAUSED_TASK)
def resume_paused_jobs_task() -> int:
    """Resume paused jobs whose team has budget again (a new month, or a raised limit); run by beat."""
    return len(lifecycle.resume_paused(get_settings(), dispatcher=_dispatcher()))


@worker_process_shutdown.connect
def _close_providers(**_: Any) -> None:
    """Close provider connections when the worker process stops."""
    runtime.run(close_all())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_logs(logger: logging.Logger, **_: Any) -> None:
    """Configured API keys (and key-shaped text) never reach the worker's log."""
    redacting = RedactingFilter(configured_secrets(get_settings()))
    for handler in logger.handlers:
        handler.addFilter(redacting)


@worker_ready.connect
def _tune_gc(**_: Any) -> None:
    """Once the worker has loaded everything it keeps, freeze it and collect less often."""
    settings = get_settings()
    _catalog()  # loaded now, so that it is frozen with the rest
    runtime.tune_gc(settings.gc_gen0_threshold)
