"""A job that can wait, end to end on each vendor's own batch wire format (the fake provider speaks
OpenAI Batch, Anthropic Message Batches, Mistral batch jobs and Gemini batchGenerateContent, and keeps
its own bill at batch prices): every item done, every line ledgered once at its usage times the list
price times 0.5, and the ledger equal to the fake's batch bill line for line."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from router.catalog import Catalog
from router.engine import runtime
from router.jobs import lifecycle
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import BatchState, Call, CallStatus, JobStatus, ProviderBatch
from router.providers.http import transport_error
from router.providers.openai_batch import OpenAIBatchAPI
from router.providers.registry import close_all
from router.settings import Settings
from router.usage import TokenUsage
from tests.fakes.batches import read_bill, set_knobs
from tests.helpers import VENDOR_MODELS, tickets, with_vendor_keys, write_jsonl

LABELS = ("billing", "bug", "other")
VENDORS = VENDOR_MODELS


@pytest.fixture
def batch_settings(live_settings: Settings) -> Settings:
    return with_vendor_keys(live_settings)


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_a_job_that_can_wait_runs_on_the_vendors_batch_api_and_the_ledger_is_its_bill(
    vendor: str,
    batch_settings: Settings,
    catalog: Catalog,
    fake_provider: str,
    tmp_path: Path,
    team: tuple[str, str],
) -> None:
    set_knobs(fake_provider, reset=True, errored=0.1, expired=0.05, expired_billed=True, shuffle=True, seed=3)
    try:
        model = VENDORS[vendor]
        job_id = _job(batch_settings, catalog, tmp_path, team, model, 60)
        try:
            lifecycle.start(
                batch_settings, job_id=job_id, dispatcher=lifecycle.InlineDispatcher(batch_settings, catalog)
            )
        finally:
            runtime.run(close_all())
        with session_scope(batch_settings) as session:
            job = repo.get_job(session, job_id)
        calls, batches = _rows(batch_settings, job_id)
        assert job.status == JobStatus.DONE and job.n_done == 60, (job.status, job.n_done, job.n_failed)
        assert batches and all(b.batch_id for b in batches)
        assert len(batches) >= 2  # the errored and expired lines of the first went in a next batch
        assert all(c.status != CallStatus.IN_FLIGHT for c in calls)
        # The fake's batch bill, line by line, at the list price times 0.5: equal to the ledger.
        lines = read_bill(fake_provider)["lines"]
        billed = {
            custom_id: catalog.price(model).cost_usd(
                TokenUsage(
                    input_tokens=line["input_tokens"],
                    output_tokens=line["output_tokens"],
                    cached_input_tokens=line["cached_input_tokens"],
                )
            )
            * Decimal(line["multiplier"])
            for custom_id, line in lines.items()
            if line["vendor"] == vendor and custom_id in {c.id for c in calls}
        }
        ledger = {c.id: c.cost_usd for c in calls if c.mode == "batch" and c.cost_usd}
        assert ledger and ledger == billed
        assert any(c.error and c.error.startswith("expired") and c.cost_usd > 0 for c in calls)
        assert all(c.price_multiplier == Decimal("0.5") for c in calls if c.mode == "batch")
    finally:
        set_knobs(fake_provider, reset=True)


def _job(batch_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], model: str, n: int) -> str:
    path = write_jsonl(tmp_path / "items.jsonl", tickets(n))
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="classify",
        labels=LABELS,
        min_quality=0.5,
        quality="prior",
        models=frozenset({model}),
        deadline="24h",
    )
    submitted = submit_job(batch_settings, catalog, request)
    assert submitted.execution.bulk == "batch", submitted.execution.summary
    return submitted.job_id


def _rows(settings: Settings, job_id: str) -> tuple[list[Call], list[ProviderBatch]]:
    with session_scope(settings) as session:
        calls = list(session.execute(select(Call).where(Call.job_id == job_id)).scalars())
        rows = list(session.execute(select(ProviderBatch).where(ProviderBatch.job_id == job_id)).scalars())
        session.expunge_all()
    return calls, rows


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("vendor", ["openai", "mistral", "gemini"])
def test_a_create_whose_connection_drops_is_found_or_sent_again_at_once_and_billed_once(
    vendor: str,
    when: str,
    batch_settings: Settings,
    catalog: Catalog,
    fake_provider: str,
    tmp_path: Path,
    team: tuple[str, str],
) -> None:
    """The create's connection breaks with no answer, before the provider registered the batch (it has
    none: sent again) or after (it has it: found by its tag and adopted); either way the job ends in
    seconds, not after the poller's 5-minute grace, and exactly one batch is billed."""
    httpx.post(f"{fake_provider}/_reset").raise_for_status()  # no batch of an earlier test on the bill
    set_knobs(fake_provider, reset=True, drop_create=when, drop_creates=1)
    try:
        model = VENDORS[vendor]
        job_id = _job(batch_settings, catalog, tmp_path, team, model, 20)
        started = time.monotonic()
        try:
            lifecycle.start(
                batch_settings, job_id=job_id, dispatcher=lifecycle.InlineDispatcher(batch_settings, catalog)
            )
        finally:
            runtime.run(close_all())
        took = time.monotonic() - started
        with session_scope(batch_settings) as session:
            job = repo.get_job(session, job_id)
        calls, rows = _rows(batch_settings, job_id)
        bill = read_bill(fake_provider)
        assert job.status == JobStatus.DONE and job.n_done == 20, (job.status, job.n_done, job.n_failed)
        assert took < 60, took  # well under batch_mode.MIN_CREATE_GRACE_S (300 s)
        assert len(rows) == 1 and rows[0].batch_id is not None
        made = [b for b, seen in bill["batches"].items() if seen["vendor"] == vendor]
        assert made == [rows[0].batch_id]  # one batch at the provider: the one recorded
        ours = {c.id for c in calls}
        billed = {cid: line for cid, line in bill["lines"].items() if cid in ours}
        assert len(billed) == 20 and all(line["repeats"] == 0 for line in billed.values())
        assert {c.id for c in calls if c.mode == "batch" and c.cost_usd} == set(billed)
    finally:
        set_knobs(fake_provider, reset=True)


def test_a_create_whose_connection_drops_at_anthropic_keeps_the_worst_case_rule(
    batch_settings: Settings, catalog: Catalog, fake_provider: str, tmp_path: Path, team: tuple[str, str]
) -> None:
    """Anthropic cannot be asked for a batch by a tag: the create is not sent again (the batch may be
    there, and billed); the row stays `creating` for the poller, as before."""
    from router.engine.chunk import run_chunk

    httpx.post(f"{fake_provider}/_reset").raise_for_status()
    set_knobs(fake_provider, reset=True, drop_create="after", drop_creates=1)
    try:
        job_id = _job(batch_settings, catalog, tmp_path, team, VENDORS["anthropic"], 10)
        try:
            run_chunk(batch_settings, catalog, job_id=job_id, lo=0, hi=10)
        finally:
            runtime.run(close_all())
        _, rows = _rows(batch_settings, job_id)
        assert len(rows) == 1 and rows[0].state == BatchState.CREATING and rows[0].batch_id is None
        assert rows[0].error and "to be tried again" in rows[0].error
        made = [b for b, seen in read_bill(fake_provider)["batches"].items() if seen["vendor"] == "anthropic"]
        assert len(made) == 1  # the provider got it once, and nothing sent it again
    finally:
        set_knobs(fake_provider, reset=True)


def test_a_create_refused_before_it_was_sent_is_sent_again_without_a_find(
    batch_settings: Settings,
    catalog: Catalog,
    fake_provider: str,
    tmp_path: Path,
    team: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx.ConnectError (no byte sent) is not ambiguous: the create is sent again straight away."""
    set_knobs(fake_provider, reset=True)
    real_create, real_find = OpenAIBatchAPI.create, OpenAIBatchAPI.find
    seen = {"create": 0, "find": 0}

    async def create(self: OpenAIBatchAPI, *args: Any, **kwargs: Any) -> Any:
        seen["create"] += 1
        if seen["create"] == 1:
            mapped = transport_error(httpx.ConnectError("connection refused"), provider=self.name)
            assert mapped is not None
            raise mapped
        return await real_create(self, *args, **kwargs)

    async def find(self: OpenAIBatchAPI, tag: str) -> Any:
        seen["find"] += 1
        return await real_find(self, tag)

    monkeypatch.setattr(OpenAIBatchAPI, "create", create)
    monkeypatch.setattr(OpenAIBatchAPI, "find", find)
    job_id = _job(batch_settings, catalog, tmp_path, team, VENDORS["openai"], 10)
    try:
        lifecycle.start(batch_settings, job_id=job_id, dispatcher=lifecycle.InlineDispatcher(batch_settings, catalog))
    finally:
        runtime.run(close_all())
    with session_scope(batch_settings) as session:
        job = repo.get_job(session, job_id)
    _, rows = _rows(batch_settings, job_id)
    assert job.status == JobStatus.DONE and job.n_done == 10
    assert seen == {"create": 2, "find": 0}
    assert len(rows) == 1 and rows[0].batch_id is not None
