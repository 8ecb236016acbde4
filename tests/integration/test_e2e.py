"""End to end: submit through the CLI code path, a real Celery worker process on Redis runs the job,
and the ledger matches both the catalog prices and the fake provider's own bill."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from sqlalchemy import select

from router.catalog import Catalog
from router.jobs import lifecycle
from router.jobs.dispatch import CeleryDispatcher
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import CallRollup, CallStatus, ItemStatus
from router.settings import Settings
from tests.helpers import ledger, priced, tickets, write_jsonl


def _wait_done(settings: Settings, job_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope(settings) as session:
            if repo.get_job(session, job_id).status != "running":
                return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not done after {timeout_s} s")


def test_job_runs_on_a_real_worker(
    live_settings: Settings,
    catalog: Catalog,
    broker_url: str,
    celery_worker: object,
    fake_provider: str,
    tmp_path: Path,
    team: tuple[str, str],
) -> None:
    httpx.post(f"{fake_provider}/_reset")
    settings = live_settings.model_copy(update={"broker_url": broker_url})
    rows = tickets(1500) + [{"id": "bad"}, "not json"]
    path = write_jsonl(tmp_path / "items.jsonl", rows)
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="classify",
        labels=("billing", "bug", "other"),
        min_quality=0.9,
        providers=frozenset({"openai", "anthropic"}),
    )
    submitted = submit_job(settings, catalog, request)
    assert submitted.n_items == 1500 and submitted.n_rejected == 2
    assert (
        lifecycle.start(settings, job_id=submitted.job_id, dispatcher=CeleryDispatcher(settings)) == 15
    )  # chunks of 100
    _wait_done(settings, submitted.job_id, timeout_s=120)

    calls, items = ledger(settings, submitted.job_id)
    assert len(items) == 1500 and all(i.status in ItemStatus.TERMINAL for i in items)
    assert sum(i.status == ItemStatus.DONE for i in items) > 1400
    ok_calls = [c for c in calls if c.status == CallStatus.OK]
    assert len(ok_calls) == len(calls) == 1500  # no errors injected: one call per item, none twice
    assert len({c.item_id for c in calls}) == 1500
    total = sum((c.cost_usd for c in calls), start=type(calls[0].cost_usd)(0))
    assert total == sum(priced(catalog, c) for c in calls)
    with session_scope(settings) as session:
        assert repo.job_spend(session, submitted.job_id) == total
        rolled = session.execute(
            select(CallRollup.calls, CallRollup.cost_usd, CallRollup.input_tokens).where(
                CallRollup.job_id == submitted.job_id
            )
        ).all()  # type: ignore[call-overload]
    # The daily rollups reports read agree with the call rows exactly.
    assert sum(r[0] for r in rolled) == 1500 and sum(r[1] for r in rolled) == total
    assert sum(r[2] for r in rolled) == sum(c.input_tokens for c in calls)
    bill = httpx.get(f"{fake_provider}/_stats").json()
    assert bill["calls"] == 1500
    assert bill["input_tokens"] == sum(c.input_tokens for c in calls)
    assert bill["output_tokens"] == sum(c.output_tokens for c in calls)


def test_a_labelled_job_calibrates_on_a_worker_then_runs(
    live_settings: Settings,
    catalog: Catalog,
    broker_url: str,
    celery_worker: object,
    fake_provider: str,
    tmp_path: Path,
    team: tuple[str, str],
) -> None:
    """The broker path of calibration: submit sends one calibrate message; the worker calibrates,
    sets the route, and hands out the chunks."""
    from router.jobs.dispatch import CeleryDispatcher
    from router.providers.sandbox import true_label

    labels = ("billing", "bug", "other")
    settings = live_settings.model_copy(update={"broker_url": broker_url})
    rows = [{**row, "gold": true_label(row["text"], labels)} if k < 150 else row for k, row in enumerate(tickets(600))]
    path = write_jsonl(tmp_path / "labelled.jsonl", rows)
    submitted = submit_job(
        settings,
        catalog,
        JobRequest(
            path=path,
            team=team[1],
            tenant=team[0],
            task="classify",
            labels=labels,
            min_quality=0.6,
            providers=frozenset({"openai", "anthropic"}),
        ),
    )
    assert submitted.calibrating
    CeleryDispatcher(settings).calibrate(submitted.job_id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with session_scope(settings) as session:
            job = repo.get_job(session, submitted.job_id)
        if job.status not in ("calibrating", "running"):
            break
        time.sleep(0.2)
    calls, items = ledger(settings, submitted.job_id)
    assert job.status == "done" and job.calibration and job.calibration["outcome"] == "chosen", job.calibration
    assert all(i.status in ItemStatus.TERMINAL for i in items) and len(items) == 600
    assert {c.purpose for c in calls} >= {"calibration", "run"}
