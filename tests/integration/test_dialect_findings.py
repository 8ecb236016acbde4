"""Issue 13's error findings, one test each, on the chunk engine against the fake provider speaking
the providers' real error bodies (tests/fakes/faults.py PRESETS): wait and retry, stop the provider
with the right message, or do not retry.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from router.catalog import Catalog
from router.engine import runtime
from router.engine.chunk import run_chunk
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import CallStatus, ItemStatus
from router.providers import registry
from router.settings import Settings
from tests.helpers import FAKE_KEY, ledger, tickets, write_jsonl

LABELS = ("billing", "bug", "other")
# The catalog's provider name for each vendor (router/data/catalog.toml).
PROVIDER = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}


@pytest.fixture
def settings(live_settings: Settings) -> Settings:
    """The live settings with a Gemini key too (the fake server takes the same key everywhere)."""
    keys = {**live_settings.api_keys, "GEMINI_API_KEY": SecretStr(FAKE_KEY)}
    return live_settings.model_copy(update={"api_keys": keys})


@pytest.fixture(autouse=True)
def _reset_fake(fake_provider: str) -> None:
    """A fresh fake, and fresh in-process rate state: a learned rate cut by one test's 429s would slow
    the next test's calls to 0.5 a second."""
    httpx.post(f"{fake_provider}/_reset")
    runtime.run(registry.close_all())  # on the engine's own loop, where its clients live


def submit(settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], n: int, vendor: str) -> str:
    path = write_jsonl(tmp_path / "items.jsonl", tickets(n))
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="classify",
        labels=LABELS,
        min_quality=0.5,
        providers=frozenset({PROVIDER[vendor]}),
    )
    return submit_job(settings, catalog, request).job_id


def script(url: str, **fault: Any) -> None:
    httpx.post(f"{url}/_fail", json=fault).raise_for_status()


def job_state(settings: Settings, job_id: str) -> tuple[str, str | None, dict[str, str]]:
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        return job.status, job.pause_reason, dict(job.stopped_providers or {})


def test_a_gemini_per_minute_429_waits_its_retry_delay_from_the_body_and_retries(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """Findings 1 and 2: the words say "exceeded your current quota ... billing", QuotaFailure says per
    minute; no Retry-After header, the wait is RetryInfo.retryDelay: 8 s, longer than the engine waits
    on its own after one 429 with no wait given (its backoff, first pause and learned rate: about 5.3 s
    here, measured), so the time the chunk takes shows which wait was used."""
    job_id = submit(settings, catalog, tmp_path, team, 1, "gemini")
    script(fake_provider, preset="gemini.per_minute", retry_delay="8s", count=1)
    started = time.monotonic()
    outcome = run_chunk(settings, catalog, job_id=job_id, lo=0, hi=1)
    assert 8.0 <= time.monotonic() - started < 15
    assert outcome.done == 1, outcome
    calls, items = ledger(settings, job_id)
    first, second = sorted(calls, key=lambda c: c.started_at)
    assert first.status == CallStatus.ERROR and "RESOURCE_EXHAUSTED" in (first.error or "")
    assert second.status == CallStatus.OK and second.model_id == first.model_id
    assert items[0].status == ItemStatus.DONE
    status, _, stopped = job_state(settings, job_id)
    assert stopped == {} and status != "paused"


def test_a_gemini_per_day_429_stops_gemini_for_the_job_as_its_daily_quota(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    job_id = submit(settings, catalog, tmp_path, team, 3, "gemini")
    script(fake_provider, preset="gemini.per_day", retry_delay="1s", count=1000)
    outcome = run_chunk(settings, catalog, job_id=job_id, lo=0, hi=3)
    assert (outcome.done, outcome.failed) == (0, 0)  # the items wait for the quota
    calls, items = ledger(settings, job_id)
    assert len(calls) == 3  # one try each: a day's quota is not retried
    assert all(i.status == ItemStatus.PENDING for i in items)
    status, reason, stopped = job_state(settings, job_id)
    assert (status, reason) == ("paused", "provider")
    assert "daily quota is spent" in stopped["google"] and "midnight Pacific time" in stopped["google"]
    assert "PerDay" in stopped["google"]


@pytest.mark.parametrize(
    ("preset", "words"),
    [
        # Finding 3: a 400 that is a spend limit, not a bad request (items would fail).
        ("anthropic.spend_limit", "regain access on 2026-12-01"),
        # Finding 3: a 429 that is the tier's monthly cap, not a rate limit (it would be retried).
        ("anthropic.spend_cap", "monthly spend cap"),
    ],
)
def test_an_anthropic_spend_limit_stops_anthropic_and_is_not_retried(
    settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake_provider: str,
    preset: str,
    words: str,
) -> None:
    job_id = submit(settings, catalog, tmp_path, team, 6, "anthropic")
    script(fake_provider, preset=preset, count=1000)
    outcome = run_chunk(settings, catalog, job_id=job_id, lo=0, hi=6)
    assert (outcome.done, outcome.failed) == (0, 0)
    calls, items = ledger(settings, job_id)
    assert len(calls) == 6 and all(i.status == ItemStatus.PENDING for i in items)
    assert all("(request req_011fake" in (c.error or "") for c in calls)  # Anthropic's request id, kept
    status, reason, stopped = job_state(settings, job_id)
    assert (status, reason) == ("paused", "provider") and words in stopped["anthropic"]


def test_an_openai_rate_limit_linking_the_billing_page_waits_and_retries_without_a_six_minute_pause(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """Finding 6: code rate_limit_exceeded with "billing" in its message is a rate limit, and
    x-ratelimit-reset-requests "6m0s" is not a wait: nothing fails, nothing stops, nothing waits minutes."""
    job_id = submit(settings, catalog, tmp_path, team, 2, "openai")
    script(fake_provider, preset="openai.rate_limit", count=2)
    started = time.monotonic()
    outcome = run_chunk(settings, catalog, job_id=job_id, lo=0, hi=2)
    assert outcome.done == 2, outcome
    assert time.monotonic() - started < 15
    calls, _ = ledger(settings, job_id)
    errors = [c for c in calls if c.status == CallStatus.ERROR]
    assert len(errors) == 2 and all("rate_limit_exceeded" in (c.error or "") for c in errors)
    assert all("account/billing" in (c.error or "") for c in errors)  # the words that used to stop OpenAI
    assert job_state(settings, job_id)[2] == {}


def test_an_openai_spent_quota_stops_openai_with_its_code(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    job_id = submit(settings, catalog, tmp_path, team, 4, "openai")
    script(fake_provider, preset="openai.insufficient_quota", code="credit_balance_exhausted", count=1000)
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=4)
    calls, _ = ledger(settings, job_id)
    assert len(calls) == 4
    assert "prepaid credit is spent (credit_balance_exhausted)" in job_state(settings, job_id)[2]["openai"]


def test_x_should_retry_false_is_not_retried_and_the_request_id_lands_on_the_call_row(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """Finding 8: a 503 is retried unless the provider says `x-should-retry: false`; the provider's
    x-request-id is quoted in the error text stored on the call's ledger row."""
    job_id = submit(settings, catalog, tmp_path, team, 2, "openai")
    script(fake_provider, status=503, count=1000, headers={"x-should-retry": "false", "x-request-id": "req_abc123"})
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=2)
    calls, items = ledger(settings, job_id)
    tries = Counter((c.item_id, c.model_id) for c in calls)
    assert tries and set(tries.values()) == {1}  # no model was tried twice for one item
    assert all("(request req_abc123)" in (c.error or "") for c in calls)
    assert all(i.status == ItemStatus.FAILED for i in items)
    # The same 503 without the header is retried on the same model.
    httpx.post(f"{fake_provider}/_reset")
    job_id = submit(settings, catalog, tmp_path, team, 2, "openai")
    script(fake_provider, status=503, count=2, retry_after="0")
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=2)
    calls, _ = ledger(settings, job_id)
    assert max(Counter((c.item_id, c.model_id) for c in calls).values()) == 2
