"""Monthly reports on a hand-built ledger: exact totals in every format, local-month boundaries,
bad input, and the HTML page as headless Chromium renders it.

The ledger (tenants, teams, jobs, budgets, call rows and their rollups) is written in one
transaction that each test rolls back. Every expected figure below was added up by hand.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlmodel import Session

from router.errors import InputError, NotFoundError
from router.ledger import repo
from router.ledger.db import get_engine, upgrade
from router.ledger.rollup import BaselineRates, CallFacts, local_day, rollup_rows, upsert_rollups
from router.ledger.tables import BudgetPeriod, Call, CallStatus, Job, Team
from router.reports.monthly import Report, ReportRow, monthly_report
from router.reports.render import plain, render_csv, render_html, render_json, render_table
from router.settings import Settings

D = Decimal
ACME, GLOBEX = "rpt-acme", "rpt-globex"  # globex keeps its books in New York time


@dataclass(frozen=True)
class C:
    """One call of the fixture ledger."""

    at: str  # UTC
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    failed: bool = False
    cached_input_tokens: int = 0
    outcome: str | None = None  # a failed call's answer, billed and not used: refused, filtered, blocked, cut_off


# (job, tenant, team, task, model, provider, purpose, baseline rates per Mtok in/out, calls)
CALLS = [
    (
        "rpt-growth",
        ACME,
        "growth",
        "classify",
        "gpt-4o-mini",
        "openai",
        "run",
        (D("2.5"), D("10")),
        [
            C("2026-10-01T09:00:00", 1000, 10, D("0.0000012345")),  # baseline 2600/1M = 0.0026
            C("2026-10-01T10:00:00", 2000, 20, D("0.0000024690"), True, 500, "cut_off"),  # 0.00645
            C("2026-10-15T12:00:00", 1500, 15, D("0.0001000001")),  # 0.0039
        ],
    ),
    (
        "rpt-growth",
        ACME,
        "growth",
        "classify",
        "gpt-4o",
        "openai",
        "calibration",
        None,
        [
            C("2026-10-02T08:00:00", 1000, 5, D("0.0025000000")),  # calibration has no baseline
        ],
    ),
    (
        "rpt-legal",
        ACME,
        "legal",
        "summarize",
        "claude-haiku-4-5",
        "anthropic",
        "run",
        (D("3"), D("15")),
        [
            C("2026-10-10T00:00:00", 4000, 200, D("0.0050000005")),  # 0.015
            # 0.000315, last second of October
            C("2026-10-31T23:59:59", 100, 1, D("0.0000000009"), True, outcome="refused"),
            C("2026-11-01T00:00:00", 100, 1, D("0.7000000000")),  # November
            C("2026-09-30T23:59:59", 100, 1, D("0.3000000000")),  # September
        ],
    ),
    (
        "rpt-ops",
        GLOBEX,
        "ops",
        "classify",
        "gpt-4o-mini",
        "openai",
        "run",
        (D("2.5"), D("10")),
        [
            C("2026-11-01T03:59:59", 10, 1, D("0.0000000123")),  # Oct 31 23:59:59 EDT: October. 0.000035
            C("2026-11-01T04:00:00", 20, 2, D("0.0000000456")),  # Nov 1 00:00:00 EDT: November
            C("2026-10-01T03:59:59", 30, 3, D("0.0000000789")),  # Sep 30 23:59:59 EDT: September
            C("2026-10-01T04:00:00", 40, 4, D("0.0000001000")),  # Oct 1 00:00:00 EDT: October. 0.00014
        ],
    ),
]
# (tenant, team, period_start, limit, currency, settled, reserved)
BUDGETS = [
    (ACME, "growth", date(2026, 10, 1), D("10"), "USD", D("0.0026037036"), D("1.5")),
    (ACME, "legal", date(2026, 10, 1), D("5"), "EUR", D("4.5"), D("0.25")),
    (GLOBEX, "ops", date(2026, 10, 1), D("1"), "USD", D("0.0000001123"), D("0")),
    (ACME, "growth", date(2026, 11, 1), D("10"), "USD", D("0.7"), D("0")),  # another month: never shown
]

# Growth's failed call was cut off by the output cap, legal's refused: their own outcome, inside failed.
CUT_OFF = {"cut_off_calls": 1, "cut_off_spend_usd": D("0.0000024690")}
REFUSED = {"refused_calls": 1, "refused_spend_usd": D("0.0000000009")}
GROWTH = ReportRow("growth", D("0.0026037036"), 4, 1, 5500, 500, 50, D("0.0000024690"), D("0.0025"), D("0.01295"))
GROWTH = replace(GROWTH, **CUT_OFF)
LEGAL = ReportRow("legal", D("0.0050000014"), 2, 1, 4100, 0, 201, D("0.0000000009"), D("0"), D("0.015315"))
LEGAL = replace(LEGAL, **REFUSED)
OPS = ReportRow("ops", D("0.0000001123"), 2, 0, 50, 0, 5, D("0"), D("0"), D("0.000175"))
ACME_TOTAL = ReportRow("TOTAL", D("0.0076037050"), 6, 2, 9600, 500, 251, D("0.0000024699"), D("0.0025"), D("0.028265"))
ACME_TOTAL = replace(ACME_TOTAL, **CUT_OFF, **REFUSED)
ALL_TOTAL = ReportRow("TOTAL", D("0.0076038173"), 8, 2, 9650, 500, 256, D("0.0000024699"), D("0.0025"), D("0.02844"))
ALL_TOTAL = replace(ALL_TOTAL, **CUT_OFF, **REFUSED)


def build_ledger(session: Session) -> None:
    """Tenants, teams, jobs, budget periods, call rows and their rollups, as the engine writes them."""
    teams: dict[tuple[str, str], Team] = {}
    for tenant, team in sorted({(c[1], c[2]) for c in CALLS}):
        teams[tenant, team] = repo.ensure_team(session, tenant=tenant, team=team)
    ids = {key: team.id for key, team in teams.items() if team.id is not None}
    zones = {ACME: "UTC", GLOBEX: "America/New_York"}
    for name, zone in zones.items():
        owner = repo.get_tenant(session, name=name)
        owner.timezone = zone
        session.add(owner)
    for job_id, tenant, team, task, *_ in CALLS:
        if session.get(Job, job_id) is None:
            session.add(
                Job(
                    id=job_id,
                    tenant_id=teams[tenant, team].tenant_id,
                    team_id=ids[tenant, team],
                    task=task,
                    min_quality=0.9,
                )
            )
            session.flush()
    n = 0
    for job_id, tenant, team, task, model, provider, purpose, rates, calls in CALLS:
        row = teams[tenant, team]
        assert row.id is not None
        facts = []
        for call in calls:
            n += 1
            started = datetime.fromisoformat(call.at).replace(tzinfo=UTC)
            session.add(
                Call(
                    id=f"rpt-call-{n}",
                    job_id=job_id,
                    item_id=n,
                    tenant_id=row.tenant_id,
                    team_id=row.id,
                    model_id=model,
                    provider=provider,
                    purpose=purpose,
                    status=CallStatus.ERROR if call.failed else CallStatus.OK,
                    input_tokens=call.input_tokens,
                    cached_input_tokens=call.cached_input_tokens,
                    output_tokens=call.output_tokens,
                    cost_usd=call.cost_usd,
                    started_at=started,
                )
            )
            facts.append(
                CallFacts(
                    started,
                    call.failed,
                    call.input_tokens,
                    call.cached_input_tokens,
                    call.output_tokens,
                    call.cost_usd,
                    outcome=call.outcome,
                )
            )
        session.flush()
        upsert_rollups(
            session,
            rollup_rows(
                facts,
                tenant_id=row.tenant_id,
                team_id=row.id,
                job_id=job_id,
                model_id=model,
                provider=provider,
                task=task,
                purpose=purpose,
                timezone=zones[tenant],
                baseline_rates=BaselineRates(*rates) if rates else None,
            ),
        )
    for tenant, team, start, limit, currency, settled, reserved in BUDGETS:
        session.add(
            BudgetPeriod(
                team_id=ids[tenant, team],
                period_start=start,
                limit_amount=limit,
                currency=currency,
                settled=settled,
                reserved=reserved,
            )
        )
    session.flush()


@pytest.fixture
def session(live_settings: Settings) -> Iterator[Session]:
    """The fixture ledger on Postgres, in a transaction rolled back after the test."""
    with Session(get_engine(live_settings)) as db:
        build_ledger(db)
        yield db
        db.rollback()


def _keys(rows: tuple[ReportRow, ...]) -> dict[str, Decimal]:
    return {r.key: r.spend_usd for r in rows}


# -- the figures -----------------------------------------------------------------------------------


def test_team_report_sums_exactly(session: Session) -> None:
    report = monthly_report(session, month="2026-10", tenant=ACME, by="team")
    assert report.rows == (LEGAL, GROWTH)  # highest spend first
    assert report.totals == ACME_TOTAL
    # Savings are the run items' against their baseline; calibration (growth's $0.0025) is its own
    # figure. All in, calibration included, is the net saving (what `savings_usd` was before).
    assert report.totals.net_savings_usd == D("0.0206612950")
    assert GROWTH.net_savings_usd == D("0.0103462964")
    assert report.totals.savings_usd == D("0.0231612950") == D("0.028265") - (D("0.0076037050") - D("0.0025"))
    assert GROWTH.savings_usd == D("0.0128462964") and GROWTH.run_spend_usd == D("0.0001037036")
    assert report.totals.savings_pct == D("0.0231612950") * 100 / D("0.028265")
    assert (report.first_day, report.last_day) == (date(2026, 10, 1), date(2026, 10, 31))


def test_every_grouping_adds_up_to_the_same_total(session: Session) -> None:
    expected = {
        "team": {
            f"{ACME}/legal": D("0.0050000014"),
            f"{ACME}/growth": D("0.0026037036"),
            f"{GLOBEX}/ops": D("0.0000001123"),
        },
        "model": {"claude-haiku-4-5": D("0.0050000014"), "gpt-4o": D("0.0025"), "gpt-4o-mini": D("0.0001038159")},
        "provider": {"anthropic": D("0.0050000014"), "openai": D("0.0026038159")},
        "task": {"summarize": D("0.0050000014"), "classify": D("0.0026038159")},
        "job": {"rpt-legal": D("0.0050000014"), "rpt-growth": D("0.0026037036"), "rpt-ops": D("0.0000001123")},
        "day": {
            "2026-10-01": D("0.0000038035"),
            "2026-10-02": D("0.0025"),
            "2026-10-10": D("0.0050000005"),
            "2026-10-15": D("0.0001000001"),
            "2026-10-31": D("0.0000000132"),
        },
    }
    for by, spend in expected.items():
        report = monthly_report(session, month="2026-10", by=by)
        assert _keys(report.rows) == spend, by
        assert list(_keys(report.rows)) == (sorted(spend) if by == "day" else list(spend)), by
        assert report.totals == ALL_TOTAL, by
        assert sum((r.spend_usd for r in report.rows), D(0)) == ALL_TOTAL.spend_usd


def test_series_are_there_whatever_the_grouping(session: Session) -> None:
    report = monthly_report(session, month="2026-10", by="provider")
    assert [r.key for r in report.spend_by_day] == [f"2026-10-{d:02}" for d in range(1, 32)]
    assert report.spend_by_day[0].spend_usd == D("0.0000038035") and report.spend_by_day[2].spend_usd == 0
    assert sum((r.spend_usd for r in report.spend_by_day), D(0)) == ALL_TOTAL.spend_usd
    assert _keys(report.spend_by_team) == {
        f"{ACME}/legal": D("0.0050000014"),
        f"{ACME}/growth": D("0.0026037036"),
        f"{GLOBEX}/ops": D("0.0000001123"),
    }
    assert [r.key for r in report.spend_by_model] == ["claude-haiku-4-5", "gpt-4o", "gpt-4o-mini"]


def test_budgets_of_the_month_only(session: Session) -> None:
    report = monthly_report(session, month="2026-10")
    assert [(b.tenant, b.team, b.currency, b.limit, b.settled, b.reserved) for b in report.budgets] == [
        (ACME, "growth", "USD", D("10"), D("0.0026037036"), D("1.5")),
        (ACME, "legal", "EUR", D("5"), D("4.5"), D("0.25")),
        (GLOBEX, "ops", "USD", D("1"), D("0.0000001123"), D("0")),
    ]
    assert [b.used_pct for b in report.budgets] == [D("0.026037036"), D("90"), D("0.00001123")]
    assert [b.team for b in monthly_report(session, month="2026-10", tenant=GLOBEX).budgets] == ["ops"]


# -- months are local --------------------------------------------------------------------------------


def test_the_last_second_of_october_in_new_york_is_october(session: Session) -> None:
    last_second = datetime(2026, 11, 1, 3, 59, 59, tzinfo=UTC)  # 23:59:59 EDT on Oct 31
    assert local_day(last_second, "America/New_York") == date(2026, 10, 31)
    october = monthly_report(session, month="2026-10", tenant=GLOBEX, by="day")
    assert _keys(october.rows) == {"2026-10-01": D("0.0000001000"), "2026-10-31": D("0.0000000123")}
    assert october.totals == replace(OPS, key="TOTAL")
    assert monthly_report(session, month="2026-11", tenant=GLOBEX).totals.spend_usd == D("0.0000000456")
    assert monthly_report(session, month="2026-09", tenant=GLOBEX).totals.spend_usd == D("0.0000000789")
    # The UTC tenant's calls one second either side of midnight land in their own months.
    assert monthly_report(session, month="2026-11", tenant=ACME).totals.spend_usd == D("0.7")
    assert monthly_report(session, month="2026-09", tenant=ACME).totals.spend_usd == D("0.3")


def test_an_empty_month_is_zeros(session: Session) -> None:
    report = monthly_report(session, month="2031-02", tenant=ACME)
    assert report.rows == () and report.totals == ReportRow("TOTAL") and report.budgets == ()
    assert len(report.spend_by_day) == 28 and report.totals.savings_pct is None
    assert "No spend recorded" in render_html(report)


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "nov", "2026-1", "2026/10", "2026-10-01", "", "0000-10"])
def test_a_malformed_month_is_refused(session: Session, month: str) -> None:
    with pytest.raises(InputError, match="YYYY-MM") as error:
        monthly_report(session, month=month)
    assert error.value.field == "--month"


def test_an_unknown_grouping_is_refused(session: Session) -> None:
    with pytest.raises(InputError, match="team, model, provider, task, job, day") as error:
        monthly_report(session, month="2026-10", by="week")
    assert error.value.field == "--by"


def test_an_unknown_tenant_is_refused(session: Session) -> None:
    with pytest.raises(NotFoundError, match="no-such-tenant"):
        monthly_report(session, month="2026-10", tenant="no-such-tenant")


# -- formats ---------------------------------------------------------------------------------------


def test_csv_has_every_group_and_the_exact_total(session: Session) -> None:
    rows = list(csv.reader(io.StringIO(render_csv(monthly_report(session, month="2026-10", tenant=ACME)))))
    assert rows[0] == [
        "team",
        "spend_usd",
        "calls",
        "failed_calls",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "failed_spend_usd",
        "calibration_spend_usd",
        "baseline_usd",
        "savings_usd",
        "savings_pct",
        "simulated_calls",
        "drift_spend_usd",
        "run_spend_usd",
        "net_savings_usd",
        "refused_calls",
        "refused_spend_usd",
        "filtered_calls",
        "filtered_spend_usd",
        "blocked_calls",
        "blocked_spend_usd",
        "cut_off_calls",
        "cut_off_spend_usd",
        "batch_calls",
        "batch_spend_usd",
        "routing_savings_usd",
        "batch_savings_usd",
    ]
    assert [r[0] for r in rows[1:]] == ["legal", "growth", "TOTAL"]
    for row, want in zip(rows[1:], (LEGAL, GROWTH, ACME_TOTAL), strict=True):
        assert [D(x) for x in row[1:11]] == [
            want.spend_usd,
            want.calls,
            want.failed_calls,
            want.input_tokens,
            want.cached_input_tokens,
            want.output_tokens,
            want.failed_spend_usd,
            want.calibration_spend_usd,
            want.baseline_usd,
            want.savings_usd,
        ]
    assert rows[-1][1] == "0.0076037050" and rows[-1][10] == "0.0231612950"  # full precision, as stored
    assert rows[-1][11] == "81.94"  # 0.023161295 / 0.028265, a display ratio
    assert rows[-1][13:16] == ["0.0000000000", "0.0051037050", "0.0206612950"]  # drift, run, net (all in)


def test_json_has_rows_totals_budgets_and_series_as_exact_strings(session: Session) -> None:
    doc = json.loads(render_json(monthly_report(session, month="2026-10", by="model")))
    assert doc["month"] == "2026-10" and doc["tenant"] is None and doc["by"] == "model"
    assert {r["key"]: D(r["spend_usd"]) for r in doc["rows"]} == {
        "claude-haiku-4-5": D("0.0050000014"),
        "gpt-4o": D("0.0025"),
        "gpt-4o-mini": D("0.0001038159"),
    }
    totals = doc["totals"]
    assert totals["spend_usd"] == "0.0076038173" and D(totals["baseline_usd"]) == D("0.02844")
    assert D(totals["savings_usd"]) == D("0.0233361827") and totals["calls"] == 8
    assert D(totals["net_savings_usd"]) == D("0.0208361827")  # all in, calibration included
    assert D(totals["failed_spend_usd"]) == D("0.0000024699") and D(totals["calibration_spend_usd"]) == D("0.0025")
    assert [(b["team"], b["currency"], D(b["settled"])) for b in doc["budgets"]] == [
        ("growth", "USD", D("0.0026037036")),
        ("legal", "EUR", D("4.5")),
        ("ops", "USD", D("0.0000001123")),
    ]
    series = doc["series"]
    assert len(series["spend_by_day"]) == 31 and series["spend_by_day"][30] == {
        "day": "2026-10-31",
        "spend_usd": "0.0000000132",
        "calls": 2,
    }
    assert [s["team"] for s in series["spend_by_team"]] == [f"{ACME}/legal", f"{ACME}/growth", f"{GLOBEX}/ops"]
    assert {s["model"] for s in series["spend_by_model"]} == {"claude-haiku-4-5", "gpt-4o", "gpt-4o-mini"}


def test_table_shows_groups_and_total(session: Session) -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render_table(monthly_report(session, month="2026-10", tenant=ACME)))
    out = console.export_text()
    assert "legal" in out and "growth" in out and "TOTAL" in out
    assert "$0.0076" in out and "9,600" in out and "81.94%" in out


def test_refused_and_cut_off_answers_are_their_own_outcome_in_every_format(session: Session) -> None:
    """Answers billed but not used because of how they ended: counted and costed per group, exactly,
    apart from (and inside) the failed calls."""
    report = monthly_report(session, month="2026-10", tenant=ACME)
    rows = {r[0]: r for r in csv.reader(io.StringIO(render_csv(report)))}
    header = rows["team"]
    cell = {key: dict(zip(header, row, strict=True)) for key, row in rows.items()}
    assert cell["growth"]["cut_off_calls"] == "1" and cell["growth"]["cut_off_spend_usd"] == "0.0000024690"
    assert cell["growth"]["refused_calls"] == "0" and cell["growth"]["refused_spend_usd"] == "0.0000000000"
    assert cell["legal"]["refused_calls"] == "1" and cell["legal"]["refused_spend_usd"] == "0.0000000009"
    assert [cell["TOTAL"][f"{o}_calls"] for o in ("refused", "filtered", "blocked", "cut_off")] == ["1", "0", "0", "1"]
    doc = json.loads(render_json(report))
    legal = next(r for r in doc["rows"] if r["key"] == "legal")
    assert (legal["refused_calls"], legal["refused_spend_usd"], legal["cut_off_calls"]) == (1, "0.0000000009", 0)
    assert (doc["totals"]["cut_off_calls"], doc["totals"]["cut_off_spend_usd"]) == (1, "0.0000024690")
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render_table(report))
    out = console.export_text()
    assert "Answers billed but not used, by team" in out and "1 ($0.0000025)" in out and "1 ($0.0000000009)" in out
    page = render_html(report)
    assert "Answers billed but not used, by team" in page and "cut off 1" in page and "refused 1" in page
    # A month with none says so, and the table shows no third table.
    quiet = monthly_report(session, month="2026-10", tenant=GLOBEX)
    console = Console(record=True, width=200)
    console.print(render_table(quiet))
    assert "not used" not in console.export_text()
    assert "No answer was refused, filtered, blocked or cut off this month." in render_html(quiet)


def _html(session: Session) -> tuple[Report, str]:
    report = monthly_report(session, month="2026-10", by="team")
    return report, render_html(report)


def test_html_is_one_self_contained_page_with_the_totals(session: Session) -> None:
    report, page = _html(session)
    assert page.startswith("<!doctype html>") and page.count("<svg") == 3
    assert not re.search(r"<script|<link|<img|@import|url\(|src=|href=|https?:", page, re.I)  # nothing to fetch
    for exact in ("0.0076038173", "0.0000024699", "0.0025000000", "0.0284400000", "0.0233361827"):
        assert exact in page, exact
    assert "$0.0076" in page and "8</div>" in page  # the summary cards: spend and calls
    assert page.count('class="bar"') == 5  # one bar per day with spend
    assert f"{ACME}/legal" in page and "claude-haiku-4-5" in page and "EUR" in page
    assert plain(report.totals.spend_usd) == "0.0076038173"


def test_sqlite_reports_the_same_exact_figures(tmp_path: Path, session: Session) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}", _env_file=None)  # type: ignore[call-arg]
    upgrade(settings)
    with Session(get_engine(settings)) as lite:
        build_ledger(lite)
        for by in ("team", "model", "day"):
            on_pg = monthly_report(session, month="2026-10", by=by)
            on_sqlite = monthly_report(lite, month="2026-10", by=by)
            assert on_sqlite == on_pg, by
            assert render_csv(on_sqlite) == render_csv(on_pg) and render_json(on_sqlite) == render_json(on_pg), by
        assert monthly_report(lite, month="2026-10", tenant=ACME).totals == ACME_TOTAL


# -- the page in a browser -------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_html_renders_in_headless_chromium(session: Session, tmp_path: Path) -> None:
    chromium = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `apt-get install chromium` (CI installs it in .ci/run)")
    _, page = _html(session)
    path = tmp_path / "report.html"
    path.write_text(page)
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "r.png"
    # A cold Chromium start takes a few seconds on a small CI box; a minute means it is stuck.
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
        check=True,
        capture_output=True,
        timeout=60,
    )
    dom = subprocess.run(
        [*base, "--dump-dom", path.as_uri()], check=True, capture_output=True, timeout=60, text=True
    ).stdout
    assert dom.count("<svg") == 3 and dom.count('class="bar"') == 5
    assert "0.0076038173" in dom and "Spend per day" in dom and "Spend per model" in dom
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 1600)  # IHDR: width, height
    assert len(data) > 30_000, len(data)  # a blank page of that size compresses to a few kB
