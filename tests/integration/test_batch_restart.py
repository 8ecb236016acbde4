"""Restart safety of batch mode with real Celery workers and beat: a worker (and its beat) killed while a
provider batch is open, Redis flushed, Postgres restarted: a new worker's beat polls again from the
provider_batch rows; nothing is created twice, lost, or charged twice."""

from __future__ import annotations

import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import redis
from sqlalchemy import select

from router.catalog import load_catalog
from router.engine import runtime
from router.jobs import lifecycle
from router.jobs.dispatch import CeleryDispatcher
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import Call, JobStatus, ProviderBatch
from router.providers.registry import close_all, get_batch_api
from router.providers.sandbox import SandboxBatchAPI
from router.settings import Settings
from tests.helpers import postgres_outage, start_workers, stop_workers, tickets, worker_env, write_jsonl


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _reachable(settings: Settings) -> bool:
    try:
        with session_scope(settings) as session:
            session.execute(select(1))
        return True
    except Exception:
        return False


def test_a_killed_worker_and_beat_and_a_flushed_redis_lose_nothing(
    pg_url: str, broker_url: str, catalog_file: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    batches_dir = tmp_path / "batches"
    batches_dir.mkdir()
    knobs = "delay_s=6,errors=0.05"
    env = worker_env(pg_url=pg_url, broker_url=broker_url, catalog_file=catalog_file)
    env.update(
        PENNYROUTE_SANDBOX="on",
        PENNYROUTE_SANDBOX_BATCH=knobs,
        PENNYROUTE_SANDBOX_BATCH_DIR=str(batches_dir),
        PENNYROUTE_BATCH_POLL_EVERY_S="0.5",
    )
    settings = Settings(
        database_url=pg_url,
        broker_url=broker_url,
        sandbox="on",
        sandbox_batch=knobs,
        sandbox_batch_dir=batches_dir,
        _env_file=None,  # type: ignore[call-arg]
    )
    catalog = load_catalog(catalog_file)
    path = write_jsonl(tmp_path / "in.jsonl", tickets(150))
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="classify",
        labels=("billing", "bug", "other"),
        min_quality=0.5,
        quality="prior",
        models=frozenset({"gpt-4o-mini"}),
        deadline="24h",
    )
    job_id = submit_job(settings, catalog, request).job_id
    beat = ("-B", "--schedule", str(tmp_path / "beat-schedule"))
    first = start_workers(1, env, tmp_path, extra=beat, name="first")
    try:
        lifecycle.start(settings, job_id=job_id, dispatcher=CeleryDispatcher(settings))

        def submitted() -> bool:
            with session_scope(settings) as session:
                rows = list(session.execute(select(ProviderBatch).where(ProviderBatch.job_id == job_id)).scalars())
            return bool(rows) and all(r.batch_id for r in rows)

        _wait(submitted, 60, "the wave to be created")
    finally:
        for proc in first:
            os.killpg(proc.pid, signal.SIGKILL)  # worker, its pool and beat die with the batch open
        stop_workers(first)
    redis.Redis.from_url(broker_url).flushdb()
    assert postgres_outage(pg_url) in ("restarted", "refused connections")  # and Postgres restarted
    _wait(lambda: _reachable(settings), 30, "Postgres to answer again")
    with session_scope(settings) as session:
        assert repo.get_job(session, job_id).status == JobStatus.RUNNING
    second = start_workers(1, env, tmp_path, extra=beat, name="second")
    try:

        def done() -> bool:
            with session_scope(settings) as session:
                return repo.get_job(session, job_id).status == JobStatus.DONE

        _wait(done, 90, "the job to end after the restart")
    finally:
        stop_workers(second)
    with session_scope(settings) as session:
        calls = list(session.execute(select(Call).where(Call.job_id == job_id)).scalars())
        batches = list(session.execute(select(ProviderBatch).where(ProviderBatch.job_id == job_id)).scalars())
        session.expunge_all()
    assert len(list(batches_dir.glob("*.json"))) == len(batches)  # each batch created once
    assert all(b.state == "ingested" for b in batches)

    async def api() -> SandboxBatchAPI:
        found = get_batch_api(catalog, settings, "openai", simulated=True)
        assert isinstance(found, SandboxBatchAPI)
        return found

    sandbox = runtime.run(api())
    bill: dict[str, Decimal] = {}
    for b in batches:
        for custom_id, usage in runtime.run(sandbox.billed(b.batch_id)).items():
            bill[custom_id] = catalog.price(b.model_id).cost_usd(usage) * Decimal("0.5")
    runtime.run(close_all())
    assert {c.id: c.cost_usd for c in calls if c.cost_usd} == bill
