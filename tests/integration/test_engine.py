"""The chunk engine on real Postgres against the local fake provider (no worker process)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from router.catalog import Catalog
from router.engine.chunk import run_chunk
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import CallStatus, ItemStatus
from router.settings import Settings
from tests.helpers import ledger, priced, tickets, write_jsonl

LABELS = ("billing", "bug", "other")


def _submit(settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], n: int, **kw: object) -> str:
    path = write_jsonl(tmp_path / "items.jsonl", tickets(n))
    kw.setdefault("providers", frozenset({"openai"}))
    request = JobRequest(path=path, team=team[1], tenant=team[0], task="classify", labels=LABELS, min_quality=0.9, **kw)  # type: ignore[arg-type]
    return submit_job(settings, catalog, request).job_id


@pytest.fixture(autouse=True)
def _reset_fake(fake_provider: str) -> None:
    httpx.post(f"{fake_provider}/_reset")


def test_chunk_records_every_call_at_exact_cost(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    job_id = _submit(live_settings, catalog, tmp_path, team, 50)
    outcome = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=50)
    assert (outcome.claimed, outcome.done + outcome.failed) == (50, 50)
    calls, items = ledger(live_settings, job_id)
    assert len(calls) == 50 and all(c.status == CallStatus.OK for c in calls)
    assert all(i.status in ItemStatus.TERMINAL and i.final_call_id for i in items)
    assert all(i.output in LABELS for i in items if i.status == ItemStatus.DONE)
    for call in calls:
        assert call.input_tokens > 0 and call.output_tokens > 0
        assert call.cost_usd == priced(catalog, call) and call.cost_usd > 0
    bill = httpx.get(f"{fake_provider}/_stats").json()
    assert bill["calls"] == 50
    assert bill["input_tokens"] == sum(c.input_tokens for c in calls)
    assert bill["output_tokens"] == sum(c.output_tokens for c in calls)


def test_chunk_delivered_twice_calls_once(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    job_id = _submit(live_settings, catalog, tmp_path, team, 30)
    first = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=30)
    second = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=30)
    assert first.claimed == 30 and second.claimed == 0
    calls, _ = ledger(live_settings, job_id)
    assert len(calls) == 30
    assert httpx.get(f"{fake_provider}/_stats").json()["calls"] == 30


def test_retryable_error_is_retried_with_a_new_ledgered_call(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    job_id = _submit(live_settings, catalog, tmp_path, team, 5)
    httpx.post(f"{fake_provider}/_fail", json={"status": 429, "count": 2, "retry_after": "0"})
    outcome = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=5)
    assert outcome.done + outcome.failed == 5 and outcome.claimed == 5
    calls, items = ledger(live_settings, job_id)
    errors = [c for c in calls if c.status == CallStatus.ERROR]
    assert len(errors) == 2 and all("429" in (c.error or "") and c.cost_usd == 0 for c in errors)
    assert len(calls) == 7  # 5 first tries + 2 retries, each with its own row
    assert all(i.status in ItemStatus.TERMINAL for i in items)
    assert httpx.get(f"{fake_provider}/_stats").json()["calls"] == 5  # errors are not billed


def test_non_retryable_error_without_fallback_fails_the_item_with_its_reason(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    job_id = _submit(live_settings, catalog, tmp_path, team, 3, models=frozenset({"gpt-4o-mini"}), providers=None)
    httpx.post(f"{fake_provider}/_fail", json={"status": 400, "count": 3})
    outcome = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=3)
    assert outcome.failed == 3
    calls, items = ledger(live_settings, job_id)
    assert len(calls) == 3  # not retried: a 400 will not change
    assert all(
        i.status == ItemStatus.FAILED and "400" in (i.error or "") and "openai" in (i.error or "") for i in items
    )


def test_non_retryable_error_falls_back_to_the_next_cheapest_qualifying_model(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    job_id = _submit(live_settings, catalog, tmp_path, team, 3)
    with session_scope(live_settings) as session:
        route = repo.get_job(session, job_id).route
    assert route and route["model_id"] == "gpt-4o-mini" and route["fallbacks"][0] == "gpt-4o"
    httpx.post(f"{fake_provider}/_fail", json={"status": 400, "count": 3})
    outcome = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=3)
    assert (outcome.done, outcome.failed) == (3, 0)
    calls, items = ledger(live_settings, job_id)
    assert sorted((c.model_id, c.status) for c in calls) == [("gpt-4o", "ok")] * 3 + [("gpt-4o-mini", "error")] * 3
    by_id = {c.id: c for c in calls}
    assert all(by_id[i.final_call_id].model_id == "gpt-4o" for i in items)
    bill = httpx.get(f"{fake_provider}/_stats").json()["models"]
    assert list(bill) == ["gpt-4o"] and bill["gpt-4o"]["calls"] == 3


def test_job_is_done_when_every_chunk_is(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str]
) -> None:
    from router.ledger import repo
    from router.ledger.db import session_scope

    job_id = _submit(live_settings, catalog, tmp_path, team, 25)
    # A chunk whose own items run out takes the job's next pending ones (no thread idles on its last
    # calls): the first chunk runs all 25, and the chunk planned for items 10-24 finds nothing to do.
    first = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=10)
    assert (first.claimed, first.done + first.failed) == (25, 25)
    with session_scope(live_settings) as session:
        job = repo.get_job(session, job_id)
        assert job.status == "done" and job.n_done + job.n_failed == 25 and job.finished_at is not None
        assert repo.job_spend(session, job_id) == sum(c.cost_usd for c in ledger(live_settings, job_id)[0])
    assert run_chunk(live_settings, catalog, job_id=job_id, lo=10, hi=25).claimed == 0
    calls, items = ledger(live_settings, job_id)
    assert len(calls) == 25 and sorted(i.attempts for i in items) == [1] * 25  # each item claimed and called once


def test_anthropic_model_runs_over_the_messages_api(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    path = write_jsonl(tmp_path / "items.jsonl", tickets(20))
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="summarize",
        max_words=10,
        min_quality=0.8,
        models=frozenset({"claude-haiku-4-5"}),
    )
    job_id = submit_job(live_settings, catalog, request).job_id
    run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=20)
    calls, items = ledger(live_settings, job_id)
    assert {c.model_id for c in calls} == {"claude-haiku-4-5"} and {c.provider for c in calls} == {"anthropic"}
    assert all(i.status == ItemStatus.DONE and i.output for i in items)
    assert all(c.cost_usd == priced(catalog, c) > 0 for c in calls)
    bill = httpx.get(f"{fake_provider}/_stats").json()["models"]["claude-haiku-4-5"]
    assert bill["calls"] == 20 and bill["output_tokens"] == sum(c.output_tokens for c in calls)


def test_awkward_texts_survive_intake_exactly(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str]
) -> None:
    from sqlalchemy import select

    from router.ledger.db import session_scope
    from router.ledger.tables import Item

    texts = [
        "tab\there",
        "new\nline",
        "back\\slash",
        "\\N is not NULL",
        "quote \" and ' both",
        "emoji 🧾 ünïcödé",
        "x" * 200_000,
        "  leading and trailing  ",
    ]
    path = write_jsonl(
        tmp_path / "awkward.jsonl", [{"id": f"a{k}", "text": t, "gold": "bug"} for k, t in enumerate(texts)]
    )
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="classify",
        labels=LABELS,
        min_quality=0.9,
        providers=frozenset({"openai"}),
    )
    job_id = submit_job(live_settings, catalog, request).job_id
    with session_scope(live_settings) as session:
        rows = session.execute(
            select(Item.ext_id, Item.text, Item.gold).where(Item.job_id == job_id).order_by(Item.seq)
        ).all()  # type: ignore[call-overload, arg-type]
    assert [(r[0], r[1], r[2]) for r in rows] == [(f"a{k}", t, "bug") for k, t in enumerate(texts)]


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ({"status": 401}, "check OPENAI_API_KEY"),
        (
            {
                "status": 429,
                "body": {
                    "error": {
                        "message": "You exceeded your current quota",
                        "type": "insufficient_quota",
                        "code": "insufficient_quota",
                    }
                },
            },
            "quota or credit is spent",
        ),
    ],
)
def test_a_refused_key_or_spent_quota_stops_the_provider_for_the_job_at_once(
    live_settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake_provider: str,
    fault: dict[str, object],
    says: str,
) -> None:
    job_id = _submit(live_settings, catalog, tmp_path, team, 20)
    httpx.post(f"{fake_provider}/_fail", json={**fault, "count": 1000})
    outcome = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=20)
    assert (outcome.done, outcome.failed) == (0, 0)  # nothing failed for good: the items wait
    calls, items = ledger(live_settings, job_id)
    assert len(calls) == 20  # each item tried once, in parallel; no retries, no fallback on the same provider
    assert all(i.status == "pending" for i in items)
    with session_scope(live_settings) as session:
        job = repo.get_job(session, job_id)
        events = [e for e in repo.job_events(session, job_id) if e.kind == "provider_stopped"]
    assert job.status == "paused" and job.pause_reason == "provider"
    assert set(job.stopped_providers or {}) == {"openai"} and says in job.stopped_providers["openai"]
    assert len(events) == 1 and "openai" in events[0].detail["why"]
    # Fixed: resuming clears the stop, and the items run.
    httpx.post(f"{fake_provider}/_reset")
    with session_scope(live_settings) as session:
        repo.resume_job(session, job_id)
    outcome = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=20)
    assert outcome.done == 20


def test_outcomes_with_awkward_text_are_written_exactly(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str]
) -> None:
    """Outcomes travel to Postgres as array literals: quotes, backslashes, braces, commas, NULL-like
    words, newlines and non-ASCII must come back unchanged."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from sqlalchemy import select

    from router.ledger.tables import Call

    job_id = _submit(live_settings, catalog, tmp_path, team, 6)
    awkward = ['say "B"', 'back\\slash \\"', "{a,b}", "NULL", "line\nbreak, tab\t", "ünï 🧾", ""]
    now = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)
    with session_scope(live_settings) as session:
        ids = [f"awk{k}-{job_id}" for k in range(len(awkward))]
        zero = Decimal(0)
        repo.insert_calls(
            session,
            common={
                "job_id": job_id,
                "tenant_id": 1,
                "team_id": 1,
                "model_id": "m",
                "provider": "p",
                "purpose": "run",
                "status": "in_flight",
                "simulated": False,
                "started_at": now,
                "input_tokens": 0,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "output_tokens": 0,
                "usage_estimated": False,
                "cost_usd": zero,
                "input_usd_per_mtok": zero,
                "cached_input_usd_per_mtok": zero,
                "cache_write_usd_per_mtok": zero,
                "output_usd_per_mtok": zero,
            },
            ids=ids,
            item_ids=list(range(len(awkward))),
        )
        repo.finish_calls(
            session,
            [
                {
                    "id": i,
                    "status": "error",
                    "input_tokens": k,
                    "cached_input_tokens": 0,
                    "cache_write_tokens": 0,
                    "output_tokens": 2**31 - 1,
                    "reasoning_tokens": k,
                    "usage_estimated": k % 2 == 0,
                    "cost_usd": Decimal("0.0000000001") * k,
                    "latency_ms": None,
                    "error": text,
                    "finish": None,
                    "finished_at": now,
                }
                for k, (i, text) in enumerate(zip(ids, awkward, strict=True))
            ],
        )
    with session_scope(live_settings) as session:
        rows = {c.id: c for c in session.execute(select(Call).where(Call.id.in_(ids))).scalars()}  # type: ignore[attr-defined]
    for k, (i, text) in enumerate(zip(ids, awkward, strict=True)):
        row = rows[i]
        assert (
            row.error,
            row.input_tokens,
            row.reasoning_tokens,
            row.usage_estimated,
            row.cost_usd,
            row.finished_at,
            row.latency_ms,
        ) == (text, k, k, k % 2 == 0, Decimal("0.0000000001") * k, now, None)
