"""Monthly spend reports, read from the daily call rollups (never the call rows). Queries only:
rendering lives in router/report_render.py.

A tenant's month is the calendar month in its time zone. Rollup days are already local days, so
every tenant's month is the same day range (the 1st to the last day) and one filter serves all.
Postgres sums money in SQL (NUMERIC, exact), in one scan with GROUPING SETS; SQLite stores money
as text, so there the month's rollup rows are summed here, as Decimal. Nothing is rounded.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlmodel import Session, col

from router.ledger import budgets
from router.errors import InputError
from router.ledger import repo
from router.ledger.tables import BudgetPeriod, CallRollup, Team, Tenant

BY = ("team", "model", "provider", "task", "job", "day")
# The rollup column each grouping reads; the charts always need team, model and day as well.
COLUMN = {"team": "team_id", "model": "model_id", "provider": "provider", "task": "task", "job": "job_id", "day": "day"}
CHARTS = ("day", "team", "model")
ROLLUP = CallRollup.__table__  # type: ignore[attr-defined]
_SUMS = (
    "SUM(calls) AS calls, SUM(failed_calls) AS failed_calls, SUM(simulated_calls) AS simulated_calls, "
    "SUM(input_tokens) AS input_tokens, "
    "SUM(cached_input_tokens) AS cached_input_tokens, SUM(output_tokens) AS output_tokens, "
    "SUM(cost_usd) AS spend_usd, SUM(failed_cost_usd) AS failed_spend_usd, "
    "SUM(CASE WHEN purpose = 'calibration' THEN cost_usd ELSE 0 END) AS calibration_spend_usd, "
    "SUM(baseline_cost_usd) AS baseline_usd"
)
INT_FIELDS = ("calls", "failed_calls", "simulated_calls", "input_tokens", "cached_input_tokens", "output_tokens")
MONEY_FIELDS = ("spend_usd", "failed_spend_usd", "calibration_spend_usd", "baseline_usd")


@dataclass(frozen=True, slots=True)
class ReportRow:
    """The sums of one group (a team, a model, a day...) or of the whole report (key TOTAL)."""

    key: str
    spend_usd: Decimal = Decimal(0)
    calls: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    failed_spend_usd: Decimal = Decimal(0)  # spend on calls that gave no usable answer
    calibration_spend_usd: Decimal = Decimal(0)  # spend on calls whose purpose is calibration
    baseline_usd: Decimal = Decimal(0)  # each item once, its final call's tokens, at its job's baseline model's price
    simulated_calls: int = 0  # answered by the sandbox, not a real provider

    @property
    def savings_usd(self) -> Decimal:
        return self.baseline_usd - self.spend_usd

    @property
    def savings_pct(self) -> Decimal | None:
        """Savings as a percentage of the baseline; None when there is no baseline to compare with."""
        return self.savings_usd * 100 / self.baseline_usd if self.baseline_usd else None


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One team's budget period for the report's month, in the budget's own currency."""

    tenant: str
    team: str
    currency: str
    limit: Decimal
    settled: Decimal
    reserved: Decimal

    @property
    def used_pct(self) -> Decimal | None:
        """Settled spend as a percentage of the limit (reserved money is held, not yet spent)."""
        return self.settled * 100 / self.limit if self.limit else None


@dataclass(frozen=True, slots=True)
class Report:
    month: str  # YYYY-MM
    tenant: str | None  # None: every tenant
    by: str
    first_day: date
    last_day: date
    rows: tuple[ReportRow, ...]  # one per group: by spend, highest first (by day: in date order)
    totals: ReportRow
    budgets: tuple[BudgetRow, ...]
    spend_by_day: tuple[ReportRow, ...]  # every day of the month, in order, zero where nothing ran
    spend_by_team: tuple[ReportRow, ...]  # highest spend first
    spend_by_model: tuple[ReportRow, ...]


def parse_month(month: str) -> tuple[date, date]:
    """The first and last day of a 'YYYY-MM' month, or an InputError naming --month."""
    first = budgets.parse_month(month) if isinstance(month, str) else budgets.parse_month(repr(month))
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


def monthly_report(session: Session, *, month: str, tenant: str | None = None, by: str = "team") -> Report:
    """Spend for `month` ('YYYY-MM') grouped `by` one of BY, for one tenant or (None) all of them.

    Raises InputError for a malformed month or grouping, NotFoundError for an unknown tenant.
    """
    first, last = parse_month(month)
    if by not in BY:
        raise InputError(f"cannot group by '{by}': use one of {', '.join(BY)}", field="--by")
    tenant_id = repo.get_tenant(session, name=tenant).id if tenant is not None else None
    dims = tuple(dict.fromkeys((by, *CHARTS)))
    if session.get_bind().dialect.name == "postgresql":
        groups, totals = _sums_in_sql(session, dims, first, last, tenant_id)
    else:
        groups, totals = _sums_in_python(session, dims, first, last, tenant_id)
    named = {dim: _name_keys(session, dim, found, tenant_id) for dim, found in groups.items()}
    return Report(
        month=f"{first:%Y-%m}", tenant=tenant, by=by, first_day=first, last_day=last,
        rows=_ordered(by, named[by]), totals=replace(totals, key="TOTAL"),
        budgets=_budgets(session, first, tenant_id),
        spend_by_day=_every_day(named["day"], first, last),
        spend_by_team=_ordered("team", named["team"]), spend_by_model=_ordered("model", named["model"]),
    )


def _where(first: date, last: date, tenant_id: int | None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"first": first, "last": last}
    clause = "day BETWEEN :first AND :last"
    if tenant_id is not None:
        clause += " AND tenant_id = :tenant_id"
        params["tenant_id"] = tenant_id
    return clause, params


def _sums_in_sql(
    session: Session, dims: tuple[str, ...], first: date, last: date, tenant_id: int | None,
) -> tuple[dict[str, dict[Any, ReportRow]], ReportRow]:
    """One scan of the month's rollups, one grouping set per dimension plus () for the totals.
    Grouped columns are NOT NULL, so the one column that is not NULL in a result row names its set."""
    columns = [COLUMN[d] for d in dims]
    where, params = _where(first, last, tenant_id)
    sets = ", ".join(f"({c})" for c in columns)
    sql = f"SELECT {', '.join(columns)}, {_SUMS} FROM call_rollup WHERE {where} GROUP BY GROUPING SETS ({sets}, ())"
    groups: dict[str, dict[Any, ReportRow]] = {d: {} for d in dims}
    totals = ReportRow(key="TOTAL")
    for row in session.execute(text(sql), params).mappings():
        sums = _row(row)
        dim = next((d for d in dims if row[COLUMN[d]] is not None), None)
        if dim is None:
            totals = sums
        else:
            groups[dim][row[COLUMN[dim]]] = sums
    return groups, totals


def _sums_in_python(
    session: Session, dims: tuple[str, ...], first: date, last: date, tenant_id: int | None,
) -> tuple[dict[str, dict[Any, ReportRow]], ReportRow]:
    """SQLite: read the month's rollup rows (Money turns their text into Decimal) and add them up."""
    query = select(ROLLUP).where(ROLLUP.c.day >= first, ROLLUP.c.day <= last)
    if tenant_id is not None:
        query = query.where(ROLLUP.c.tenant_id == tenant_id)
    acc: dict[str, dict[Any, dict[str, Any]]] = {d: {} for d in dims}
    total: dict[str, Any] = _zero()
    for rollup in session.execute(query).mappings():
        values = {
            "calls": rollup["calls"], "failed_calls": rollup["failed_calls"], "simulated_calls": rollup["simulated_calls"],
            "input_tokens": rollup["input_tokens"],
            "cached_input_tokens": rollup["cached_input_tokens"], "output_tokens": rollup["output_tokens"],
            "spend_usd": rollup["cost_usd"], "failed_spend_usd": rollup["failed_cost_usd"],
            "calibration_spend_usd": rollup["cost_usd"] if rollup["purpose"] == "calibration" else Decimal(0),
            "baseline_usd": rollup["baseline_cost_usd"],
        }
        for target in [total, *(acc[d].setdefault(rollup[COLUMN[d]], _zero()) for d in dims)]:
            for name, value in values.items():
                target[name] += value
    groups = {d: {k: _row(v) for k, v in found.items()} for d, found in acc.items()}
    return groups, _row(total)


def _zero() -> dict[str, Any]:
    return {**{f: 0 for f in INT_FIELDS}, **{f: Decimal(0) for f in MONEY_FIELDS}}


def _row(values: Mapping[Any, Any]) -> ReportRow:
    """Sums as a row (its key is set later); SUM of no rows is NULL, SUM of integers NUMERIC on Postgres."""
    def n(name: str) -> int:
        return int(values[name] or 0)

    def usd(name: str) -> Decimal:
        return Decimal(values[name] or 0)

    return ReportRow(
        key="", spend_usd=usd("spend_usd"), calls=n("calls"), failed_calls=n("failed_calls"),
        simulated_calls=n("simulated_calls"),
        input_tokens=n("input_tokens"), cached_input_tokens=n("cached_input_tokens"), output_tokens=n("output_tokens"),
        failed_spend_usd=usd("failed_spend_usd"), calibration_spend_usd=usd("calibration_spend_usd"),
        baseline_usd=usd("baseline_usd"),
    )


def _name_keys(session: Session, dim: str, found: dict[Any, ReportRow], tenant_id: int | None) -> dict[str, ReportRow]:
    """Keys as people read them: team names (tenant/team across tenants), ISO days, ids as they are."""
    if dim == "team":
        names = _team_names(session, found, qualified=tenant_id is None)
        return {names.get(k, f"team #{k}"): replace(r, key=names.get(k, f"team #{k}")) for k, r in found.items()}
    keyed = {(k.isoformat() if isinstance(k, date) else str(k)): r for k, r in found.items()}
    return {k: replace(r, key=k) for k, r in keyed.items()}


def _team_names(session: Session, team_ids: Iterable[int], *, qualified: bool) -> dict[int, str]:
    ids = list(team_ids)
    if not ids:
        return {}
    query = select(col(Team.id), col(Team.name), col(Tenant.name)).join(Tenant, col(Tenant.id) == col(Team.tenant_id))
    rows = session.execute(query.where(col(Team.id).in_(ids))).all()
    return {team_id: f"{tenant}/{team}" if qualified else team for team_id, team, tenant in rows}


def _ordered(dim: str, found: dict[str, ReportRow]) -> tuple[ReportRow, ...]:
    if dim == "day":
        return tuple(found[k] for k in sorted(found))
    return tuple(sorted(found.values(), key=lambda r: (-r.spend_usd, r.key)))


def _every_day(found: dict[str, ReportRow], first: date, last: date) -> tuple[ReportRow, ...]:
    days = (first + timedelta(days=n) for n in range((last - first).days + 1))
    return tuple(found.get(d.isoformat(), ReportRow(key=d.isoformat())) for d in days)


def _budgets(session: Session, first: date, tenant_id: int | None) -> tuple[BudgetRow, ...]:
    query = (
        select(col(Tenant.name), col(Team.name), BudgetPeriod)
        .join(Team, col(Team.id) == col(BudgetPeriod.team_id))
        .join(Tenant, col(Tenant.id) == col(Team.tenant_id))
        .where(col(BudgetPeriod.period_start) == first)
        .order_by(col(Tenant.name), col(Team.name))
    )
    if tenant_id is not None:
        query = query.where(col(Team.tenant_id) == tenant_id)
    return tuple(
        BudgetRow(tenant=tenant, team=team, currency=period.currency, limit=period.limit_amount,
                  settled=period.settled, reserved=period.reserved)
        for tenant, team, period in session.execute(query).all()
    )
