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
)
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


# -- numbers for reading: the one place money is rounded for display (the CLI uses these too) ------


def plain(amount: Decimal) -> str:
    """A Decimal as a plain string at full precision ('0.0000000012', never '1.2E-9'), with at least the
    ledger's 10 places so every backend prints the same text; padded with zeros, never rounded."""
    if amount.as_tuple().exponent > -MONEY_SCALE:  # type: ignore[operator]
        amount = amount.quantize(LEDGER_PLACES, context=WIDE)
    return format(amount, "f")


def usd(amount: Decimal | str | None, places: int = 4) -> str:
    """Money for display: rounded here, and only here."""
    if amount is None:
        return "-"
    value = Decimal(str(amount))
    if value and abs(value) < Decimal(10) ** -places:
        # A tiny amount keeps two significant digits, in plain decimals: $0.000013, not $1.30E-5.
        return f"${value:,.{-value.adjusted() + 1}f}"
    return f"${value:,.{places}f}"


def money(amount: Decimal) -> str:
    """Rounded for display: cents from $1 up; below, two significant digits (calls cost fractions of a cent)."""
    if amount == 0:
        return "$0"
    sign, size = ("-" if amount < 0 else ""), abs(amount)
    if size >= 1:
        return f"{sign}${size:,.2f}"
    digits = f"{size:.{max(2, 1 - size.adjusted())}f}"
    if len(digits) > 4 and digits.endswith("0"):  # 0.00000000090 reads as 0.0000000009; 0.50 keeps its cents
        digits = digits[:-1]
    return f"{sign}${digits}"


def short_money(amount: Decimal) -> str:
    """Axis labels, which are round numbers: $0.0005, $20, $1.5k, $3M."""
    for unit, scale in (("M", Decimal(10) ** 6), ("k", Decimal(1000))):
        if abs(amount) >= scale:
            return f"${(amount / scale).normalize():f}{unit}"
    return f"${amount.normalize():f}"


def count(n: int) -> str:
    """Token counts for the summary: 9.6k, 250M."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{Decimal(n) / scale:.{1 if n < 100 * scale else 0}f}{unit}"
    return f"{n:,}"


def pct(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.quantize(PCT)}%"


def _cell(row: ReportRow, column: str) -> Any:
    value = getattr(row, column)
    if column == "savings_pct":
        return "" if value is None else str(value.quantize(PCT))
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


def render_table(report: Report) -> Table:
    """The grouped rows and a TOTAL row, rounded for reading."""
    table = Table(title=_title(report), title_justify="left")
    table.add_column(report.by, no_wrap=True)  # the key is what a reader looks for: never cut it
    for name in (
        "spend",
        "calls",
        "failed",
        "tokens in",
        "cached",
        "tokens out",
        "failed spend",
        "calibration",
        "baseline",
        "saved",
        "saved %",
    ):
        table.add_column(name, justify="right")
    for row in (*report.rows, report.totals):
        table.add_row(
            row.key,
            money(row.spend_usd),
            f"{row.calls:,}",
            f"{row.failed_calls:,}",
            f"{row.input_tokens:,}",
            f"{row.cached_input_tokens:,}",
            f"{row.output_tokens:,}",
            money(row.failed_spend_usd),
            money(row.calibration_spend_usd),
            money(row.baseline_usd),
            money(row.savings_usd),
            pct(row.savings_pct),
            style="bold" if row is report.totals else None,
            end_section=row is report.rows[-1] if report.rows else False,
        )
    return table


def render_budget_table(report: Report) -> Table:
    """The month's budget periods, in their own currencies."""
    table = Table(title=f"Budgets, {report.month}", title_justify="left")
    for name in ("tenant", "team", "limit", "settled", "reserved", "used"):
        table.add_column(name, justify="left" if name in ("tenant", "team") else "right")
    for budget in report.budgets:
        table.add_row(
            budget.tenant,
            budget.team,
            _amount(budget.limit, budget.currency),
            _amount(budget.settled, budget.currency),
            _amount(budget.reserved, budget.currency),
            pct(budget.used_pct),
        )
    return table


def render_csv(report: Report) -> str:
    """A header, one row per group, then TOTAL; amounts at full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((report.by, *COLUMNS))
    for row in (*report.rows, report.totals):
        writer.writerow((row.key, *(_cell(row, c) for c in COLUMNS)))
    return out.getvalue()


def render_json(report: Report) -> str:
    """Everything in the report; amounts as full-precision decimal strings."""

    def row(r: ReportRow) -> dict[str, Any]:
        return {"key": r.key, **{c: _cell(r, c) for c in COLUMNS}, "savings_pct": _cell(r, "savings_pct") or None}

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


def _amount(value: Decimal, currency: str) -> str:
    return money(value) if currency == "USD" else f"{value:,.2f} {currency}"


# -- HTML ------------------------------------------------------------------------------------------


def render_html(report: Report) -> str:
    """One self-contained page (no scripts, fonts or requests): summary, inline SVG charts, tables."""
    t = report.totals
    failed_share = f"{Decimal(t.failed_calls * 100) / t.calls:.1f}% of calls" if t.calls else "no calls"
    cards = "".join(
        (
            _card("Spend", money(t.spend_usd), f"exact ${plain(t.spend_usd)}", t.spend_usd, accent=True),
            _card("Calls", f"{t.calls:,}", f"{t.failed_calls:,} failed ({failed_share})"),
            _card(
                "Tokens",
                count(t.input_tokens + t.output_tokens),
                f"in {count(t.input_tokens)} &middot; cached {count(t.cached_input_tokens)} &middot; out {count(t.output_tokens)}",
            ),
            _card(
                "Saved vs baseline",
                money(t.savings_usd),
                f"{pct(t.savings_pct)} of {money(t.baseline_usd)} baseline",
                t.savings_usd,
                good=t.savings_usd >= 0,
            ),
            _card(
                "Failed-call spend",
                money(t.failed_spend_usd),
                f"exact ${plain(t.failed_spend_usd)}",
                t.failed_spend_usd,
            ),
            _card(
                "Calibration spend",
                money(t.calibration_spend_usd),
                f"exact ${plain(t.calibration_spend_usd)}",
                t.calibration_spend_usd,
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
        budgets=_budget_table(report.budgets),
    )


def _card(
    label: str, value: str, note: str, exact: Decimal | None = None, *, accent: bool = False, good: bool | None = None
) -> str:
    tip = f' title="${plain(exact)} exactly"' if exact is not None else ""
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
        tip = f"{_DAYS[day.weekday()]} {row.key}: {money(row.spend_usd)} (${plain(row.spend_usd)}), {row.calls:,} calls"
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
        tip = f"{row.key}: {money(row.spend_usd)} (${plain(row.spend_usd)}), {row.calls:,} calls"
        parts.append(
            f"<g><title>{escape(tip)}</title>"
            f'<rect class="hover" x="0" y="{_n(y)}" width="{width}" height="{row_h - 2}"/>'
            f'<text class="label" x="{label_w - 10}" y="{_n(y + row_h / 2 + 3)}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{_n(y + 5)}" width="{_n(w)}" height="{row_h - 12}" rx="3" fill="{color}"/>'
            f'<text class="val" x="{_n(label_w + w + 6)}" y="{_n(y + row_h / 2 + 3)}">{money(row.spend_usd)}</text></g>'
        )
    if rest:
        spend = sum((r.spend_usd for r in rest), Decimal(0))
        y = row_h * len(shown) + 4
        tip = f"{len(rest)} others: {money(spend)} (${plain(spend)}), {sum(r.calls for r in rest):,} calls"
        parts.append(
            f'<g><title>{escape(tip)}</title><text class="val" x="{label_w}" y="{_n(y + row_h / 2 + 3)}">'
            f"+ {len(rest)} others: {money(spend)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _empty(message: str) -> str:
    return f'<div class="empty">{message}</div>'


def _td(text: str, exact: Decimal | None = None, *, tag: str = "td", tip: str | None = None) -> str:
    tip = f"${plain(exact)}" if exact is not None else tip
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
            _td(f"{bar}{money(row.spend_usd)}", row.spend_usd, tag=tag),
            _td(f"{row.calls:,}", tag=tag),
            _td(f"{row.failed_calls:,}", tag=tag),
            # Token counts run to billions: compact here, exact on hover.
            *(
                _td(count(getattr(row, c)), tag=tag, tip=f"{getattr(row, c):,} tokens")
                for c in ("input_tokens", "cached_input_tokens", "output_tokens")
            ),
            *(
                _td(money(getattr(row, c)), getattr(row, c), tag=tag)
                for c in ("failed_spend_usd", "calibration_spend_usd", "baseline_usd", "savings_usd")
            ),
            _td(pct(row.savings_pct), tag=tag),
        ]
        return f'<tr><{tag} class="key">{escape(row.key)}</{tag}>{"".join(cells)}</tr>'

    body = "".join(line(r) for r in report.rows) or '<tr><td colspan="12" class="empty">No calls this month.</td></tr>'
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
            + _td(_amount(b.limit, b.currency), b.limit)
            + _td(_amount(b.settled, b.currency), b.settled)
            + _td(_amount(b.reserved, b.currency), b.reserved)
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
<section class="panel"><h2>Budgets</h2>{budgets}</section>
<footer>Sums are exact; figures are rounded for display (hover a figure for its exact value). Savings compare
each item's final answer, at the same tokens, with its job's baseline model (the most expensive model that met the job's
constraints), its thinking included.
Each tenant's month runs on its own time zone.</footer>
</main></body></html>
"""
