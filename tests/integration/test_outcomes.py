"""Refusals, filters, blocked prompts and cut-off answers are their own outcome (issue 13, point 4 of
what to build): in the month report, counted and costed per group, and in each item's result.

Jobs run in-process on real Postgres against the fake provider, told (POST /_fail {"answer": KIND})
to answer some calls in each vendor's own words; the report and the results are checked against
the call rows the engine wrote.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from router.catalog import Catalog
from router.engine import runtime
from router.engine.chunk import run_chunk
from router.jobs.intake import JobRequest
from router.jobs.results import result_records
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.rollup import local_day
from router.ledger.tables import Call, ItemStatus
from router.providers.registry import close_all
from router.reports.monthly import monthly_report
from router.reports.render import render_csv, render_json
from router.route import Route
from router.settings import Settings
from tests.fakes.server import OPENAI_PATH
from tests.helpers import FAKE_KEY, ledger, tickets, write_jsonl

# The call rows' finish for each outcome the report and the results name.
FINISH = {"refused": "refused", "filtered": "filtered", "blocked": "blocked", "cut_off": "cut"}


@pytest.fixture(autouse=True)
def _reset_fake(fake_provider: str) -> Iterator[None]:
    httpx.post(f"{fake_provider}/_reset").raise_for_status()
    yield
    runtime.run(close_all())  # providers are cached by name: leave none built with these settings


@pytest.fixture
def settings(live_settings: Settings) -> Settings:
    """Keys for OpenAI and Gemini too (the fake accepts one key for all)."""
    keys = {name: SecretStr(FAKE_KEY) for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")}
    return live_settings.model_copy(update={"api_keys": keys})


def run_job(
    settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake: str,
    *,
    model: str,
    n: int,
    answers: list[tuple[str, int]],
) -> str:
    """Summarize `n` items on `model`, the fake answering its first calls as `answers` says ((dialect,
    how many), in order) and the others whole; returns the job id."""
    path = write_jsonl(tmp_path / f"{model}.jsonl", tickets(n))
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task="summarize", labels=(), max_words=12, min_quality=0.5,
        models=frozenset({model}), quality="prior",
    )  # fmt: skip
    job_id = submit_job(settings, catalog, request).job_id
    for answer, count in answers:
        httpx.post(f"{fake}/_fail", json={"answer": answer, "count": count}).raise_for_status()
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=n)
    return job_id


def test_refused_filtered_blocked_and_cut_off_answers_show_in_the_month_report_and_the_results(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    # OpenAI: 2 refused (message.refusal), 1 filtered (content_filter), 1 cut off (length), 2 whole.
    openai_job = run_job(
        settings, catalog, tmp_path, team, fake_provider, model="gpt-4o-mini", n=6,
        answers=[("refusal", 2), ("filtered", 1), ("cut", 1)],
    )  # fmt: skip
    # Gemini: 1 prompt blocked (promptFeedback.blockReason, its prompt tokens billed), 1 whole.
    gemini_job = run_job(
        settings, catalog, tmp_path, team, fake_provider, model="gemini-2.5-flash", n=2, answers=[("blocked", 1)]
    )
    calls = [c for job_id in (openai_job, gemini_job) for c in ledger(settings, job_id)[0]]
    assert len(calls) == 8, [(c.model_id, c.status, c.finish, c.error) for c in calls]  # none tried again
    assert Counter(c.finish for c in calls) == {"stop": 3, "refused": 2, "filtered": 1, "cut": 1, "blocked": 1}

    def billed(model: str, outcome: str) -> tuple[int, Decimal]:
        """What the call rows say: how many of the model's calls ended so, and what they cost."""
        found: list[Call] = [c for c in calls if c.model_id == model and c.finish == FINISH[outcome]]
        return len(found), sum((c.cost_usd for c in found), Decimal(0))

    months = {f"{local_day(c.started_at, 'UTC'):%Y-%m}" for c in calls if c.started_at is not None}
    assert len(months) == 1  # the tenant keeps UTC books; the calls took seconds
    month = months.pop()
    with session_scope(settings) as session:
        by_model = monthly_report(session, month=month, tenant=team[0], by="model")
        by_team = monthly_report(session, month=month, tenant=team[0], by="team")

    # JSON, by model: each outcome's calls and their exact spend, as the call rows have them.
    doc = json.loads(render_json(by_model))
    rows = {r["key"]: r for r in doc["rows"]}
    want = {
        "gpt-4o-mini": {"refused": 2, "filtered": 1, "blocked": 0, "cut_off": 1},
        "gemini-2.5-flash": {"refused": 0, "filtered": 0, "blocked": 1, "cut_off": 0},
    }
    for model, counts in want.items():
        for outcome, n in counts.items():
            calls_n, spend = billed(model, outcome)
            assert calls_n == n, (model, outcome)
            assert rows[model][f"{outcome}_calls"] == n, (model, outcome)
            assert Decimal(rows[model][f"{outcome}_spend_usd"]) == spend, (model, outcome)
            assert (spend > 0) == (n > 0), (model, outcome)  # billed, so charged
    assert rows["gpt-4o-mini"]["failed_calls"] == 4 and rows["gemini-2.5-flash"]["failed_calls"] == 1
    unused = sum((c.cost_usd for c in calls if c.finish != "stop"), Decimal(0))
    assert Decimal(doc["totals"]["failed_spend_usd"]) == unused  # the same spend, inside failed spend

    # CSV, by team: the one team and the total carry every outcome.
    lines = list(csv.reader(io.StringIO(render_csv(by_team))))
    header, cells = lines[0], {line[0]: dict(zip(lines[0], line, strict=True)) for line in lines[1:]}
    # The outcome columns, then the batch levers' columns (appended after them).
    assert header[-12:-4] == [f"{o}_{k}" for o in FINISH for k in ("calls", "spend_usd")]
    assert list(cells) == [team[1], "TOTAL"]
    for key in (team[1], "TOTAL"):
        assert [int(cells[key][f"{o}_calls"]) for o in FINISH] == [2, 1, 1, 1], key
        for outcome in FINISH:
            spend = sum((billed(m, outcome)[1] for m in want), Decimal(0))
            assert Decimal(cells[key][f"{outcome}_spend_usd"]) == spend, (key, outcome)

    # Results: each such item names its outcome beside its error; whole answers have none.
    records = [r for job_id in (openai_job, gemini_job) for r in result_records(settings, job_id)]
    assert Counter(r["outcome"] for r in records) == {None: 3, "refused": 2, "filtered": 1, "cut_off": 1, "blocked": 1}
    words = {"refused": "refused by the model", "filtered": "content filter", "blocked": "prompt blocked"}
    words["cut_off"] = "cut off by the output cap"
    for record in records:
        if record["outcome"] is None:
            assert record["status"] == ItemStatus.DONE and record["error"] is None, record
        else:
            assert record["status"] == ItemStatus.FAILED and words[record["outcome"]] in record["error"], record
            assert Decimal(record["cost_usd"]) > 0  # the answer was billed, and is charged


def test_an_item_failed_by_a_refusal_keeps_that_call_as_its_result(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """A cascade's cheap pair where one model refuses and the other answers, with no stronger model to
    ask (its provider is stopped): the item fails with the refusal, and its result names the model
    that refused and the outcome, not the pair's other model."""
    path = write_jsonl(tmp_path / "items.jsonl", tickets(2))
    labels = ("billing", "bug", "other")
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task="classify", labels=labels, min_quality=0.5,
        models=frozenset({"gpt-4o-mini"}), quality="prior",
    )  # fmt: skip
    job_id = submit_job(settings, catalog, request).job_id
    route = Route(kind="cascade", model_id="gpt-4o-mini", second_id="claude-haiku-4-5", strong_id="gemini-2.5-flash")
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        job.route = route.as_json()
        session.add(job)
        repo.stop_provider(session, job_id=job_id, provider="google", why="stopped by the test")
    httpx.post(f"{fake_provider}/_fail", json={"answer": "refusal", "count": 2, "path": OPENAI_PATH}).raise_for_status()
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=2)
    calls, items = ledger(settings, job_id)
    assert sorted((c.model_id, c.finish) for c in calls) == [
        ("claude-haiku-4-5", "stop"),
        ("claude-haiku-4-5", "stop"),
        ("gpt-4o-mini", "refused"),
        ("gpt-4o-mini", "refused"),
    ]
    assert [i.status for i in items] == [ItemStatus.FAILED] * 2
    for record in result_records(settings, job_id):
        assert (record["model"], record["outcome"]) == ("gpt-4o-mini", "refused"), record
        assert "refused by the model" in record["error"]
