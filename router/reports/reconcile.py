"""The ledger against a provider's usage export, per UTC day and model, so finance can true up.

    reconcile(session, catalog, provider="openai", usage=Export, costs=Export | None, first, last, ...)

Days are UTC days (the provider's buckets are), whatever the tenant's time zone: a call counts on
the UTC day it started. Only days the usage export covers whole are compared; the ledger's calls on
other days of the range are listed as not compared. A provider's model name is matched to the
catalog by the catalog's `api_model`, a dated snapshot (gpt-4o-mini-2024-07-18) to its alias
(gpt-4o-mini); names no catalog model answers to are listed apart, as not pennyroute's calls.

The bill's cost is the costs export's, when one is given and covers the day; else the bill's tokens
at the prices the ledger recorded on that day's calls of the model (the prices most of them carry),
or at the catalog's when the ledger has none. Each day and model gets a verdict from
policies/reconcile.py: matches, above (explained, or not, by the calls charged at their worst case)
or BELOW the bill.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from sqlmodel import Session

from policies.reconcile import (
    ABOVE,
    BELOW,
    MATCHES,
    SHIFTED,
    BillSide,
    LedgerSide,
    Line,
    Prices,
    Totals,
    carry_over,
    compare,
)
from router.catalog import Catalog
from router.errors import PennyrouteError
from router.ledger import repo, sums
from router.ledger.tables import CallStatus
from router.providers.openai_usage import CostRow, Export, UsageRow
from router.reports.render import csv_line, csv_text, plain, usd

# A dated snapshot of a model: OpenAI bills "gpt-4o-mini" calls as "gpt-4o-mini-2024-07-18".
SNAPSHOT = re.compile(r"^(?P<alias>.+)-\d{4}-\d{2}-\d{2}$")
# Below this, a cost difference is the ledger's rounding (10 places a call), not money.
DEFAULT_TOLERANCE_USD = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class ReconLine:
    """One compared day and model."""

    day: date
    model: str  # the model as the provider names it, snapshot date dropped
    model_ids: tuple[str, ...]  # the catalog's models sent as it
    line: Line
    uncharged_errors: int = 0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Apart:
    """Something not compared: ledger calls on a day the export does not cover, or a bill for a
    model that is none of the catalog's, or a costs line item that is no model's tokens."""

    day: date
    name: str
    why: str
    requests: int = 0
    cost_usd: Decimal | None = None


@dataclass(frozen=True)
class Reconciliation:
    provider: str
    first: date
    last: date
    scope: str
    tolerance_usd: Decimal
    lines: tuple[ReconLine, ...]
    apart: tuple[Apart, ...] = field(default=())

    def count(self, verdict: str) -> int:
        return sum(1 for r in self.lines if r.line.verdict == verdict)

    @property
    def below(self) -> bool:
        return self.count(BELOW) > 0

    @property
    def ledger_total(self) -> Totals:
        return sum((r.line.ledger for r in self.lines), Totals())

    @property
    def bill_total(self) -> Totals:
        return sum((r.line.bill for r in self.lines), Totals())

    @property
    def unknown_total(self) -> Totals:
        return sum((r.line.unknown for r in self.lines), Totals())


def model_key(name: str) -> str:
    """A provider's model name without its snapshot date: the key both sides are grouped by."""
    found = SNAPSHOT.match(name)
    return found["alias"] if found else name


def reconcile(
    session: Session,
    catalog: Catalog,
    *,
    provider: str,
    usage: Export,
    costs: Export | None,
    first: date,
    last: date,
    tenant: str | None = None,
    team: str | None = None,
    tolerance_usd: Decimal = DEFAULT_TOLERANCE_USD,
) -> Reconciliation:
    """Compare `provider`'s calls on the ledger (one tenant's or team's, or everyone's) with its
    usage export (and costs export), over the UTC days [first, last]."""
    if provider not in catalog.providers:
        known = ", ".join(sorted(catalog.providers))
        raise PennyrouteError(f"--provider: unknown provider '{provider}' (the catalog has {known})")
    if catalog.providers[provider].kind != "openai":
        raise PennyrouteError(
            f"--provider {provider}: only OpenAI's usage export is read today, and {provider} speaks "
            f"{catalog.providers[provider].kind}'s format"
        )
    if last < first:
        raise PennyrouteError(f"--until {last} is before --since {first}")
    tenant_id = team_id = None
    scope = "every tenant"
    if team is not None:
        found = repo.find_team(session, name=team, tenant=tenant)
        team_id, tenant_id = found.id, found.tenant_id
        scope = f"team {tenant + '/' if tenant else ''}{team}"
    elif tenant is not None:
        tenant_id = repo.get_tenant(session, name=tenant).id
        scope = f"tenant {tenant}"
    ids_by_key: dict[str, list[str]] = {}
    for model in catalog.models.values():
        if model.provider == provider:
            ids_by_key.setdefault(model_key(model.api_model), []).append(model.model_id)
    rows = sums.provider_day_sums(
        session, provider=provider, first=first, last=last, tenant_id=tenant_id, team_id=team_id
    )
    ledger, prices, ledger_ids = _ledger_sides(rows, catalog)
    for key, ids in ledger_ids.items():
        ids_by_key.setdefault(key, [])
        ids_by_key[key] = sorted(set(ids_by_key[key]) | ids)
    bills, apart = _bill_sides(usage, costs, first, last, ids_by_key)
    keys = sorted(set(ledger) | set(bills))
    lines: list[ReconLine] = []
    for day, key in keys:
        if day not in usage.days:
            side = ledger[(day, key)]
            why = (
                "the usage export covers only part of this day"
                if day in usage.partial_days
                else ("the usage export does not cover this day")
            )
            apart.append(Apart(day, key, why + ": not compared", side.total.requests, side.total.cost_usd))
            continue
        side = ledger.get((day, key), LedgerSide())
        price, source = prices.get((day, key)) or (_catalog_prices(catalog, ids_by_key.get(key, []), day), "catalog")
        uncharged, in_flight = side.uncharged_errors, side.in_flight
        lines.append(
            ReconLine(
                day,
                key,
                tuple(ids_by_key.get(key, ())),
                compare(side, bills.get((day, key)), prices=price, prices_from=source, tolerance_usd=tolerance_usd),
                uncharged,
                in_flight,
            )
        )
    by_model: dict[str, list[int]] = {}
    for n, r in enumerate(lines):  # in day order: keys are sorted by day
        by_model.setdefault(r.model, []).append(n)
    for indexes in by_model.values():
        carried = carry_over([lines[n].line for n in indexes], tolerance_usd=tolerance_usd)
        for n, line in zip(indexes, carried, strict=True):
            lines[n] = replace(lines[n], line=line)
    return Reconciliation(provider, first, last, scope, tolerance_usd, tuple(lines), tuple(apart))


def _ledger_sides(
    rows: Iterable[Mapping[str, Any]], catalog: Catalog
) -> tuple[dict[tuple[date, str], LedgerSide], dict[tuple[date, str], tuple[Prices, str]], dict[str, set[str]]]:
    """The ledger's side of each (day, model key); the prices most of its answered (else unknown)
    calls carry; and the model ids seen under each key."""
    sides: dict[tuple[date, str], LedgerSide] = {}
    votes: dict[tuple[date, str], dict[tuple[bool, Prices], int]] = {}
    ids: dict[str, set[str]] = {}
    for row in rows:
        model_id = row["model_id"]
        api_model = catalog.models[model_id].api_model if model_id in catalog.models else model_id
        key = (row["day"], model_key(api_model))
        ids.setdefault(key[1], set()).add(model_id)
        totals = Totals(
            int(row["calls"]),
            int(row["input_tokens"] or 0) + int(row["cached_input_tokens"] or 0),
            int(row["cached_input_tokens"] or 0),
            int(row["output_tokens"] or 0),
            Decimal(row["cost_usd"] or 0),
        )
        side = sides.get(key, LedgerSide())
        status = row["status"]
        if status == CallStatus.OK or (status == CallStatus.ERROR and totals.cost_usd > 0):
            side = LedgerSide(side.answered + totals, side.unknown, side.uncharged_errors, side.in_flight)
        elif status == CallStatus.UNKNOWN:
            side = LedgerSide(side.answered, side.unknown + totals, side.uncharged_errors, side.in_flight)
        elif status == CallStatus.IN_FLIGHT:
            side = LedgerSide(side.answered, side.unknown, side.uncharged_errors, side.in_flight + totals.requests)
        else:
            side = LedgerSide(side.answered, side.unknown, side.uncharged_errors + totals.requests, side.in_flight)
        sides[key] = side
        if status in (CallStatus.OK, CallStatus.UNKNOWN):
            price = Prices(
                Decimal(row["input_usd_per_mtok"]),
                Decimal(row["cached_input_usd_per_mtok"]),
                Decimal(row["output_usd_per_mtok"]),
            )
            tally = votes.setdefault(key, {})
            vote = (status == CallStatus.OK, price)
            tally[vote] = tally.get(vote, 0) + totals.requests
    # Answered calls' prices first (an unknown call carries the same, but the answered are the bill's).
    prices = {key: (max(tally, key=lambda v: (v[0], tally[v]))[1], "ledger") for key, tally in votes.items()}
    for key, side in list(sides.items()):
        if side.total.requests == 0 and not side.in_flight and not side.uncharged_errors:
            del sides[key]
    return sides, prices, ids


def _bill_sides(
    usage: Export, costs: Export | None, first: date, last: date, ids_by_key: Mapping[str, list[str]]
) -> tuple[dict[tuple[date, str], BillSide], list[Apart]]:
    """The provider's side of each (day, model key) in range; what it bills outside the catalog apart."""
    apart: list[Apart] = []
    cost_by: dict[tuple[date, str], Decimal] = {}
    for cost in costs.rows if costs else ():
        row: CostRow = cost
        if not first <= row.day <= last:
            continue
        if row.model is None:
            apart.append(
                Apart(row.day, row.line_item, "a costs line item that is no model's tokens", 0, row.amount_usd)
            )
            continue
        key = (row.day, model_key(row.model))
        cost_by[key] = cost_by.get(key, Decimal(0)) + row.amount_usd
    bills: dict[tuple[date, str], BillSide] = {}
    totals: dict[tuple[date, str], Totals] = {}
    for use in usage.rows:
        found: UsageRow = use
        if not first <= found.day <= last:
            continue
        key = (found.day, model_key(found.model))
        totals[key] = totals.get(key, Totals()) + Totals(
            found.requests, found.input_tokens, found.cached_input_tokens, found.output_tokens
        )
    for key, used in totals.items():
        cost = cost_by.pop(key, None)
        if costs is not None and cost is None and key[0] in costs.days:
            cost = Decimal(0)  # the costs export covers the day and bills nothing for the model
        if key[1] not in ids_by_key:
            apart.append(Apart(key[0], key[1], "billed, but no catalog model is sent as it", used.requests, cost))
            continue
        bills[key] = BillSide(used, cost if costs is not None and key[0] in costs.days else None)
    for (day, name), cost in cost_by.items():  # costs for a model the usage export has no usage of
        apart.append(Apart(day, name, "in the costs export but not in the usage export", 0, cost))
    return bills, apart


def _catalog_prices(catalog: Catalog, model_ids: list[str], day: date) -> Prices | None:
    """The catalog's price of the key's first model, in force at noon UTC that day (None if unknown)."""
    for model_id in model_ids:
        if model_id not in catalog.models:
            continue
        try:
            price = catalog.price(model_id, datetime.combine(day, time(12), tzinfo=UTC))
        except PennyrouteError:
            continue
        return Prices(price.input.base, price.cached_input.base, price.output.base)
    return None


# -- rendering ------------------------------------------------------------------------------------

SPACE, REASONS = " ", " | "  # between a CSV cell's models, and its reasons
VERDICT_STYLE = {MATCHES: "green", ABOVE: "yellow", SHIFTED: "yellow", BELOW: "bold red"}
CSV_COLUMNS = (
    "day",
    "model",
    "catalog_models",
    "verdict",
    "ledger_requests",
    "bill_requests",
    "ledger_input_tokens",
    "bill_input_tokens",
    "ledger_cached_input_tokens",
    "bill_cached_input_tokens",
    "ledger_output_tokens",
    "bill_output_tokens",
    "ledger_cost_usd",
    "bill_cost_usd",
    "bill_cost_from",
    "difference_usd",
    "unknown_calls",
    "unknown_cost_usd",
    "unexplained_usd",
    "uncharged_errors",
    "in_flight",
    "note",
)


def _verdict_text(r: ReconLine) -> str:
    line = r.line
    if line.verdict == ABOVE:
        return "ledger above the bill" + (" (explained)" if line.explained else " (UNEXPLAINED)")
    if line.verdict == BELOW:
        return "LEDGER BELOW THE BILL"
    if line.verdict == SHIFTED:
        return "below on the day, billed across midnight"
    return "matches"


def summary(rec: Reconciliation) -> str:
    """One paragraph: what was compared and how it came out."""
    ledger, bill, unknown = rec.ledger_total, rec.bill_total, rec.unknown_total
    head = (
        f"{rec.provider}, {rec.scope}, UTC days {rec.first} to {rec.last}: {len(rec.lines):,} day-and-model lines "
        f"compared: {rec.count(MATCHES):,} match, {rec.count(ABOVE):,} ledger above the bill, "
        + (
            f"{rec.count(SHIFTED):,} below on the day but not up to it (across midnight), "
            if rec.count(SHIFTED)
            else ""
        )
        + f"{rec.count(BELOW):,} ledger BELOW the bill. Ledger {usd(ledger.cost_usd)} against a bill of "
        f"{usd(bill.cost_usd)} (difference {usd(ledger.cost_usd - bill.cost_usd)}; {unknown.requests:,} unknown "
        f"calls charged at their worst case hold {usd(unknown.cost_usd)})."
    )
    if rec.below:
        head += " MONEY LEAK: the provider billed more than the ledger holds on the lines marked BELOW."
    unexplained = [r for r in rec.lines if r.line.verdict == ABOVE and not r.line.explained]
    if unexplained:
        head += f" {len(unexplained):,} line(s) above the bill by more than their unknown calls explain: check prices."
    if rec.apart:
        head += f" {len(rec.apart):,} item(s) not compared (listed)."
    return head


def render_table(rec: Reconciliation) -> RenderableType:
    table = Table(
        title=f"Reconcile: ledger against the {rec.provider} bill, per UTC day and model", title_justify="left"
    )
    for column in (
        "day",
        "model",
        "verdict",
        "requests L/B",
        "input tok L/B",
        "output tok L/B",
        "ledger",
        "bill",
        "L - B",
        "unknown calls",
    ):
        table.add_column(column, overflow="fold")
    for r in rec.lines:
        line = r.line
        table.add_row(
            str(r.day),
            Text(r.model),
            Text(_verdict_text(r), style=VERDICT_STYLE[line.verdict]),
            f"{line.ledger.requests:,}/{line.bill.requests:,}",
            f"{line.ledger.input_tokens:,}/{line.bill.input_tokens:,}",
            f"{line.ledger.output_tokens:,}/{line.bill.output_tokens:,}",
            usd(line.ledger.cost_usd, 6),
            usd(line.bill.cost_usd, 6) + ("" if line.bill_cost_from == "costs export" else "*"),
            usd(line.difference.cost_usd, 6),
            f"{line.unknown.requests:,} ({usd(line.unknown.cost_usd, 6)})",
        )
    parts: list[RenderableType] = [table]
    if any(r.line.bill_cost_from not in ("costs export", "-") for r in rec.lines):
        parts.append(Text("* the bill's tokens at the prices the ledger recorded (no costs export for the day)"))
    for r in rec.lines:
        for reason in r.line.reasons:
            style = VERDICT_STYLE[r.line.verdict] if reason is r.line.reasons[0] else "dim"
            parts.append(Text(f"{r.day} {r.model}: {reason}", style=style))
    if rec.apart:
        apart = Table(title="Not compared", title_justify="left")
        for column in ("day", "name", "why", "requests", "cost"):
            apart.add_column(column, overflow="fold")
        for a in rec.apart:
            apart.add_row(str(a.day), Text(a.name), a.why, f"{a.requests:,}", usd(a.cost_usd, 6))
        parts.append(apart)
    parts.append(Text(summary(rec), style="bold red" if rec.below else "bold"))
    return Group(*parts)


def _csv_cells(r: ReconLine) -> tuple[Any, ...]:
    line = r.line
    return (
        r.day.isoformat(),
        csv_text(r.model),
        csv_text(SPACE.join(r.model_ids)),
        line.verdict,
        line.ledger.requests,
        line.bill.requests,
        line.ledger.input_tokens,
        line.bill.input_tokens,
        line.ledger.cached_input_tokens,
        line.bill.cached_input_tokens,
        line.ledger.output_tokens,
        line.bill.output_tokens,
        plain(line.ledger.cost_usd),
        plain(line.bill.cost_usd),
        line.bill_cost_from,
        plain(line.difference.cost_usd),
        line.unknown.requests,
        plain(line.unknown.cost_usd),
        plain(line.unexplained_usd),
        r.uncharged_errors,
        r.in_flight,
        csv_text(REASONS.join(line.reasons)),
    )


def render_csv(rec: Reconciliation) -> str:
    """A header, then one row per compared day and model; amounts exact; text cells neutralized."""
    out = io.StringIO()
    out.write(csv_line(CSV_COLUMNS))
    for r in rec.lines:
        out.write(csv_line(_csv_cells(r)))
    return out.getvalue()


def render_json(rec: Reconciliation, *, exit_code: int) -> str:
    """Everything: the lines, what was not compared, the totals; amounts as exact decimal strings."""

    def totals(t: Totals) -> dict[str, Any]:
        return {
            "requests": t.requests,
            "input_tokens": t.input_tokens,
            "cached_input_tokens": t.cached_input_tokens,
            "output_tokens": t.output_tokens,
            "cost_usd": plain(t.cost_usd),
        }

    document = {
        "provider": rec.provider,
        "first_day": rec.first.isoformat(),
        "last_day": rec.last.isoformat(),
        "days": "UTC",
        "scope": rec.scope,
        "tolerance_usd": plain(rec.tolerance_usd),
        "lines": [
            {
                "day": r.day.isoformat(),
                "model": r.model,
                "catalog_models": list(r.model_ids),
                "verdict": r.line.verdict,
                "explained": r.line.explained if r.line.verdict == ABOVE else None,
                "ledger": totals(r.line.ledger),
                "bill": totals(r.line.bill),
                "bill_cost_from": r.line.bill_cost_from,
                "difference": totals(r.line.difference),
                "unknown": totals(r.line.unknown),
                "unexplained_usd": plain(r.line.unexplained_usd),
                "uncharged_errors": r.uncharged_errors,
                "in_flight": r.in_flight,
                "reasons": list(r.line.reasons),
            }
            for r in rec.lines
        ],
        "not_compared": [
            {
                "day": a.day.isoformat(),
                "name": a.name,
                "why": a.why,
                "requests": a.requests,
                "cost_usd": None if a.cost_usd is None else plain(a.cost_usd),
            }
            for a in rec.apart
        ],
        "totals": {
            "ledger": totals(rec.ledger_total),
            "bill": totals(rec.bill_total),
            "unknown": totals(rec.unknown_total),
            "matches": rec.count(MATCHES),
            "above": rec.count(ABOVE),
            "shifted": rec.count(SHIFTED),
            "below": rec.count(BELOW),
        },
        "summary": summary(rec),
        "exit_code": exit_code,
    }
    return json.dumps(document, indent=2) + "\n"
