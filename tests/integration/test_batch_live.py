"""A job that can wait, end to end on each vendor's own batch wire format (the fake provider speaks
OpenAI Batch, Anthropic Message Batches, Mistral batch jobs and Gemini batchGenerateContent, and keeps
its own bill at batch prices): every item done, every line ledgered once at its usage times the list
price times 0.5, and the ledger equal to the fake's batch bill line for line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from router.catalog import Catalog
from router.engine import runtime
from router.jobs import lifecycle
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import Call, CallStatus, JobStatus, ProviderBatch
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
        path = write_jsonl(tmp_path / "items.jsonl", tickets(60))
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
        try:
            lifecycle.start(
                batch_settings,
                job_id=submitted.job_id,
                dispatcher=lifecycle.InlineDispatcher(batch_settings, catalog),
            )
        finally:
            runtime.run(close_all())
        with session_scope(batch_settings) as session:
            job = repo.get_job(session, submitted.job_id)
            calls = list(session.execute(select(Call).where(Call.job_id == submitted.job_id)).scalars())
            batches = list(
                session.execute(select(ProviderBatch).where(ProviderBatch.job_id == submitted.job_id)).scalars()
            )
            session.expunge_all()
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
