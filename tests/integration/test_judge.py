"""The summary judge on Postgres, with the sandbox answering: calls ledgered as calibration, settled
against a budget, and faithful summaries passed more often than drifting ones."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from router.catalog import Catalog, load_catalog
from router.jobs.intake import JobRequest
from router.jobs.judge import judge_summaries
from router.jobs.submit import submit_job
from router.ledger import budgets, repo
from router.ledger.db import session_scope
from router.ledger.tables import Call, CallStatus, Item
from router.ledger.types import JobSnapshot
from router.settings import Settings
from tests.helpers import contract_sentences, write_jsonl

JUDGE = "gpt-4o"  # summarize quality 0.92 in the catalog: the sandbox's judge is right about that often
MAX_WORDS = 60
DRIFT = "The vendor also won a bonus for early shipping and plans to open a factory in Brazil next spring."


@pytest.fixture
def sandbox(pg_url: str) -> tuple[Settings, Catalog]:
    settings = Settings(database_url=pg_url, sandbox="on", _env_file=None)  # type: ignore[call-arg]
    return settings, load_catalog(None)


def _faithful(k: int) -> str:
    """The source's leading sentences, up to at least half its words: its key points, nothing added."""
    sentences = contract_sentences(k)
    half = len(" ".join(sentences).split()) / 2
    kept: list[str] = []
    while len(" ".join(kept).split()) < half:
        kept.append(sentences[len(kept)])
    return " ".join(kept)


def _drifting(k: int) -> str:
    """The source's first sentence, then claims the source does not make."""
    return f"{contract_sentences(k)[0]} {DRIFT}"


def _summarize_job(settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], n: int) -> str:
    rows = [{"id": f"c{k}", "text": " ".join(contract_sentences(k))} for k in range(n)]
    path = write_jsonl(tmp_path / "contracts.jsonl", rows)
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task="summarize", max_words=MAX_WORDS, min_quality=0.8, quality="prior"
    )
    return submit_job(settings, catalog, request).job_id


def _load(settings: Settings, job_id: str) -> tuple[JobSnapshot, list[Any]]:
    with session_scope(settings) as session:
        job = repo.job_for_chunk(session, job_id)
        items = list(session.execute(select(Item.id, Item.seq, Item.text).where(Item.job_id == job_id)).all())
    assert job is not None
    return job, sorted(items, key=lambda row: row.seq)


def _calls(settings: Settings, job_id: str) -> list[Call]:
    with session_scope(settings) as session:
        return list(session.execute(select(Call).where(Call.job_id == job_id)).scalars())


def test_judge_ledgers_its_calls_as_calibration_and_passes_faithful_summaries_more_than_drifting_ones(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog = sandbox
    job_id = _summarize_job(settings, catalog, tmp_path, team, n=40)
    job, items = _load(settings, job_id)
    before = {c.id for c in _calls(settings, job_id)}
    faithful = {row.id: _faithful(row.seq) for row in items}
    faithful[items[0].id] = None  # no summary: not judged, and not a pass
    passed = judge_summaries(settings, catalog, job, judge_id=JUDGE, items=items, summaries=faithful)
    drifting = judge_summaries(
        settings, catalog, job, judge_id=JUDGE, items=items, summaries={row.id: _drifting(row.seq) for row in items}
    )
    assert passed is not None and drifting is not None
    assert set(passed) == set(drifting) == {row.id for row in items}  # every verdict read back
    assert passed[items[0].id] is False
    faithful_rate = sum(passed.values()) / (len(items) - 1)
    drifting_rate = sum(drifting.values()) / len(items)
    assert faithful_rate >= 0.75 and drifting_rate <= 0.25, (faithful_rate, drifting_rate)

    calls = [c for c in _calls(settings, job_id) if c.id not in before]
    assert len(calls) == 2 * len(items) - 1  # one call per summary judged, none for the missing one
    assert {c.purpose for c in calls} == {"calibration"} and {c.model_id for c in calls} == {JUDGE}
    assert all(c.status == CallStatus.OK and c.simulated and c.cost_usd > 0 for c in calls)
    assert sum(1 for c in calls if c.item_id == items[0].id) == 1  # its drifting summary's, only
    # The judge reads the source and the summary: its input is well above the summary's own length.
    assert all(c.input_tokens > 100 and 0 < c.output_tokens <= 64 for c in calls)


def test_judge_reserves_and_settles_against_the_budget_and_returns_none_when_it_cannot(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog = sandbox
    job_id = _summarize_job(settings, catalog, tmp_path, team, n=12)

    def set_budget(monthly: str) -> None:
        with session_scope(settings) as session:
            found = repo.find_team(session, name=team[1], tenant=team[0])
            budgets.set_budget(
                session, team=found, monthly=Decimal(monthly), currency="USD", soft_pct=None, settings=settings
            )

    set_budget("0.0000001")  # less than one judge call's worst case
    job, items = _load(settings, job_id)
    assert job.has_budget
    summaries: dict[int, str | None] = {row.id: _faithful(row.seq) for row in items}
    before = {c.id for c in _calls(settings, job_id)}
    assert judge_summaries(settings, catalog, job, judge_id=JUDGE, items=items, summaries=summaries) is None
    assert {c.id for c in _calls(settings, job_id)} == before  # nothing was called

    set_budget("10")
    verdicts = judge_summaries(settings, catalog, job, judge_id=JUDGE, items=items, summaries=summaries)
    assert verdicts is not None and set(verdicts) == {row.id for row in items}
    calls = [c for c in _calls(settings, job_id) if c.id not in before]
    assert len(calls) == len(items) and all(c.purpose == "calibration" for c in calls)
    with session_scope(settings) as session:
        period = budgets.current_period(session, team_id=job.team_id)
        assert period is not None
        assert period.reserved == 0  # the reservation was settled to the calls' actual cost
        assert period.settled >= sum((c.cost_usd for c in calls), Decimal(0)) > 0
