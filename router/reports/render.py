"""How a monthly report is shown: a terminal table, CSV, JSON, and one self-contained HTML page.
Rendering only, no I/O.

CSV and JSON carry every amount at full precision (plain decimal strings, never floats). The table
and the page round for reading, and only there; the page shows the exact figure on hover.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import date
from decimal import ROUND_CEILING, Context, Decimal
from html import escape
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

from router.ledger.types import MONEY_SCALE
from router.reports.monthly import BudgetRow, Report, ReportRow

COLUMNS = (
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
    # Added after the first release: appended, so the columns above keep their places.
    "drift_spend_usd",
    "run_spend_usd",
    "net_savings_usd",
    # Answers billed but not used because of how they ended, each with its spend (appended too).
    "refused_calls",
    "refused_spend_usd",
    "filtered_calls",
    "filtered_spend_usd",
    "blocked_calls",
    "blocked_spend_usd",
    "cut_off_calls",
    "cut_off_spend_usd",
    # Savings by lever (appended): the providers' batch lines and what each lever saved.
    "batch_calls",
    "batch_spend_usd",
    "routing_savings_usd",
    "batch_savings_usd",
)
# Those outcomes (router.ledger.rollup.OUTCOMES) as the table and the page name them.
OUTCOME_NAMES = (("refused", "refused"), ("filtered", "filtered"), ("blocked", "blocked"), ("cut_off", "cut off"))
LEDGER_PLACES = Decimal(1).scaleb(-MONEY_SCALE)
WIDE = Context(prec=60)  # padding a sum to 10 places must never run out of digits (the default is 28)
PCT = Decimal("0.01")  # percentages are ratios, not money: two places are plenty
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


# -- numbers for reading: the one place money is formatted (the CLI uses these too) ----------------
#
# Two kinds of text, and only these: `plain` is the exact amount, for files and tooltips (CSV, JSON,
# the page's hover text); `usd` is the amount for reading, rounded here and only here. Neither ever
# prints an exponent ('5E+2', '1.2E-9'), and neither depends on how the backend handed the Decimal
# over: SQLite keeps money as text ('0.00001590'), Postgres as NUMERIC(20, 10) ('0.0000159000'),
# and both print the same digits.


def _decimal(amount: Decimal | str | int) -> Decimal:
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    return value.copy_abs() if value.is_zero() else value  # never '-0'


def plain(amount: Decimal | str | int) -> str:
    """The exact amount as a plain decimal string ('0.0000000012', never '1.2E-9'), with exactly the
    ledger's 10 places (more only where the amount needs them), so every backend prints the same text
    for the same amount; padded with zeros, never rounded."""
    value = _decimal(amount)
    if value.as_tuple().exponent < -MONEY_SCALE:  # type: ignore[operator]
        value = value.normalize(WIDE)  # zeros past the 10th place are the text's, not the amount's
    if value.as_tuple().exponent > -MONEY_SCALE:  # type: ignore[operator]
        value = value.quantize(LEDGER_PLACES, context=WIDE)
    return format(value, "f")


def usd_exact(amount: Decimal | str | int, *, currency: str = "USD") -> str:
    """`plain` with its unit, for hover text: $0.0076038173, -$0.0016000000, 4.5000000000 EUR."""
    value = _decimal(amount)
    sign, digits = ("-" if value < 0 else ""), plain(abs(value))
    return f"{sign}${digits}" if currency == "USD" else f"{sign}{digits} {currency}"


def exact(amount: Decimal | str | int) -> str:
    """The exact amount in its fewest digits, never an exponent: 500 (not 5E+2), 499.99, 0.00000015.
    For what a person typed or a price sheet says (limits, prices per million tokens)."""
    value = _decimal(amount)
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def usd(amount: Decimal | str | int | None, places: int | None = None, *, currency: str = "USD") -> str:
    """Money for reading: rounded here, and only here.

    `places` None: cents from 1 up ($1,234.50); below, two significant digits, since calls cost
    fractions of a cent ($0.0000159 reads $0.000016). `places` n: n places ($0.012000), and an amount
    too small to show two significant digits in them keeps two ($0.0000012, not $0.000001 or $0.000000). Always plain
    decimals with thousands separators, the sign in front (-$0.0016). USD as `$x`, another
    currency as `x EUR`. None (no figure) reads '-'.
    """
    if amount is None:
        return "-"
    value = _decimal(amount)
    size, sign = abs(value), "-" if value < 0 else ""
    if size == 0:
        digits = "0" if places is None else f"{size:.{places}f}"
    elif size < (Decimal(1) if places is None else Decimal(1).scaleb(1 - places)):
        # Two significant digits, but at least cents; a zero the rounding left at the end goes
        # (0.00000000090 reads 0.0000000009), and so the text depends on the value only.
        digits = f"{size:.{max(2, 1 - size.adjusted())}f}"
        while digits.endswith("0") and len(digits.split(".")[1]) > 2:
            digits = digits[:-1]
    else:
        digits = f"{size:,.{2 if places is None else places}f}"
    return f"{sign}${digits}" if currency == "USD" else f"{sign}{digits} {currency}"


def short_money(amount: Decimal) -> str:
    """Axis labels, which are round numbers: $0.0005, $20, $1.5k, $3M."""
    for unit, scale in (("M", Decimal(10) ** 6), ("k", Decimal(1000))):
        if abs(amount) >= scale:
            return f"${exact(amount / scale)}{unit}"
    return f"${exact(amount)}"


def count(n: int) -> str:
    """Token counts for the summary: 9.6k, 250M."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{Decimal(n) / scale:.{1 if n < 100 * scale else 0}f}{unit}"
    return f"{n:,}"


def pct(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.quantize(PCT)}%"


# Savings compare with a baseline; a row without one (calibration only, or a cascade's first model
# by model) has no savings, not negative ones: these cells are empty in CSV and null in JSON.
COMPARED = ("savings_usd", "savings_pct", "net_savings_usd", "routing_savings_usd")


def _cell(row: ReportRow, column: str) -> Any:
    value = getattr(row, column)
    if column in COMPARED and not row.baseline_usd:
        return ""
    if column == "savings_pct":
        return str(value.quantize(PCT))
    return plain(value) if isinstance(value, Decimal) else value


def _title(report: Report) -> str:
    first = report.first_day
    who = f"tenant {report.tenant}" if report.tenant else "all tenants"
    title = f"Spend, {MONTHS[first.month - 1]} {first.year}, {who}, by {report.by}"
    return title + _simulated_note(report)


def _simulated_note(report: Report) -> str:
    """Sandbox spend is labelled wherever it shows."""
    n = report.totals.simulated_calls
    if not n:
        return ""
    share = "all" if n == report.totals.calls else f"{n:,} of {report.totals.calls:,}"
    return f" (SIMULATED: {share} calls answered by the sandbox)"


# -- terminal, CSV, JSON ---------------------------------------------------------------------------

# Rich cuts a cell that does not fit to "$0.00…" unless told otherwise: every column here folds
# instead (a figure too wide for its column goes on two lines), so no cell ever hides its figure.
FOLD: dict[str, Any] = {"overflow": "fold"}


def render_table(report: Report) -> RenderableType:
    """Two tables, rounded for reading: what was spent (grouped rows and a TOTAL row), then what the
    run items saved against each job's baseline model, with calibration and drift checks apart; and a
    third when some answers were billed but not used (refused, filtered, blocked, cut off)."""
    tables: list[RenderableType] = [_spend_table(report), _savings_table(report)]
    if any_unused(report.totals):
        tables.append(_outcomes_table(report))
    return Group(*tables)


def any_unused(row: ReportRow) -> bool:
    """Whether any answer of `row` was billed but not used because of how it ended."""
    return any(getattr(row, f"{name}_calls") for name, _ in OUTCOME_NAMES)


def _outcome_cell(row: ReportRow, name: str) -> str:
    calls, spend = getattr(row, f"{name}_calls"), getattr(row, f"{name}_spend_usd")
    return f"{calls:,} ({usd(spend)})" if calls else "-"


def _outcomes_table(report: Report) -> Table:
    table = Table(
        title=f"Answers billed but not used, by {report.by}: calls (their spend)",
        title_justify="left",
        caption="Counted in failed and failed spend above; never tried again on the same model.",
        caption_justify="left",
    )
    table.add_column(report.by, **FOLD)
    for _, label in OUTCOME_NAMES:
        table.add_column(label, justify="right", **FOLD)
    for row in _rows(report):
        table.add_row(row.key, *(_outcome_cell(row, name) for name, _ in OUTCOME_NAMES), **_row_style(report, row))
    return table


def _rows(report: Report) -> tuple[ReportRow, ...]:
    return (*report.rows, report.totals)


def _row_style(report: Report, row: ReportRow) -> dict[str, Any]:
    return {
        "style": "bold" if row is report.totals else None,
        "end_section": row is report.rows[-1] if report.rows else False,
    }


def _spend_table(report: Report) -> Table:
    table = Table(title=_title(report), title_justify="left")
    table.add_column(report.by, **FOLD)  # the key is what a reader looks for: folded, never cut
    for name in ("spend", "calls", "failed", "tokens in", "cached", "tokens out", "failed spend"):
        table.add_column(name, justify="right", **FOLD)
    for row in _rows(report):
        table.add_row(
            row.key,
            usd(row.spend_usd),
            f"{row.calls:,}",
            f"{row.failed_calls:,}",
            f"{row.input_tokens:,}",
            f"{row.cached_input_tokens:,}",
            f"{row.output_tokens:,}",
            usd(row.failed_spend_usd),
            **_row_style(report, row),
        )
    return table


def _savings_table(report: Report) -> Table:
    table = Table(
        title=f"Savings of the run items against each job's baseline model, by {report.by}",
        title_justify="left",
        caption=savings_note(report.totals),
        caption_justify="left",
    )
    table.add_column(report.by, **FOLD)
    for name in ("run spend", "baseline", "saved", "saved %", "calibration", "drift checks"):
        table.add_column(name, justify="right", **FOLD)
    for row in _rows(report):
        table.add_row(
            row.key,
            usd(row.run_spend_usd),
            usd(row.baseline_usd) if row.baseline_usd else "-",
            usd(row.savings_usd) if row.baseline_usd else "-",
            pct(row.savings_pct),
            usd(row.calibration_spend_usd),
            usd(row.drift_spend_usd),
            **_row_style(report, row),
        )
    return table


def savings_note(totals: ReportRow) -> str:
    """What the savings are against, and the all-in figure, in words (the table's caption, the page's footnote)."""
    if not totals.baseline_usd:
        return "No run items to compare with a baseline model this month."
    checks = (
        f" Calibration ({usd(totals.calibration_spend_usd)}) and drift checks ({usd(totals.drift_spend_usd)}) "
        "choose and watch the route: they are listed apart, not taken from the savings."
        if totals.checks_spend_usd
        else ""
    )
    levers = (
        f" By lever: routing saved {usd(totals.routing_savings_usd)} (the models chosen, at the standard price) "
        f"and the providers' batch discount {usd(totals.batch_savings_usd)} ({totals.batch_calls:,} batch lines)."
        if totals.batch_calls
        else ""
    )
    return (
        "saved: the run items against the same items on each job's baseline model (the most expensive model "
        f"that met the job's constraints).{levers}{checks} All in: {usd(totals.spend_usd)} spent against "
        f"{usd(totals.baseline_usd)} on the baselines, {compared(totals.spend_usd, totals.baseline_usd)}."
    )


def compared(spent: Decimal, baseline: Decimal) -> str:
    """'83% less than the baseline', or '3.1x the baseline' where more was spent (a small job's
    calibration can cost more than the job saves)."""
    if spent <= baseline:
        return f"{1 - spent / baseline:.0%} less than the baseline"
    return f"{spent / baseline:.1f}x the baseline"


def render_budget_table(report: Report) -> Table:
    """The month's budget periods, in their own currencies."""
    table = Table(title=f"Budgets, {report.month}", title_justify="left")
    for name in ("tenant", "team", "limit", "settled", "reserved", "used"):
        table.add_column(name, justify="left" if name in ("tenant", "team") else "right", **FOLD)
    for budget in report.budgets:
        table.add_row(
            budget.tenant,
            budget.team,
            usd(budget.limit, currency=budget.currency),
            usd(budget.settled, currency=budget.currency),
            usd(budget.reserved, currency=budget.currency),
            pct(budget.used_pct) + (" (over)" if budget.used_pct is not None and budget.used_pct > 100 else ""),
        )
    return table


# A spreadsheet runs a cell that begins with one of these as a formula (=HYPERLINK(...) in a team
# name); OWASP's CSV injection advice is to make such a cell text with a leading single quote.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell made safe for spreadsheets: one that begins like a formula gets a leading quote."""
    return "'" + value if value.startswith(FORMULA_START) else value


def render_csv(report: Report) -> str:
    """A header, one row per group, then TOTAL; amounts at full precision.

    Text cells (the group key: team, model, provider, task, job names) that begin with = + - @, a tab
    or a carriage return are neutralized with a leading single quote. Numbers are left as they are,
    so that they stay numbers: every number cell is written here from a Decimal or an int (a plain
    decimal such as -0.0016000000, never text from outside), and a leading minus is its sign.
    """
    lines = [csv_line((csv_text(report.by), *COLUMNS))]
    lines += [csv_line((csv_text(row.key), *(_cell(row, c) for c in COLUMNS))) for row in _rows(report)]
    return "".join(lines)


def csv_line(cells: Sequence[Any]) -> str:
    """One CSV line, ending in \\n. The csv module quotes a cell holding a carriage return only when
    the line terminator has one (Python 3.11), and a bare CR starts a new row in some spreadsheets:
    so the line is written with \\r\\n (every CR or LF inside a cell quoted), then ended with \\n."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue().removesuffix("\r\n") + "\n"


def render_json(report: Report) -> str:
    """Everything in the report; amounts as full-precision decimal strings."""

    def row(r: ReportRow) -> dict[str, Any]:
        return {"key": r.key, **{c: _cell(r, c) if c not in COMPARED else _cell(r, c) or None for c in COLUMNS}}

    def budget(b: BudgetRow) -> dict[str, Any]:
        return {
            "tenant": b.tenant,
            "team": b.team,
            "currency": b.currency,
            "limit": plain(b.limit),
            "settled": plain(b.settled),
            "reserved": plain(b.reserved),
            "used_pct": None if b.used_pct is None else str(b.used_pct.quantize(PCT)),
        }

    doc = {
        "month": report.month,
        "tenant": report.tenant,
        "by": report.by,
        "first_day": report.first_day.isoformat(),
        "last_day": report.last_day.isoformat(),
        "rows": [row(r) for r in report.rows],
        "totals": row(report.totals),
        "budgets": [budget(b) for b in report.budgets],
        "series": {
            "spend_by_day": [
                {"day": r.key, "spend_usd": plain(r.spend_usd), "calls": r.calls} for r in report.spend_by_day
            ],
            "spend_by_team": [
                {"team": r.key, "spend_usd": plain(r.spend_usd), "calls": r.calls} for r in report.spend_by_team
            ],
            "spend_by_model": [
                {"model": r.key, "spend_usd": plain(r.spend_usd), "calls": r.calls} for r in report.spend_by_model
            ],
        },
    }
    return json.dumps(doc, indent=2)


# -- HTML ------------------------------------------------------------------------------------------


def render_html(report: Report) -> str:
    """One self-contained page (no scripts, fonts or requests): summary, inline SVG charts, tables."""
    t = report.totals
    failed_share = f"{Decimal(t.failed_calls * 100) / t.calls:.1f}% of calls" if t.calls else "no calls"
    cards = "".join(
        (
            _card("Spend", usd(t.spend_usd), f"exact {usd_exact(t.spend_usd)}", t.spend_usd, accent=True),
            _card("Calls", f"{t.calls:,}", f"{t.failed_calls:,} failed ({failed_share})"),
            _card(
                "Tokens",
                count(t.input_tokens + t.output_tokens),
                f"in {count(t.input_tokens)} &middot; cached {count(t.cached_input_tokens)} &middot; out {count(t.output_tokens)}",
            ),
            _card(
                "Run items saved vs baseline model",
                usd(t.savings_usd) if t.baseline_usd else "-",
                f"the run items cost {usd(t.run_spend_usd)} against {usd(t.baseline_usd)} on each job's "
                f"baseline model: {pct(t.savings_pct)} saved"
                if t.baseline_usd
                else "no run items to compare with a baseline model",
                t.savings_usd if t.baseline_usd else None,
                good=(t.savings_usd >= 0) if t.baseline_usd else None,
            ),
            _card(
                "Calibration and drift checks",
                usd(t.checks_spend_usd),
                f"calibration {usd(t.calibration_spend_usd)} &middot; drift {usd(t.drift_spend_usd)}; "
                "choosing and watching the route, not taken from the savings"
                + (
                    f"; all in: {compared(t.spend_usd, t.baseline_usd)}"
                    if t.baseline_usd and t.checks_spend_usd
                    else ""
                ),
                t.checks_spend_usd,
            ),
            _card(
                "Failed-call spend",
                usd(t.failed_spend_usd),
                f"exact {usd_exact(t.failed_spend_usd)}"
                + "".join(
                    f" &middot; {label} {getattr(t, f'{name}_calls'):,}"
                    for name, label in OUTCOME_NAMES
                    if getattr(t, f"{name}_calls")
                ),
                t.failed_spend_usd,
            ),
        )
    )
    first = report.first_day
    heading = f"{MONTHS[first.month - 1]} {first.year}"
    who = f"Tenant <b>{escape(report.tenant)}</b>" if report.tenant else "All tenants"
    return _PAGE.format(
        title=escape(_title(report)),
        heading=heading,
        who=who,
        cards=cards,
        simulated=f' &middot; <span style="background:#facc15;color:#111;padding:0 .4em">{escape(_simulated_note(report).strip(" ()"))}</span>'
        if report.totals.simulated_calls
        else "",
        period=f"{first.isoformat()} to {report.last_day.isoformat()}",
        day_chart=day_chart(report.spend_by_day),
        team_chart=bar_chart(report.spend_by_team, color="#0d9488"),
        model_chart=bar_chart(report.spend_by_model, color="#7c3aed"),
        by=escape(report.by),
        table=_group_table(report),
        outcomes=_outcomes_html(report),
        budgets=_budget_table(report.budgets),
        savings=escape(savings_note(t)),
    )


def _card(
    label: str, value: str, note: str, exact: Decimal | None = None, *, accent: bool = False, good: bool | None = None
) -> str:
    tip = f' title="{usd_exact(exact)} exactly"' if exact is not None else ""
    tone = " accent" if accent else (" good" if good else " bad" if good is False else "")
    return (
        f'<div class="card{tone}"><div class="label">{label}</div>'
        f'<div class="value"{tip}>{value}</div><div class="note">{note}</div></div>'
    )


def _nice_step(top: Decimal, ticks: int = 4) -> Decimal:
    """A round axis step (1, 2, 2.5 or 5 times a power of ten) so that `ticks` steps cover `top`."""
    raw = top / ticks
    base = Decimal(10) ** raw.adjusted()
    return next(m * base for m in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)) if m * base >= raw)


def _n(x: Decimal) -> str:
    """An SVG coordinate: one decimal place is a tenth of a pixel."""
    return f"{x:.1f}"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def day_chart(days: Sequence[ReportRow]) -> str:
    """Vertical bars, one per day, weekends shaded, a rounded money axis and a tooltip per day."""
    width, height, left, right, top, bottom = (
        Decimal(1040),
        Decimal(260),
        Decimal(64),
        Decimal(12),
        Decimal(14),
        Decimal(40),
    )
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((d.spend_usd for d in days), default=Decimal(0))
    if peak <= 0:
        return _empty("No spend recorded this month.")
    step = _nice_step(peak)
    ceiling = step * ((peak / step).to_integral_value(rounding=ROUND_CEILING))
    band = plot_w / len(days)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="Spend per day">']
    for n in range(int(ceiling / step) + 1):
        y = top + plot_h - plot_h * (step * n) / ceiling
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{_n(y)}" y2="{_n(y)}"/>'
            f'<text class="axis" x="{left - 8}" y="{_n(y + 4)}" text-anchor="end">{short_money(step * n)}</text>'
        )
    for i, row in enumerate(days):
        day = date.fromisoformat(row.key)
        x = left + band * i
        h = plot_h * row.spend_usd / ceiling
        weekend = day.weekday() >= 5
        tip = (
            f"{_DAYS[day.weekday()]} {row.key}: {usd(row.spend_usd)} ({usd_exact(row.spend_usd)}), {row.calls:,} calls"
        )
        parts.append(
            f'<g class="day"><title>{escape(tip)}</title>'
            + (f'<rect class="weekend" x="{_n(x)}" y="{top}" width="{_n(band)}" height="{plot_h}"/>' if weekend else "")
            + f'<rect class="hover" x="{_n(x)}" y="{top}" width="{_n(band)}" height="{plot_h}"/>'
            + (
                f'<rect class="bar" x="{_n(x + band * Decimal("0.14"))}" y="{_n(top + plot_h - h)}" '
                f'width="{_n(band * Decimal("0.72"))}" height="{_n(h)}" rx="2"/>'
                if h > 0
                else ""
            )
            + f'<text class="axis{" dim" if weekend else ""}" x="{_n(x + band / 2)}" y="{_n(top + plot_h + 16)}" '
            f'text-anchor="middle">{day.day}</text></g>'
        )
    parts.append(f'<line class="base" x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    parts.append(
        f'<text class="axis dim" x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">'
        f"day of month (shaded: weekends)</text></svg>"
    )
    return "".join(parts)


# Horizontal charts show the biggest spenders as bars; the rest are summed on one line of text.
TOP_BARS = 12


def bar_chart(rows: Sequence[ReportRow], *, color: str) -> str:
    """Horizontal bars, highest first, labels on the left and amounts at the end of each bar."""
    shown = [r for r in rows if r.spend_usd or r.calls]
    rest = shown[TOP_BARS:] if len(shown) > TOP_BARS + 1 else []
    shown = shown[:TOP_BARS] if rest else shown
    if not shown:
        return _empty("Nothing to chart.")
    width, row_h, label_w, value_w = Decimal(520), Decimal(28), Decimal(168), Decimal(78)
    height = row_h * (len(shown) + (1 if rest else 0)) + 8
    peak = max(r.spend_usd for r in shown) or Decimal(1)
    span = width - label_w - value_w
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img">']
    for i, row in enumerate(shown):
        y = row_h * i + 4
        w = max(span * row.spend_usd / peak, Decimal(1) if row.spend_usd else Decimal(0))
        label = row.key if len(row.key) <= 24 else row.key[:23] + "\u2026"
        tip = f"{row.key}: {usd(row.spend_usd)} ({usd_exact(row.spend_usd)}), {row.calls:,} calls"
        parts.append(
            f"<g><title>{escape(tip)}</title>"
            f'<rect class="hover" x="0" y="{_n(y)}" width="{width}" height="{row_h - 2}"/>'
            f'<text class="label" x="{label_w - 10}" y="{_n(y + row_h / 2 + 3)}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{_n(y + 5)}" width="{_n(w)}" height="{row_h - 12}" rx="3" fill="{color}"/>'
            f'<text class="val" x="{_n(label_w + w + 6)}" y="{_n(y + row_h / 2 + 3)}">{usd(row.spend_usd)}</text></g>'
        )
    if rest:
        spend = sum((r.spend_usd for r in rest), Decimal(0))
        y = row_h * len(shown) + 4
        tip = f"{len(rest)} others: {usd(spend)} ({usd_exact(spend)}), {sum(r.calls for r in rest):,} calls"
        parts.append(
            f'<g><title>{escape(tip)}</title><text class="val" x="{label_w}" y="{_n(y + row_h / 2 + 3)}">'
            f"+ {len(rest)} others: {usd(spend)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _empty(message: str) -> str:
    return f'<div class="empty">{message}</div>'


def _td(
    text: str, amount: Decimal | None = None, *, tag: str = "td", tip: str | None = None, currency: str = "USD"
) -> str:
    tip = usd_exact(amount, currency=currency) if amount is not None else tip
    return f'<{tag} title="{tip}">{text}</{tag}>' if tip else f"<{tag}>{text}</{tag}>"


def _group_table(report: Report) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "spend",
            "calls",
            "failed",
            "tokens in",
            "cached",
            "tokens out",
            "failed spend",
            "calibration",
            "drift checks",
            "run spend",
            "baseline",
            "saved",
            "saved %",
        )
    )
    total = report.totals.spend_usd
    top = max((r.spend_usd for r in report.rows), default=Decimal(0))

    def line(row: ReportRow, tag: str = "td") -> str:
        # The bar compares a row with the biggest one; its tooltip gives its share of the total.
        share = row.spend_usd * 100 / total if total else Decimal(0)
        size = row.spend_usd * 100 / top if top > 0 else Decimal(0)
        bar = (
            f'<span class="share" title="{share:.1f}% of the total"><span style="width:{size:.1f}%"></span></span>'
            if tag == "td"
            else ""
        )
        cells = [
            _td(f"{bar}{usd(row.spend_usd)}", row.spend_usd, tag=tag),
            _td(f"{row.calls:,}", tag=tag),
            _td(f"{row.failed_calls:,}", tag=tag),
            # Token counts run to billions: compact here, exact on hover.
            *(
                _td(count(getattr(row, c)), tag=tag, tip=f"{getattr(row, c):,} tokens")
                for c in ("input_tokens", "cached_input_tokens", "output_tokens")
            ),
            *(
                _td(usd(getattr(row, c)), getattr(row, c), tag=tag)
                for c in ("failed_spend_usd", "calibration_spend_usd", "drift_spend_usd", "run_spend_usd")
            ),
            # Only run items have a baseline: a row without one has nothing saved or lost, just "-".
            *(
                (
                    _td(usd(row.baseline_usd), row.baseline_usd, tag=tag),
                    _td(usd(row.savings_usd), row.savings_usd, tag=tag),
                )
                if row.baseline_usd
                else (_td("-", tag=tag), _td("-", tag=tag))
            ),
            _td(pct(row.savings_pct), tag=tag),
        ]
        return f'<tr><{tag} class="key">{escape(row.key)}</{tag}>{"".join(cells)}</tr>'

    body = "".join(line(r) for r in report.rows) or '<tr><td colspan="15" class="empty">No calls this month.</td></tr>'
    return (
        f'<table><thead><tr><th class="key">{escape(report.by)}</th>{head}</tr></thead><tbody>{body}</tbody>'
        f"<tfoot>{line(report.totals, 'th')}</tfoot></table>"
    )


def _outcomes_html(report: Report) -> str:
    """Refused, filtered, blocked and cut-off answers per group: calls and their spend (exact on hover)."""
    if not any_unused(report.totals):
        return '<p class="empty">No answer was refused, filtered, blocked or cut off this month.</p>'
    head = "".join(f"<th>{label}</th><th>{label} spend</th>" for _, label in OUTCOME_NAMES)

    def line(row: ReportRow, tag: str = "td") -> str:
        cells = "".join(
            _td(f"{getattr(row, f'{name}_calls'):,}", tag=tag)
            + _td(usd(getattr(row, f"{name}_spend_usd")), getattr(row, f"{name}_spend_usd"), tag=tag)
            for name, _ in OUTCOME_NAMES
        )
        return f'<tr><{tag} class="key">{escape(row.key)}</{tag}>{cells}</tr>'

    body = "".join(line(r) for r in report.rows if any_unused(r))
    return (
        f'<table><thead><tr><th class="key">{escape(report.by)}</th>{head}</tr></thead><tbody>{body}</tbody>'
        f"<tfoot>{line(report.totals, 'th')}</tfoot></table>"
    )


def _budget_table(budgets: Sequence[BudgetRow]) -> str:
    if not budgets:
        return '<p class="empty">No budgets set for this month.</p>'
    rows = []
    for b in budgets:
        used = b.used_pct or Decimal(0)
        held = b.reserved * 100 / b.limit if b.limit else Decimal(0)
        tone = "bad" if used >= 100 else "warn" if used >= 80 else "ok"
        meter = (
            f'<span class="meter" title="settled {pct(b.used_pct)}, reserved {pct(held)}">'
            f'<span class="{tone}" style="width:{min(used, Decimal(100)):.1f}%"></span>'
            f'<span class="held" style="width:{min(held, max(Decimal(0), 100 - used)):.1f}%"></span></span>'
        )
        rows.append(
            f'<tr><td class="key">{escape(b.tenant)}</td><td class="key">{escape(b.team)}</td>'
            + _td(usd(b.limit, currency=b.currency), b.limit, currency=b.currency)
            + _td(usd(b.settled, currency=b.currency), b.settled, currency=b.currency)
            + _td(usd(b.reserved, currency=b.currency), b.reserved, currency=b.currency)
            + f'<td class="meter-cell">{meter}<span class="pct">{pct(b.used_pct)}</span></td></tr>'
        )
    return (
        '<table><thead><tr><th class="key">tenant</th><th class="key">team</th><th>limit</th><th>settled</th>'
        f'<th>reserved</th><th class="key">used (settled; light: reserved)</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
:root {{ --ink:#0f172a; --muted:#64748b; --line:#e2e8f0; --bg:#f8fafc; --card:#fff; --accent:#4f46e5; }}
* {{ box-sizing:border-box; }}
body {{ margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }}
main {{ max-width:1160px; margin:0 auto; padding:28px 20px 48px; }}
header {{ display:flex; justify-content:space-between; align-items:flex-end; border-bottom:1px solid var(--line);
  padding-bottom:16px; margin-bottom:24px; }}
.brand {{ font-size:12px; letter-spacing:.12em; text-transform:uppercase; color:var(--accent); font-weight:600; }}
h1 {{ font-size:28px; margin:2px 0 0; letter-spacing:-.01em; }}
header .meta {{ color:var(--muted); text-align:right; }}
h2 {{ font-size:15px; margin:0 0 12px; font-weight:600; }}
.cards {{ display:grid; grid-template-columns:repeat(3,1fr); gap:12px; margin-bottom:20px; }}
.card {{ background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px; }}
.card .label {{ color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.06em; }}
.card .value {{ font-size:26px; font-weight:650; margin-top:2px; font-variant-numeric:tabular-nums; }}
.card .note {{ color:var(--muted); font-size:12px; font-variant-numeric:tabular-nums; overflow-wrap:anywhere; }}
.card.accent {{ border-top:3px solid var(--accent); }}
.card.good .value {{ color:#047857; }} .card.bad .value {{ color:#b91c1c; }}
.panel {{ background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px; margin-bottom:20px; }}
.row2 {{ display:grid; grid-template-columns:1fr 1fr; gap:20px; }} .row2 .panel {{ margin-bottom:0; }}
.row2 + .panel, .row2 {{ margin-bottom:20px; }}
svg.chart {{ width:100%; height:auto; display:block; }}
svg text {{ font-family:inherit; }}
.axis {{ font-size:11px; fill:var(--muted); }} .axis.dim {{ fill:#94a3b8; }}
.grid {{ stroke:var(--line); }} .base {{ stroke:#94a3b8; }}
.bar {{ fill:var(--accent); }} .weekend {{ fill:#f1f5f9; shape-rendering:crispEdges; }} .hover {{ fill:transparent; }}
g:hover > .hover {{ fill:#eef2ff; }} g.day:hover .bar {{ fill:#3730a3; }}
.label {{ font-size:12px; fill:var(--ink); }} .val {{ font-size:12px; fill:var(--muted); font-variant-numeric:tabular-nums; }}
table {{ width:100%; border-collapse:collapse; font-variant-numeric:tabular-nums; font-size:12.5px; }}
th, td {{ padding:7px 5px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }}
thead th {{ color:var(--muted); font-weight:600; font-size:12px; border-bottom:1px solid #cbd5e1; }}
tfoot th {{ border-top:2px solid #cbd5e1; border-bottom:none; }}
.key {{ text-align:left; }} td.key {{ font-weight:500; }}
tbody tr:hover {{ background:#f8fafc; }}
.share {{ display:inline-block; width:36px; height:6px; background:#e0e7ff; border-radius:3px; margin-right:8px;
  vertical-align:middle; overflow:hidden; }} .share span {{ display:block; height:100%; background:var(--accent); }}
.meter-cell {{ text-align:left; }} .meter {{ display:inline-flex; width:180px; height:8px; background:#f1f5f9;
  border-radius:4px; overflow:hidden; vertical-align:middle; margin-right:8px; }}
.meter .ok {{ background:#10b981; }} .meter .warn {{ background:#f59e0b; }} .meter .bad {{ background:#ef4444; }}
.meter .held {{ background:#c7d2fe; }} .pct {{ font-variant-numeric:tabular-nums; }}
.empty {{ color:var(--muted); padding:24px; text-align:center; }}
.scroll {{ overflow-x:auto; }}
footer {{ color:var(--muted); font-size:12px; margin-top:8px; }}
</style></head>
<body><main>
<header><div><div class="brand">pennyroute &middot; spend report{simulated}</div><h1>{heading}</h1></div>
<div class="meta">{who}<br>{period}, local days</div></header>
<section class="cards">{cards}</section>
<section class="panel"><h2>Spend per day</h2>{day_chart}</section>
<div class="row2"><section class="panel"><h2>Spend per team</h2>{team_chart}</section>
<section class="panel"><h2>Spend per model</h2>{model_chart}</section></div>
<section class="panel"><h2>By {by}</h2><div class="scroll">{table}</div></section>
<section class="panel"><h2>Answers billed but not used, by {by}</h2><div class="scroll">{outcomes}</div></section>
<section class="panel"><h2>Budgets</h2>{budgets}</section>
<footer>Sums are exact; figures are rounded for display (hover a figure for its exact value). {savings}
Calibration and drift checks are spent on every job's own items to choose its route and to watch it; a small
job's checks can cost more than its run saves, and larger jobs repay them.
Each tenant's month runs on its own time zone.</footer>
</main></body></html>
"""
