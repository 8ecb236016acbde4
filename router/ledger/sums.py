"""The month's sums, read from the daily call rollups (never the call rows), for reports/monthly.py;
and one provider's calls per UTC day, read from the call rows, for reports/reconcile.py.

Postgres sums money in SQL (NUMERIC, exact), in one scan with GROUPING SETS; SQLite stores money as
text, so there the month's rollup rows are summed here, as Decimal. Nothing is rounded. Sums come
back as plain mappings of the SUMS names; reports/ turns them into rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Date, cast, func, select, text
from sqlmodel import Session, col

from router.ledger.rollup import OUTCOMES
from router.ledger.tables import BudgetPeriod, Call, CallRollup, Team, Tenant

# The rollup column each grouping reads.
COLUMN = {"team": "team_id", "model": "model_id", "provider": "provider", "task": "task", "job": "job_id", "day": "day"}
ROLLUP = CallRollup.__table__  # type: ignore[attr-defined]
CALL = Call.__table__  # type: ignore[attr-defined]
_SUMS = (
    "SUM(calls) AS calls, SUM(failed_calls) AS failed_calls, SUM(simulated_calls) AS simulated_calls, "
    "SUM(input_tokens) AS input_tokens, "
    "SUM(cached_input_tokens) AS cached_input_tokens, SUM(output_tokens) AS output_tokens, "
    "SUM(cost_usd) AS spend_usd, SUM(failed_cost_usd) AS failed_spend_usd, "
    "SUM(CASE WHEN purpose = 'calibration' THEN cost_usd ELSE 0 END) AS calibration_spend_usd, "
    "SUM(CASE WHEN purpose = 'drift' THEN cost_usd ELSE 0 END) AS drift_spend_usd, "
    "SUM(baseline_cost_usd) AS baseline_usd, "
    # Answers billed but not used, by how they ended: the rollup's <outcome>_calls and <outcome>_cost_usd.
    + ", ".join(f"SUM({o}_calls) AS {o}_calls, SUM({o}_cost_usd) AS {o}_spend_usd" for o in OUTCOMES)
    # Lines of provider batches: their spend, and what the batch discount saved (all, and on run items).
    + ", SUM(batch_calls) AS batch_calls, SUM(batch_cost_usd) AS batch_spend_usd, "
    "SUM(batch_saved_usd) AS batch_saved_usd, "
    "SUM(CASE WHEN purpose = 'run' THEN batch_saved_usd ELSE 0 END) AS batch_run_saved_usd"
)
INT_FIELDS = (
    "calls",
    "failed_calls",
    "simulated_calls",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    *(f"{o}_calls" for o in OUTCOMES),
    "batch_calls",
)
MONEY_FIELDS = (
    "spend_usd",
    "failed_spend_usd",
    "calibration_spend_usd",
    "drift_spend_usd",
    "baseline_usd",
    *(f"{o}_spend_usd" for o in OUTCOMES),
    "batch_spend_usd",
    "batch_saved_usd",
    "batch_run_saved_usd",
)
Sums = dict[str, Any]


def month_sums(
    session: Session, *, dims: tuple[str, ...], first: date, last: date, tenant_id: int | None
) -> tuple[dict[str, dict[Any, Sums]], Sums]:
    """Per dimension in `dims`, the sums of each of its keys (a team id, a model, a day...) over the
    days [first, last], one tenant's or (None) every tenant's; and the sums of all of it."""
    if session.get_bind().dialect.name == "postgresql":
        return _sums_in_sql(session, dims, first, last, tenant_id)
    return _sums_in_python(session, dims, first, last, tenant_id)


def _where(first: date, last: date, tenant_id: int | None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"first": first, "last": last}
    clause = "day BETWEEN :first AND :last"
    if tenant_id is not None:
        clause += " AND tenant_id = :tenant_id"
        params["tenant_id"] = tenant_id
    return clause, params


def _sums_in_sql(
    session: Session,
    dims: tuple[str, ...],
    first: date,
    last: date,
    tenant_id: int | None,
) -> tuple[dict[str, dict[Any, Sums]], Sums]:
    """One scan of the month's rollups, one grouping set per dimension plus () for the totals.
    Grouped columns are NOT NULL, so the one column that is not NULL in a result row names its set."""
    columns = [COLUMN[d] for d in dims]
    where, params = _where(first, last, tenant_id)
    sets = ", ".join(f"({c})" for c in columns)
    sql = f"SELECT {', '.join(columns)}, {_SUMS} FROM call_rollup WHERE {where} GROUP BY GROUPING SETS ({sets}, ())"
    groups: dict[str, dict[Any, Sums]] = {d: {} for d in dims}
    totals: Sums = _zero()
    for row in session.execute(text(sql), params).mappings():
        sums = dict(row)
        dim = next((d for d in dims if row[COLUMN[d]] is not None), None)
        if dim is None:
            totals = sums
        else:
            groups[dim][row[COLUMN[dim]]] = sums
    return groups, totals


def _sums_in_python(
    session: Session,
    dims: tuple[str, ...],
    first: date,
    last: date,
    tenant_id: int | None,
) -> tuple[dict[str, dict[Any, Sums]], Sums]:
    """SQLite: read the month's rollup rows (Money turns their text into Decimal) and add them up."""
    query = select(ROLLUP).where(ROLLUP.c.day >= first, ROLLUP.c.day <= last)
    if tenant_id is not None:
        query = query.where(ROLLUP.c.tenant_id == tenant_id)
    acc: dict[str, dict[Any, dict[str, Any]]] = {d: {} for d in dims}
    total: dict[str, Any] = _zero()
    for rollup in session.execute(query).mappings():
        values = {
            "calls": rollup["calls"],
            "failed_calls": rollup["failed_calls"],
            "simulated_calls": rollup["simulated_calls"],
            "input_tokens": rollup["input_tokens"],
            "cached_input_tokens": rollup["cached_input_tokens"],
            "output_tokens": rollup["output_tokens"],
            "spend_usd": rollup["cost_usd"],
            "failed_spend_usd": rollup["failed_cost_usd"],
            "calibration_spend_usd": rollup["cost_usd"] if rollup["purpose"] == "calibration" else Decimal(0),
            "drift_spend_usd": rollup["cost_usd"] if rollup["purpose"] == "drift" else Decimal(0),
            "baseline_usd": rollup["baseline_cost_usd"],
            **{f"{o}_calls": rollup[f"{o}_calls"] for o in OUTCOMES},
            **{f"{o}_spend_usd": rollup[f"{o}_cost_usd"] for o in OUTCOMES},
            "batch_calls": rollup["batch_calls"],
            "batch_spend_usd": rollup["batch_cost_usd"],
            "batch_saved_usd": rollup["batch_saved_usd"],
            "batch_run_saved_usd": rollup["batch_saved_usd"] if rollup["purpose"] == "run" else Decimal(0),
        }
        for target in [total, *(acc[d].setdefault(rollup[COLUMN[d]], _zero()) for d in dims)]:
            for name, value in values.items():
                target[name] += value
    return acc, total


def _zero() -> Sums:
    return {**{f: 0 for f in INT_FIELDS}, **{f: Decimal(0) for f in MONEY_FIELDS}}


def job_levers(session: Session, *, job_id: str) -> dict[str, Decimal]:
    """One job's savings by lever, from its rollups: the baseline, run spend, what its batch lines cost
    and what the batch discount saved (on run items, and on every line)."""
    rows = session.execute(
        select(
            ROLLUP.c.purpose,
            ROLLUP.c.cost_usd,
            ROLLUP.c.baseline_cost_usd,
            ROLLUP.c.batch_cost_usd,
            ROLLUP.c.batch_saved_usd,
        ).where(ROLLUP.c.job_id == job_id)
    ).all()
    out = dict.fromkeys(
        ("baseline_usd", "run_spend_usd", "batch_spend_usd", "batch_saved_usd", "batch_run_saved_usd"), Decimal(0)
    )
    for purpose, cost, baseline, batch_cost, batch_saved in rows:  # Decimals on both databases (Money)
        out["baseline_usd"] += baseline
        out["batch_spend_usd"] += batch_cost
        out["batch_saved_usd"] += batch_saved
        if purpose == "run":
            out["run_spend_usd"] += cost
            out["batch_run_saved_usd"] += batch_saved
    return out


def team_names(session: Session, team_ids: Iterable[int], *, qualified: bool) -> dict[int, str]:
    """Team names by id; `qualified` gives 'tenant/team' (a report across tenants)."""
    ids = list(team_ids)
    if not ids:
        return {}
    query = select(col(Team.id), col(Team.name), col(Tenant.name)).join(Tenant, col(Tenant.id) == col(Team.tenant_id))
    rows = session.execute(query.where(col(Team.id).in_(ids))).all()
    return {team_id: f"{tenant}/{team}" if qualified else team for team_id, team, tenant in rows}


def month_budgets(session: Session, *, first: date, tenant_id: int | None) -> list[tuple[str, str, BudgetPeriod]]:
    """(tenant name, team name, period) of every team budget for the month starting `first`."""
    query = (
        select(col(Tenant.name), col(Team.name), BudgetPeriod)
        .join(Team, col(Team.id) == col(BudgetPeriod.team_id))
        .join(Tenant, col(Tenant.id) == col(Team.tenant_id))
        .where(col(BudgetPeriod.period_start) == first)
        .order_by(col(Tenant.name), col(Team.name))
    )
    if tenant_id is not None:
        query = query.where(col(Team.tenant_id) == tenant_id)
    return [(tenant, team, period) for tenant, team, period in session.execute(query).all()]


def team_spend_usd(session: Session, *, team_id: int, first: date, last: date) -> Decimal:
    """Everything one team spent over the local days [first, last] (every purpose, failed calls
    included), from the rollups: what a budget set mid-month finds already spent."""
    where = (ROLLUP.c.team_id == team_id, ROLLUP.c.day >= first, ROLLUP.c.day <= last)
    if session.get_bind().dialect.name == "postgresql":
        total = session.execute(select(func.sum(ROLLUP.c.cost_usd)).where(*where)).scalar_one()
        return Decimal(total or 0)
    # SQLite keeps money as text: add the Decimals here, exactly.
    return sum((cost for (cost,) in session.execute(select(ROLLUP.c.cost_usd).where(*where))), Decimal(0))


# -- one provider's calls per UTC day (reconcile) ------------------------------------------------

# What provider_day_sums groups by, then sums.
DAY_KEYS = ("day", "model_id", "status", "input_usd_per_mtok", "cached_input_usd_per_mtok", "output_usd_per_mtok")
DAY_SUMS = ("calls", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd")


def provider_day_sums(
    session: Session,
    *,
    provider: str,
    first: date,
    last: date,
    tenant_id: int | None = None,
    team_id: int | None = None,
) -> list[Sums]:
    """One provider's calls over the UTC days [first, last] (by when each call started), grouped by
    UTC day, model, status and the prices recorded on the call: their count, tokens and cost.

    Read from the call rows, not the rollups: rollups are days in each tenant's time zone and do not
    tell `unknown` calls apart, while a provider's usage export is in UTC days. Sandbox calls
    (simulated) never reached a provider and are left out."""
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    until = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    where = [
        CALL.c.provider == provider,
        CALL.c.simulated.is_(False),
        CALL.c.started_at >= since,
        CALL.c.started_at < until,
    ]
    if tenant_id is not None:
        where.append(CALL.c.tenant_id == tenant_id)
    if team_id is not None:
        where.append(CALL.c.team_id == team_id)
    prices = [CALL.c.input_usd_per_mtok, CALL.c.cached_input_usd_per_mtok, CALL.c.output_usd_per_mtok]
    if session.get_bind().dialect.name == "postgresql":
        day = cast(func.timezone("UTC", CALL.c.started_at), Date).label("day")
        query = (
            select(
                day,
                CALL.c.model_id,
                CALL.c.status,
                *prices,
                func.count().label("calls"),
                func.sum(CALL.c.input_tokens).label("input_tokens"),
                func.sum(CALL.c.cached_input_tokens).label("cached_input_tokens"),
                func.sum(CALL.c.output_tokens).label("output_tokens"),
                func.sum(CALL.c.cost_usd).label("cost_usd"),
            )
            .where(*where)
            .group_by(day, CALL.c.model_id, CALL.c.status, *prices)
        )
        return [{**dict(row), "cost_usd": Decimal(row["cost_usd"] or 0)} for row in session.execute(query).mappings()]
    # SQLite keeps money as text and times as naive UTC text: group here, exactly, in Python.
    query = select(CALL.c.started_at, CALL.c.model_id, CALL.c.status, *prices, *[CALL.c[c] for c in DAY_SUMS[1:]])
    groups: dict[tuple[Any, ...], Sums] = {}
    for row in session.execute(query.where(*where)).mappings():
        started = row["started_at"]
        day_of = (started.astimezone(UTC) if started.tzinfo else started).date()
        key = (day_of, *(row[k] for k in DAY_KEYS[1:]))
        sums = groups.setdefault(key, {**dict(zip(DAY_KEYS, key, strict=True)), "calls": 0} | _zero_day())
        sums["calls"] += 1
        for name in DAY_SUMS[1:]:
            sums[name] += row[name]
    return list(groups.values())


def _zero_day() -> Sums:
    return {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0, "cost_usd": Decimal(0)}
