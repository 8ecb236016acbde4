"""Hedged calls (policies.hedging): a call out far longer than its model's calls take is sent again;
the first answer stands, and the straggler is given up and charged at its worst case (it was sent,
so it may be billed). Against the fake provider, whose scripted hangs answer and bill late."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from router.catalog import Catalog
from router.engine import runtime
from router.engine.calls import forget_service_times
from router.engine.chunk import run_chunk
from router.engine.rounds import GIVEN_UP_SENT
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import budgets, repo
from router.ledger.db import session_scope
from router.ledger.tables import CallStatus, ItemStatus
from router.providers.registry import close_all
from router.settings import Settings
from router.usage import TokenUsage
from tests.helpers import ledger, tickets, write_jsonl

HANG_S = 3.0  # each scripted straggler answers (and is billed) this long after it was sent


@pytest.fixture(autouse=True)
def _fresh(fake_provider: str) -> None:
    httpx.post(f"{fake_provider}/_reset")
    runtime.run(close_all())  # providers built by an earlier test keep that test's timeout
    forget_service_times()  # straggling is judged on this test's own calls


def _run(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], models: set[str], n: int, name: str
) -> str:
    path = write_jsonl(tmp_path / f"{name}.jsonl", tickets(n))
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task="classify", labels=("billing", "bug", "other"),
        min_quality=0.5, models=frozenset(models), quality="prior",
    )  # fmt: skip
    return submit_job(settings, catalog, request).job_id


def _spend_of(settings: Settings, job_id: str) -> Decimal:
    with session_scope(settings) as session:
        return repo.job_spend(session, job_id)


def _billed_usd(catalog: Catalog, call: object, bill: dict[str, dict[str, int]]) -> Decimal:
    b = bill[call.id]  # type: ignore[attr-defined]
    return catalog.price(call.model_id, call.started_at).cost_usd(  # type: ignore[attr-defined]
        TokenUsage(b["input_tokens"], b["output_tokens"])
    )


@pytest.mark.parametrize("budget", [None, Decimal("50")], ids=["no budget", "under a budget"])
def test_a_straggler_is_hedged_and_given_up_at_its_worst_case(
    live_settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake_provider: str,
    budget: Decimal | None,
) -> None:
    """Under a budget, each hedge's worst case is reserved first; every reservation is settled or
    given back by the end (nothing left reserved), and the budget's spend is the ledger's."""
    settings = live_settings.model_copy(update={"request_timeout_s": 20.0})
    if budget is not None:
        with session_scope(settings) as session:
            found = repo.find_team(session, name=team[1], tenant=team[0])
            budgets.set_budget(session, team=found, monthly=budget, currency="USD", soft_pct=None, settings=settings)
    models = {"gpt-4o-mini", "gpt-4o"}  # routed to gpt-4o-mini; gpt-4o is the baseline: a saving to pay for hedges
    warm = _run(settings, catalog, tmp_path, team, models, 30, "warm")
    run_chunk(settings, catalog, job_id=warm, lo=0, hi=30)  # the model's service times: about the fake's latency
    job_id = _run(settings, catalog, tmp_path, team, models, 30, "job")
    httpx.post(f"{fake_provider}/_fail", json={"hang_s": HANG_S, "count": 3}).raise_for_status()
    started = time.monotonic()
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=30)
    took = time.monotonic() - started
    time.sleep(max(0.0, HANG_S + 0.5 - took))  # the fake answers the stragglers, and bills them
    calls, items = ledger(settings, job_id)
    assert all(item.status == ItemStatus.DONE for item in items)
    given_up = [c for c in calls if c.error == GIVEN_UP_SENT]
    assert len(given_up) == 3, [(c.status, c.error, c.latency_ms) for c in calls]
    assert len(calls) == 33  # one hedge each, and nothing else
    for call in given_up:  # given up well before the straggler answered, let alone the timeout
        assert call.status == CallStatus.UNKNOWN and call.usage_estimated
        assert call.latency_ms is not None and call.latency_ms < HANG_S * 1000
    hedged_items = {c.item_id for c in given_up}
    for item in items:  # each item keeps one answer; a hedged one keeps its hedge's
        ok = [c for c in calls if c.item_id == item.id and c.status == CallStatus.OK]
        assert len(ok) == 1 and item.final_call_id == ok[0].id
        assert (item.id in hedged_items) == (len([c for c in calls if c.item_id == item.id]) == 2)
    bill = httpx.get(f"{fake_provider}/_bill").json()["calls"]
    assert all(c.id in bill for c in calls if c.status == CallStatus.OK)
    for call in calls:  # whatever the provider billed, given up or not, is in the ledger at no less
        if call.id in bill:
            assert call.cost_usd >= _billed_usd(catalog, call, bill)
    with session_scope(settings) as session:
        spend = repo.job_spend(session, job_id)
        period = budgets.current_period(session, team_id=repo.find_team(session, name=team[1], tenant=team[0]).id)  # type: ignore[arg-type]
    assert spend >= sum((_billed_usd(catalog, c, bill) for c in calls if c.id in bill), Decimal(0))
    if budget is not None:
        assert period is not None and period.reserved == 0
        assert period.settled == spend + _spend_of(settings, warm)


def test_a_route_that_saves_nothing_is_not_hedged(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """The route is its own baseline: no saving pays for a hedge, and the stragglers run to the timeout."""
    settings = live_settings.model_copy(update={"request_timeout_s": 2.5})
    models = {"gpt-4o-mini"}
    warm = _run(settings, catalog, tmp_path, team, models, 30, "warm")
    run_chunk(settings, catalog, job_id=warm, lo=0, hi=30)
    job_id = _run(settings, catalog, tmp_path, team, models, 10, "job")
    httpx.post(f"{fake_provider}/_fail", json={"hang_s": HANG_S, "count": 2}).raise_for_status()
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=10)
    calls, items = ledger(settings, job_id)
    assert all(item.status == ItemStatus.DONE for item in items)
    assert not [c for c in calls if c.error == GIVEN_UP_SENT]
    timed_out = [c for c in calls if c.status == CallStatus.UNKNOWN]
    assert len(timed_out) == 2 and all("sent but unanswered" in (c.error or "") for c in timed_out)
    assert len(calls) == 12  # each straggler's retry after its timeout
