"""A job that can wait runs on the providers' batch APIs (here the sandbox's, simulated), end to end on
Postgres: exactly once, at the batch price, with failed and expired lines re-run, cancel, restarts."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from router.catalog import Catalog, load_catalog
from router.engine import batch_mode, batch_submit, runtime
from router.jobs import lifecycle
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import BatchState, Call, CallRollup, CallStatus, Item, Job, JobStatus, ProviderBatch
from router.providers.registry import close_all, get_batch_api
from router.providers.sandbox import SandboxBatchAPI
from router.settings import Settings
from tests.helpers import tickets, write_jsonl

LABELS = ("billing", "bug", "other")


@pytest.fixture
def batch_dir(tmp_path: Path) -> Path:
    path = tmp_path / "batches"
    path.mkdir()
    return path


def _settings(pg_url: str, batch_dir: Path, knobs: str = "", **extra: Any) -> Settings:
    return Settings(
        database_url=pg_url,
        sandbox="on",
        sandbox_batch=knobs,
        sandbox_batch_dir=batch_dir,
        batch_poll_every_s=0.05,
        _env_file=None,  # type: ignore[call-arg]
        **extra,
    )


def _submit(
    settings: Settings,
    tmp_path: Path,
    team: tuple[str, str],
    *,
    n: int,
    deadline: str | None = "24h",
    mode: str = "auto",
    models: frozenset[str] | None = frozenset({"gpt-4o-mini"}),
) -> tuple[str, Any]:
    path = write_jsonl(tmp_path / f"items-{n}.jsonl", tickets(n))
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="classify",
        labels=LABELS,
        min_quality=0.5,
        quality="prior",
        models=models,
        deadline=deadline,
        mode=mode,
    )
    submitted = submit_job(settings, load_catalog(), request)
    return submitted.job_id, submitted


def _run(settings: Settings, job_id: str) -> None:
    try:
        lifecycle.start(settings, job_id=job_id, dispatcher=lifecycle.InlineDispatcher(settings, load_catalog()))
    finally:
        runtime.run(close_all())


def _state(settings: Settings, job_id: str) -> tuple[Job, list[Call], list[Item], list[ProviderBatch]]:
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        calls = list(session.execute(select(Call).where(Call.job_id == job_id)).scalars())
        items = list(session.execute(select(Item).where(Item.job_id == job_id)).scalars())
        batches = list(session.execute(select(ProviderBatch).where(ProviderBatch.job_id == job_id)).scalars())
        session.expunge_all()
    return job, calls, items, batches


def _bill(settings: Settings, catalog: Catalog, batches: list[ProviderBatch]) -> dict[str, Decimal]:
    """The sandbox's own bill, line by line: each billed line's usage at the list price times 0.5."""
    api = runtime.run(_api(catalog, settings))
    out: dict[str, Decimal] = {}
    for b in batches:
        if b.batch_id is None:
            continue
        for custom_id, usage in runtime.run(api.billed(b.batch_id)).items():
            out[custom_id] = catalog.price(b.model_id).cost_usd(usage) * Decimal("0.5")
    return out


async def _api(catalog: Catalog, settings: Settings) -> SandboxBatchAPI:
    api = get_batch_api(catalog, settings, "openai", simulated=True)
    assert isinstance(api, SandboxBatchAPI)
    return api


def test_a_job_that_can_wait_runs_in_batch_at_half_price_and_the_ledger_is_the_bill(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings = _settings(pg_url, batch_dir, "out_of_order=true")
    catalog = load_catalog()
    job_id, submitted = _submit(settings, tmp_path, team, n=300)
    assert submitted.execution.bulk == "batch" and submitted.execution.multiplier == Decimal("0.5")
    assert "saving" in submitted.execution.summary
    _run(settings, job_id)
    job, calls, items, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE and job.n_done == 300
    assert all(i.status == "done" for i in items)
    assert batches and all(b.state == BatchState.INGESTED and b.batch_id for b in batches)
    assert all(c.mode == "batch" and c.price_multiplier == Decimal("0.5") and c.provider_batch_id for c in calls)
    # Every line at its own usage x list price x 0.5; the ledger equals the sandbox's bill line for line.
    bill = _bill(settings, catalog, batches)
    assert {c.id: c.cost_usd for c in calls if c.cost_usd} == bill
    # Rollups split by mode: what the batch discount saved equals what was spent (at 0.5).
    with session_scope(settings) as session:
        row = session.execute(
            select(
                func.sum(CallRollup.batch_calls),
                func.sum(CallRollup.batch_cost_usd),
                func.sum(CallRollup.batch_saved_usd),
                func.sum(CallRollup.cost_usd),
            ).where(CallRollup.job_id == job_id)
        ).one()
    assert row[0] == 300 and row[1] == row[3] == sum(bill.values()) and row[2] == row[1]


def test_failed_and_expired_lines_run_again_and_a_line_billed_though_expired_is_charged(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings = _settings(pg_url, batch_dir, "errors=0.05,expired=0.02,bill_expired=true")
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=1000)
    _run(settings, job_id)
    job, calls, items, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE
    done = sum(1 for i in items if i.status == "done")
    assert done / 1000 >= 0.999, done
    assert max(b.round for b in batches) >= 2  # the lines left undone went in a next batch
    errored = [c for c in calls if c.error and c.error.startswith("errored")]
    expired = [c for c in calls if c.error and c.error.startswith("expired")]
    assert 20 < len(errored) < 90 and 5 < len(expired) < 45
    assert all(c.cost_usd == 0 for c in errored)  # an errored line is not billed
    assert all(c.cost_usd > 0 and c.status == CallStatus.ERROR for c in expired)  # billed though expired: charged
    assert all(c.status != CallStatus.IN_FLIGHT for c in calls)
    # The ledger is the bill, line for line: every billed line and nothing else. Lines left undone
    # MAX_BATCH_ROUNDS times ran synchronously, at the standard price.
    assert {c.id: c.cost_usd for c in calls if c.cost_usd and c.mode == "batch"} == _bill(settings, catalog, batches)
    sync = [c for c in calls if c.mode == "sync"]
    assert all(c.price_multiplier == 1 for c in sync) and len(sync) <= 5
    # Each item's answer is one of its own batch calls that succeeded.
    by_id = {c.id: c for c in calls}
    assert all(by_id[i.final_call_id].status == CallStatus.OK for i in items if i.status == "done")


def test_ingesting_twice_never_charges_twice(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings = _settings(pg_url, batch_dir, "expired=0.1,bill_expired=true")
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=200)
    _run(settings, job_id)
    job, calls, _, batches = _state(settings, job_id)
    spent = sum(c.cost_usd for c in calls)
    # Rewind every batch to "ended", as if the ingest's commit had been lost, and ingest again.
    with session_scope(settings) as session:
        for b in batches:
            repo.update_provider_batch(session, b.id, state=BatchState.ENDED, ingested_at=None)
    for wave in {b.wave for b in batches}:
        assert batch_mode.ingest_wave(settings, catalog, wave=wave)
    runtime.run(close_all())
    job2, calls2, _, _ = _state(settings, job_id)
    assert sum(c.cost_usd for c in calls2) == spent and len(calls2) == len(calls)
    assert (job2.n_done, job2.n_failed) == (job.n_done, job.n_failed)
    with session_scope(settings) as session:
        rolled = session.execute(select(func.sum(CallRollup.cost_usd)).where(CallRollup.job_id == job_id)).scalar()
    assert rolled == spent


def test_a_near_deadline_runs_synchronously(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings = _settings(pg_url, batch_dir)
    job_id, submitted = _submit(settings, tmp_path, team, n=50, deadline="2h")
    assert submitted.execution.bulk == "sync" and "deadline near" in submitted.execution.summary
    _run(settings, job_id)
    job, calls, _, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE and not batches
    assert all(c.mode == "sync" and c.price_multiplier == 1 for c in calls)


def test_mode_batch_that_cannot_be_had_is_refused_naming_the_flag(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    from router.errors import InputError

    settings = _settings(pg_url, batch_dir)
    with pytest.raises(InputError, match="--mode batch: deadline near") as caught:
        _submit(settings, tmp_path, team, n=5, deadline="1h", mode="batch")
    assert caught.value.field == "--mode"


def test_cancel_cancels_the_open_batches_and_keeps_what_completed(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings = _settings(pg_url, batch_dir, "delay_s=3")
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=400)
    # Submit the wave only (no waiting): a worker's chunk.
    from router.engine.chunk import run_chunk

    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=400)
    runtime.run(asyncio.sleep(1.5))
    result = lifecycle.cancel(settings, catalog, job_id=job_id)
    assert result["batches_cancelled"] >= 1
    runtime.run(close_all())
    job, calls, items, batches = _state(settings, job_id)
    assert job.status == JobStatus.CANCELLED
    assert all(b.state == BatchState.INGESTED for b in batches)
    done = [i for i in items if i.status == "done"]
    failed = [i for i in items if i.status == "failed"]
    assert 0 < len(done) < 400 and len(done) + len(failed) == 400  # what completed is kept
    assert all(i.error == "cancelled" for i in failed)
    assert job.n_done == len(done) and job.n_failed == len(failed)
    cancelled_calls = [c for c in calls if c.error and c.error.startswith("canceled")]
    assert len(cancelled_calls) == len(failed) and all(c.cost_usd == 0 for c in cancelled_calls)
    assert {c.id: c.cost_usd for c in calls if c.cost_usd} == _bill(settings, catalog, batches)


def test_a_worker_killed_between_create_and_recording_the_id_creates_nothing_twice(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(pg_url, batch_dir)
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=100)

    def killed(*_: Any, **__: Any) -> None:
        raise SystemExit("worker killed after create, before recording the provider's id")

    from router.engine.chunk import run_chunk

    monkeypatch.setattr(batch_submit, "record_created", killed)
    with pytest.raises(SystemExit):
        run_chunk(settings, catalog, job_id=job_id, lo=0, hi=100)
    monkeypatch.undo()
    _, _, _, batches = _state(settings, job_id)
    assert len(batches) == 1 and batches[0].state == BatchState.CREATING and batches[0].batch_id is None
    created = sorted(p.name for p in batch_dir.glob("*.json"))
    # A poller soon after leaves it alone (its worker may still be inside create) ...
    assert batch_mode.poll_batches(settings, catalog, job_id=job_id) == 1
    # ... later it finds the batch by its tag and records it; nothing is created again.
    from datetime import timedelta

    from router.ledger.tables import utcnow

    later = utcnow() + timedelta(seconds=batch_mode.MIN_CREATE_GRACE_S + 1)
    batch_mode.poll_batches(settings, catalog, job_id=job_id, now=later)
    batch_mode.wait_for_batches(settings, catalog, job_id=job_id)
    runtime.run(close_all())
    assert sorted(p.name for p in batch_dir.glob("*.json")) == created
    job, calls, _, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE and batches[0].batch_id is not None
    assert len(calls) == 100 and {c.id: c.cost_usd for c in calls} == _bill(settings, catalog, batches)


def test_a_batch_row_the_provider_never_got_is_created_from_its_recorded_lines(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(pg_url, batch_dir)
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=60)

    def killed(*_: Any, **__: Any) -> None:
        raise SystemExit("worker killed after the commit, before create")

    from router.engine.chunk import run_chunk

    monkeypatch.setattr(batch_submit, "create_parts", killed)
    with pytest.raises(SystemExit):
        run_chunk(settings, catalog, job_id=job_id, lo=0, hi=60)
    monkeypatch.undo()
    assert not list(batch_dir.glob("*.json"))  # the provider has nothing
    from datetime import timedelta

    from router.ledger.tables import utcnow

    batch_mode.poll_batches(settings, catalog, job_id=job_id, now=utcnow() + timedelta(seconds=3600))
    batch_mode.wait_for_batches(settings, catalog, job_id=job_id)
    runtime.run(close_all())
    job, calls, _, batches = _state(settings, job_id)
    assert len(list(batch_dir.glob("*.json"))) == 1
    assert job.status == JobStatus.DONE and len(calls) == 60
    assert {c.id: c.cost_usd for c in calls} == _bill(settings, catalog, batches)


def test_a_batch_reserves_its_worst_case_at_the_batch_price_and_settles_what_came_back(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    from router.engine.chunk import run_chunk
    from router.ledger import budgets

    settings = _settings(pg_url, batch_dir, "delay_s=2")
    catalog = load_catalog()
    with session_scope(settings) as session:
        found = repo.find_team(session, name=team[1], tenant=team[0])
        budgets.set_budget(session, team=found, monthly=Decimal("50"), currency="USD", soft_pct=None, settings=settings)
    job_id, _ = _submit(settings, tmp_path, team, n=200)
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=200)
    with session_scope(settings) as session:
        period = budgets.current_period(session, team_id=found.id)
        reserved, settled = period.reserved, period.settled
        snapshot = repo.job_for_chunk(session, job_id)
        texts = [i.text for i in session.execute(select(Item).where(Item.job_id == job_id)).scalars()]
    from router.engine.batch import ChunkContext
    from router.ledger.tables import utcnow

    chunk = ChunkContext.build(catalog, snapshot)
    now = utcnow()
    worst = sum(chunk.worst_case_usd(catalog, "gpt-4o-mini", t, now) for t in texts) * Decimal("0.5")
    assert settled == 0 and abs(reserved - worst) < Decimal("0.000001")  # the batch's worst case, at 0.5
    with session_scope(settings) as session:
        rows = list(session.execute(select(ProviderBatch).where(ProviderBatch.job_id == job_id)).scalars())
    assert abs(sum(r.reserved_usd for r in rows) - worst) < Decimal("0.000001")  # kept on the batch rows too
    batch_mode.wait_for_batches(settings, catalog, job_id=job_id)
    runtime.run(close_all())
    job, calls, _, _ = _state(settings, job_id)
    with session_scope(settings) as session:
        period = budgets.current_period(session, team_id=found.id)
    assert job.status == JobStatus.DONE
    assert period.reserved == 0 and period.settled == sum(c.cost_usd for c in calls) > 0


def test_a_batch_still_open_near_the_deadline_is_cancelled_and_its_lines_run_synchronously(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    from datetime import timedelta

    from router.engine.chunk import run_chunk
    from router.ledger.tables import utcnow

    settings = _settings(pg_url, batch_dir, "delay_s=600")
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=80)
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=80)
    job, _, _, batches = _state(settings, job_id)
    assert [b.state for b in batches] == [BatchState.RUNNING]
    assert batch_mode.poll_batches(settings, catalog, job_id=job_id) == 1  # a day left: it waits
    near = job.deadline_at - timedelta(minutes=30)
    batch_mode.poll_batches(settings, catalog, job_id=job_id, now=near)
    runtime.run(close_all())
    job, calls, items, batches = _state(settings, job_id)
    assert batches[0].state == BatchState.INGESTED and "cancelled" in batches[0].vendor_status
    assert job.status == JobStatus.DONE and all(i.status == "done" for i in items)
    batch_calls = [c for c in calls if c.mode == "batch"]
    sync_calls = [c for c in calls if c.mode == "sync"]
    assert len(batch_calls) == 80 and all(c.cost_usd == 0 for c in batch_calls)  # cancelled before any was done
    assert len(sync_calls) == 80 and all(c.status == CallStatus.OK and c.price_multiplier == 1 for c in sync_calls)
    assert utcnow() < job.deadline_at


def test_an_interrupted_in_process_run_leaves_its_batches_open_and_resume_ingests_them(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    from router.engine.chunk import run_chunk

    settings = _settings(pg_url, batch_dir, "delay_s=1")
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=50)
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=50)
    # Ctrl-C while waiting on the batch: items a dead run held go back, except those in an open batch.
    job = lifecycle.settle_interrupted(settings, catalog, job_id=job_id)
    assert job.status == JobStatus.PAUSED
    _, calls, items, batches = _state(settings, job_id)
    assert all(i.status == "running" for i in items)  # not taken back: their lines are at the provider
    assert all(c.status == CallStatus.IN_FLIGHT and c.cost_usd == 0 for c in calls)  # not charged as lost
    lifecycle.resume(
        settings,
        job_id=job_id,
        dispatcher=lifecycle.InlineDispatcher(settings, catalog),
        catalog=catalog,
    )
    runtime.run(close_all())
    job, calls, _, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE and len(batches) == 1 and len(calls) == 50
    assert {c.id: c.cost_usd for c in calls} == _bill(settings, catalog, batches)


def test_work_is_split_to_the_providers_line_limit(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings = _settings(pg_url, batch_dir, "max_lines=40")
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=100)
    _run(settings, job_id)
    job, calls, _, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE
    assert sorted(b.n_lines for b in batches) == [20, 40, 40] and len({b.wave for b in batches}) == 1
    assert {c.id: c.cost_usd for c in calls} == _bill(settings, catalog, batches)


CASCADE = {
    "kind": "cascade",
    "model_id": "gpt-4o-mini",
    "second_id": "mistral-small-2603",
    "strong_id": "claude-sonnet-4-5",
    "fallbacks": [],
}


@pytest.mark.parametrize("room", [True, False])
def test_a_cascades_escalations_go_as_a_second_batch_or_sync_when_the_deadline_is_near(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str], room: bool
) -> None:
    from datetime import timedelta

    from router.engine.chunk import run_chunk

    settings = _settings(pg_url, batch_dir)
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=300, models=None)
    with session_scope(settings) as session:
        repo.update_job(session, job_id, route=CASCADE, model_id="gpt-4o-mini")
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=300)
    job, _, _, _ = _state(settings, job_id)
    # With room, polled now; without, polled as if 2.5 h were left: the bulk is not cancelled (that
    # happens within 2 h) but a second batch no longer fits, so the escalations run synchronously.
    now = None if room else job.deadline_at - timedelta(hours=2.5)
    while batch_mode.poll_batches(settings, catalog, job_id=job_id, now=now):
        pass
    runtime.run(close_all())
    job, calls, items, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE and all(i.status == "done" for i in items)
    first = [b for b in batches if b.stage == 0]
    assert {b.model_id for b in first} == {"gpt-4o-mini", "mistral-small-2603"} and len({b.wave for b in first}) == 1
    strong = [c for c in calls if c.model_id == "claude-sonnet-4-5"]
    assert strong, "some items must disagree and escalate"
    if room:
        assert {b.model_id for b in batches if b.stage == 1} == {"claude-sonnet-4-5"}
        assert all(c.mode == "batch" for c in strong)
    else:
        assert not [b for b in batches if b.stage == 1]
        assert all(c.mode == "sync" and c.price_multiplier == 1 for c in strong)
    assert {c.id: c.cost_usd for c in calls if c.cost_usd and c.mode == "batch"} == _bill(settings, catalog, batches)
    by_id = {c.id: c for c in calls}
    escalated = [i for i in items if by_id[i.final_call_id].model_id == "claude-sonnet-4-5"]
    assert escalated and len(escalated) == len(strong)


def test_a_wave_out_while_the_job_is_rerouted_is_judged_on_the_models_it_was_sent_to(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    from router.engine.chunk import run_chunk

    settings = _settings(pg_url, batch_dir, "delay_s=1")
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=60, models=None)
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=60)
    with session_scope(settings) as session:  # drift re-routed it upward while the batch was out
        repo.update_job(session, job_id, route={"kind": "single", "model_id": "gpt-4o"}, model_id="gpt-4o")
    batch_mode.wait_for_batches(settings, catalog, job_id=job_id)
    runtime.run(close_all())
    job, calls, items, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE and len(batches) == 1 and batches[0].stage_models == ["gpt-4o-mini"]
    assert len(calls) == 60 and {c.model_id for c in calls} == {"gpt-4o-mini"}  # nothing sent again


def test_the_budget_check_at_submit_uses_the_batch_price(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    from router.errors import BudgetError
    from router.ledger import budgets

    settings = _settings(pg_url, batch_dir)
    _, probe = _submit(settings, tmp_path, team, n=400, deadline=None)  # no budget yet: what it would cost
    expected = probe.decision.expected_cost_usd
    with session_scope(settings) as session:
        found = repo.find_team(session, name=team[1], tenant=team[0])
        spent = repo.job_spend(session, probe.job_id)
        budgets.set_budget(
            session,
            team=found,
            monthly=spent + expected * Decimal("0.75"),
            currency="USD",
            soft_pct=None,
            settings=settings,
        )
    with pytest.raises(BudgetError, match="exceeds"):
        _submit(settings, tmp_path, team, n=400, deadline=None)
    job_id, submitted = _submit(settings, tmp_path, team, n=400, deadline="24h")  # fits at half price
    assert submitted.execution.bulk == "batch"


def test_a_batch_maybe_sent_to_a_vendor_that_cannot_be_asked_is_charged_at_worst_and_run_again(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from router.engine.chunk import run_chunk
    from router.ledger.tables import utcnow

    settings = _settings(pg_url, batch_dir)
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=40)

    def killed(*_: Any, **__: Any) -> None:
        raise SystemExit("worker killed around create")

    monkeypatch.setattr(batch_submit, "create_parts", killed)
    with pytest.raises(SystemExit):
        run_chunk(settings, catalog, job_id=job_id, lo=0, hi=40)
    monkeypatch.undo()
    monkeypatch.setattr(SandboxBatchAPI, "can_find", False, raising=False)
    batch_mode.poll_batches(settings, catalog, job_id=job_id, now=utcnow() + timedelta(hours=1))
    monkeypatch.undo()
    batch_mode.wait_for_batches(settings, catalog, job_id=job_id)
    runtime.run(close_all())
    job, calls, items, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE and all(i.status == "done" for i in items)
    first = next(b for b in batches if b.state == BatchState.INGESTED and b.batch_id is None)
    unknown = [c for c in calls if c.provider_batch_id == first.id]
    assert len(unknown) == 40 and all(c.status == CallStatus.UNKNOWN and c.cost_usd > 0 for c in unknown)
    assert all(c.price_multiplier == Decimal("0.5") for c in unknown)
    rest = [c for c in calls if c.provider_batch_id != first.id]
    assert len(rest) == 40 and {c.id: c.cost_usd for c in rest} == _bill(settings, catalog, batches)
    with session_scope(settings) as session:
        rolled = session.execute(select(func.sum(CallRollup.cost_usd)).where(CallRollup.job_id == job_id)).scalar()
    assert rolled == sum(c.cost_usd for c in calls)


def test_work_is_split_to_the_providers_byte_limit(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str]
) -> None:
    settings = _settings(pg_url, batch_dir, "max_bytes=20000")
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=100)
    _run(settings, job_id)
    job, calls, _, batches = _state(settings, job_id)
    api = runtime.run(_api(catalog, settings))
    assert job.status == JobStatus.DONE and len(batches) > 1 and sum(b.n_lines for b in batches) == 100
    for b in batches:  # each within the limit, as the provider counts it (every create was accepted)
        assert sum(len(line) for line in (batch_dir / f"{b.id}.jsonl").read_text().splitlines()) <= 20000
    assert api.limits.max_bytes == 20000
    assert {c.id: c.cost_usd for c in calls} == _bill(settings, catalog, batches)


def test_a_batch_the_provider_refuses_at_create_runs_its_lines_again(
    pg_url: str, batch_dir: Path, tmp_path: Path, team: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.errors import ProviderStatusError

    settings = _settings(pg_url, batch_dir)
    catalog = load_catalog()
    job_id, _ = _submit(settings, tmp_path, team, n=30)
    real = SandboxBatchAPI.create
    refused: list[str] = []

    async def create_once_refused(self: SandboxBatchAPI, lines: Any, *, model: str, tag: str) -> Any:
        if not refused:
            refused.append(tag)
            raise ProviderStatusError("invalid_request: the input file was refused", provider="openai", status_code=400)
        return await real(self, lines, model=model, tag=tag)

    monkeypatch.setattr(SandboxBatchAPI, "create", create_once_refused)
    _run(settings, job_id)
    job, calls, items, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE and all(i.status == "done" for i in items)
    first = next(b for b in batches if b.id == refused[0])
    assert first.batch_id is None and "input file was refused" in (first.error or "")
    unrun = [c for c in calls if c.provider_batch_id == first.id]
    assert len(unrun) == 30 and all(c.cost_usd == 0 and c.error.startswith("not run") for c in unrun)
    assert {c.id: c.cost_usd for c in calls if c.cost_usd} == _bill(settings, catalog, batches)


def test_the_embedded_default_on_sqlite_runs_batch_mode_exactly_once(batch_dir: Path, tmp_path: Path) -> None:
    from router.ledger.db import ensure_schema

    settings = _settings(f"sqlite:///{tmp_path / 'ledger.db'}", batch_dir, "errors=0.1,expired=0.05,bill_expired=true")
    catalog = load_catalog()
    ensure_schema(settings)
    with session_scope(settings) as session:
        repo.ensure_team(session, tenant="acme", team="growth")
    job_id, submitted = _submit(settings, tmp_path, ("acme", "growth"), n=300)
    assert submitted.execution.bulk == "batch"
    _run(settings, job_id)
    job, calls, items, batches = _state(settings, job_id)
    assert job.status == JobStatus.DONE and all(i.status == "done" for i in items)
    assert max(b.round for b in batches) >= 2 and all(b.state == BatchState.INGESTED for b in batches)
    batch_billed = {c.id: c.cost_usd for c in calls if c.cost_usd and c.mode == "batch"}
    assert batch_billed == _bill(settings, catalog, batches)
    with session_scope(settings) as session:
        rolled = sum(
            r.cost_usd for r in session.execute(select(CallRollup).where(CallRollup.job_id == job_id)).scalars()
        )
    assert rolled == sum(c.cost_usd for c in calls)
