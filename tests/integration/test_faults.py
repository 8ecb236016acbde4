"""Fault tests: real Postgres, Redis and Celery worker processes against a fake provider that fails.

Each test runs a job through a fault and then checks the same things:
  - every item ended exactly once (terminal, counted once on the job);
  - the ledger matches the fake provider's own bill call for call: every billed call id has a ledger
    row; an `ok` row has exactly the billed tokens; a call the provider billed but whose worker died
    is `unknown` and charged at least what was billed (its worst case); no error row was billed; no
    call id was billed twice;
  - the team's budget was not overshot, and what it settled equals the ledger's total.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from router.catalog import Catalog, load_catalog
from router.jobs import lifecycle
from router.jobs.dispatch import CeleryDispatcher
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import BudgetPeriod, Call, CallStatus, ItemStatus
from router.settings import Settings
from router.usage import TokenUsage
from tests.fakes.server import start_in_thread
from tests.helpers import (
    FAKE_KEY,
    ledger,
    postgres_outage,
    retire_leftover_jobs,
    start_workers,
    stop_workers,
    tickets,
    worker_env,
    write_catalog,
    write_jsonl,
)

LABELS = ("billing", "bug", "other")
# Short leases and a fast sweeper, so a dead worker's items come back in seconds, not minutes.
FAST_RECOVERY = {
    "PENNYROUTE_LEASE_S": "4",
    "PENNYROUTE_SWEEP_EVERY_S": "1",
    "PENNYROUTE_SWEEP_IDLE_S": "2",
    "PENNYROUTE_REQUEST_TIMEOUT_S": "2",
}


@pytest.fixture
def slow_fake() -> Iterator[str]:
    """A fake provider of its own (its own bill), answering in 200 ms."""
    url, stop = start_in_thread(latency_ms=200, api_key=FAKE_KEY)
    yield url
    stop()


@pytest.fixture
def setup(slow_fake: str, pg_url: str, broker_url: str, tmp_path: Path) -> tuple[Settings, Catalog, dict[str, str]]:
    catalog_file = write_catalog(tmp_path / "catalog.toml", slow_fake)
    settings = Settings(
        database_url=pg_url,
        broker_url=broker_url,
        catalog=catalog_file,
        sandbox="off",
        api_keys={"OPENAI_API_KEY": FAKE_KEY, "ANTHROPIC_API_KEY": FAKE_KEY},  # type: ignore[arg-type]
        _env_file=None,
    )  # type: ignore[call-arg]
    env = {**worker_env(pg_url=pg_url, broker_url=broker_url, catalog_file=catalog_file), **FAST_RECOVERY}
    redis.Redis.from_url(broker_url).flushdb()
    retire_leftover_jobs(settings)  # the restart tests' workers run beat, which would resume them
    return settings, load_catalog(catalog_file), env


def _submit(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], n: int, *, budget_usd: str | None = "5"
) -> str:
    from router.ledger import budgets

    if budget_usd is not None:
        with session_scope(settings) as session:
            found = repo.find_team(session, name=team[1], tenant=team[0])
            budgets.set_budget(
                session, team=found, monthly=Decimal(budget_usd), currency="USD", soft_pct=None, settings=settings
            )
    path = write_jsonl(tmp_path / "items.jsonl", tickets(n))
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="classify",
        labels=LABELS,
        min_quality=0.9,
        providers=frozenset({"openai"}),
    )
    submitted = submit_job(settings, catalog, request)
    lifecycle.start(settings, job_id=submitted.job_id, dispatcher=CeleryDispatcher(settings))
    return submitted.job_id


def _progress(settings: Settings, job_id: str) -> tuple[str, int]:
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        return job.status, job.n_done + job.n_failed


def _wait_for(settings: Settings, job_id: str, *, finished: int | None = None, timeout_s: float = 120) -> None:
    """Wait until the job has `finished` items finished (or is no longer running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, count = _progress(settings, job_id)
        if (finished is not None and count >= finished) or (finished is None and status != "running"):
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: {_progress(settings, job_id)} after {timeout_s} s")


def assert_exactly_once(settings: Settings, catalog: Catalog, job_id: str, fake_url: str, n: int) -> dict[str, Any]:
    calls, items = ledger(settings, job_id)
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        period = session.execute(select(BudgetPeriod).where(BudgetPeriod.team_id == job.team_id)).scalars().first()
    assert job.status == "done" and len(items) == n
    assert all(i.status in ItemStatus.TERMINAL for i in items)
    assert job.n_done == sum(i.status == ItemStatus.DONE for i in items)
    assert job.n_failed == sum(i.status == ItemStatus.FAILED for i in items)
    assert all(c.status != CallStatus.IN_FLIGHT for c in calls)
    by_id = {c.id: c for c in calls}
    assert all(i.final_call_id in by_id for i in items if i.status == ItemStatus.DONE)
    bill = httpx.get(f"{fake_url}/_bill").json()
    billed: dict[str, Any] = bill["calls"]
    assert bill["unidentified"] == 0 and all(b["repeats"] == 0 for b in billed.values())  # no call billed twice
    # The sweeper resumes every running job it finds, and earlier tests leave some half-run: their
    # calls reach this test's fake provider too. They must be in the ledger as well, under their job.
    with session_scope(settings) as session:
        billed_rows = {c.id: c for c in session.execute(select(Call).where(Call.id.in_(list(billed)))).scalars()}  # type: ignore[attr-defined]
    others = {i for i, c in billed_rows.items() if c.job_id != job_id}
    by_id.update({i: billed_rows[i] for i in others})
    for call_id, b in billed.items():
        row = by_id.get(call_id)
        assert row is not None, f"billed call {call_id} is missing from the ledger"
        assert row.status in (CallStatus.OK, CallStatus.UNKNOWN), (row.status, row.error)
        if row.status == CallStatus.OK:
            assert (row.input_tokens, row.output_tokens) == (b["input_tokens"], b["output_tokens"])
        else:  # the worker died: charged at the worst case, never less than what was billed
            billed_usd = catalog.price(row.model_id, row.started_at).cost_usd(
                TokenUsage(b["input_tokens"], b["output_tokens"])
            )
            assert row.cost_usd >= billed_usd
    ok_not_billed = [c.id for c in calls if c.status == CallStatus.OK and c.id not in billed]  # this job's
    assert not ok_not_billed
    total = sum((c.cost_usd for c in calls), Decimal(0))
    if period is not None:
        assert period.settled + period.reserved <= period.limit_amount  # never overshot
        assert period.reserved == 0 and period.settled == total  # every cent settled, exactly once
    return {
        "calls": len(calls),
        "unknown": sum(c.status == CallStatus.UNKNOWN for c in calls),
        "errors": sum(c.status == CallStatus.ERROR for c in calls),
        "done": job.n_done,
        "failed": job.n_failed,
    }


def test_a_job_under_a_20_percent_fault_mix_completes(
    setup: tuple[Settings, Catalog, dict[str, str]], slow_fake: str, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog, env = setup
    mix = {
        "seed": 5,
        "rates": {
            "429": 0.05,
            "500": 0.03,
            "503": 0.03,
            "529": 0.02,
            "truncated": 0.03,
            "malformed": 0.03,
            "hang": 0.01,
        },
        "retry_after_s": 0.2,
    }
    httpx.post(f"{slow_fake}/_faults", json=mix).raise_for_status()
    workers = start_workers(1, env, tmp_path)
    try:
        job_id = _submit(settings, catalog, tmp_path, team, 1000)
        _wait_for(settings, job_id, timeout_s=150)
    finally:
        stop_workers(workers)
    seen = assert_exactly_once(settings, catalog, job_id, slow_fake, 1000)
    assert seen["errors"] > 100  # the faults happened
    assert seen["done"] >= 995, seen  # and retries, then fallbacks, got nearly every item through


def test_a_worker_killed_mid_job_loses_nothing_and_charges_nothing_twice(
    setup: tuple[Settings, Catalog, dict[str, str]], slow_fake: str, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog, env = setup
    first = start_workers(1, env, tmp_path, name="doomed")
    job_id = _submit(settings, catalog, tmp_path, team, 3000)
    try:
        _wait_for(settings, job_id, finished=800, timeout_s=60)
        first[0].send_signal(signal.SIGKILL)  # mid-chunk: hundreds of calls in flight
        first[0].wait(timeout=10)
        _, at_kill = _progress(settings, job_id)
        assert at_kill < 3000
        second = start_workers(1, env, tmp_path, name="rescuer", extra=("-B", "-s", str(tmp_path / "beat-schedule")))
        try:
            _wait_for(settings, job_id, timeout_s=120)
        finally:
            stop_workers(second)
    finally:
        stop_workers(first)
    seen = assert_exactly_once(settings, catalog, job_id, slow_fake, 3000)
    assert seen["unknown"] > 0  # the killed worker's calls in flight are on the ledger, as unknown


def test_a_redis_restart_that_drops_the_queue_loses_nothing(
    setup: tuple[Settings, Catalog, dict[str, str]],
    slow_fake: str,
    broker_url: str,
    tmp_path: Path,
    team: tuple[str, str],
) -> None:
    """Redis restarted without persistence loses every queued message. The shared Redis is not
    restarted here (other processes use it): the test's own database is flushed mid-job, which is
    what such a restart does to the queue. The sweeper re-enqueues from the DB."""
    settings, catalog, env = setup
    workers = start_workers(1, env, tmp_path, extra=("-B", "-s", str(tmp_path / "beat-schedule")))
    try:
        job_id = _submit(settings, catalog, tmp_path, team, 4000)
        _wait_for(settings, job_id, finished=600, timeout_s=60)
        redis.Redis.from_url(broker_url).flushdb()
        _, at_flush = _progress(settings, job_id)
        assert at_flush < 4000
        _wait_for(settings, job_id, timeout_s=150)
    finally:
        stop_workers(workers)
    assert_exactly_once(settings, catalog, job_id, slow_fake, 4000)


def test_a_postgres_restart_mid_job_loses_nothing(
    setup: tuple[Settings, Catalog, dict[str, str]], slow_fake: str, pg_url: str, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog, env = setup
    workers = start_workers(1, env, tmp_path, extra=("-B", "-s", str(tmp_path / "beat-schedule")))
    try:
        job_id = _submit(settings, catalog, tmp_path, team, 3000)
        _wait_for(settings, job_id, finished=600, timeout_s=60)
        how = postgres_outage(pg_url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # this process's own pool reconnects too (pre-ping)
            try:
                _progress(settings, job_id)
                break
            except Exception:
                time.sleep(0.5)
        _wait_for(settings, job_id, timeout_s=180)
    finally:
        stop_workers(workers)
    assert how in ("restarted", "refused connections")
    assert_exactly_once(settings, catalog, job_id, slow_fake, 3000)
