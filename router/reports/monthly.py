"""Monthly spend reports, from the daily call rollups (never the call rows). The sums are the
ledger's (router/ledger/sums.py); rendering lives in router/reports/render.py.

A tenant's month is the calendar month in its time zone. Rollup days are already local days, so
every tenant's month is the same day range (the 1st to the last day) and one filter serves all.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from router.errors import InputError
from router.ledger import budgets, repo, sums

BY = ("team", "model", "provider", "task", "job", "day")
# The charts always need team, model and day, whatever the grouping.
CHARTS = ("day", "team", "model")


@dataclass(frozen=True, slots=True)
class ReportRow:
    """The sums of one group (a team, a model, a day...) or of the whole report (key TOTAL).

    Spend has three purposes: run (the job's items on its route), calibration (testing models on the
    job's labelled items) and drift (re-asking the baseline about a share of the items). Only run
    items have a baseline (the same items on the job's baseline model), so the savings compare run
    spend with it; calibration and drift are spent to choose and watch the route, and are reported
    as their own figures, never as negative savings. `net_savings_usd` is the all-in comparison.
    """

    key: str
    spend_usd: Decimal = Decimal(0)  # all of it: run, calibration and drift
    calls: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    failed_spend_usd: Decimal = Decimal(0)  # spend on calls that gave no usable answer
    calibration_spend_usd: Decimal = Decimal(0)  # spend on calls whose purpose is calibration
    baseline_usd: Decimal = Decimal(
        0
    )  # each run item once, its final call's tokens, at its job's baseline model's price
    simulated_calls: int = 0  # answered by the sandbox, not a real provider
    drift_spend_usd: Decimal = Decimal(0)  # spend on drift checks (the baseline model asked again)
    # Answers billed but not used because of how they ended (router.ledger.rollup.OUTCOMES): calls
    # and their spend, already counted in failed_calls and failed_spend_usd.
    refused_calls: int = 0  # the model declined
    refused_spend_usd: Decimal = Decimal(0)
    filtered_calls: int = 0  # the provider's content filter withheld the answer
    filtered_spend_usd: Decimal = Decimal(0)
    blocked_calls: int = 0  # the prompt was blocked before any answer (its tokens billed)
    blocked_spend_usd: Decimal = Decimal(0)
    cut_off_calls: int = 0  # cut off by the output cap, and not usable (a label read from one stands)
    cut_off_spend_usd: Decimal = Decimal(0)
    # Lines of provider batches (inside calls and spend), and what the batch discount saved on them
    # against the standard price: on every line, and on the run items (the savings' batch lever).
    batch_calls: int = 0
    batch_spend_usd: Decimal = Decimal(0)
    batch_saved_usd: Decimal = Decimal(0)
    batch_run_saved_usd: Decimal = Decimal(0)

    @property
    def routing_savings_usd(self) -> Decimal:
        """The routing lever: the run items at the standard price against their jobs' baseline model."""
        return self.savings_usd - self.batch_run_saved_usd

    @property
    def batch_savings_usd(self) -> Decimal:
        """The batch lever: what the providers' batch discount saved on the run items."""
        return self.batch_run_saved_usd

    @property
    def checks_spend_usd(self) -> Decimal:
        """Calibration and drift checks: what choosing and watching the route cost."""
        return self.calibration_spend_usd + self.drift_spend_usd

    @property
    def run_spend_usd(self) -> Decimal:
        """Spend on the run items, the spend the baseline compares with."""
        return self.spend_usd - self.checks_spend_usd

    @property
    def savings_usd(self) -> Decimal:
        """The run items against the same items on their jobs' baseline model."""
        return self.baseline_usd - self.run_spend_usd

    @property
    def savings_pct(self) -> Decimal | None:
        """Savings as a percentage of the baseline; None when there is no baseline to compare with."""
        return self.savings_usd * 100 / self.baseline_usd if self.baseline_usd else None

    @property
    def net_savings_usd(self) -> Decimal:
        """All in: the baseline against all spend, calibration and drift checks included."""
        return self.baseline_usd - self.spend_usd


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
    found, total = sums.month_sums(session, dims=dims, first=first, last=last, tenant_id=tenant_id)
    groups = {dim: {key: _row(values) for key, values in by_key.items()} for dim, by_key in found.items()}
    totals = _row(total)
    named = {dim: _name_keys(session, dim, rows, tenant_id) for dim, rows in groups.items()}
    return Report(
        month=f"{first:%Y-%m}",
        tenant=tenant,
        by=by,
        first_day=first,
        last_day=last,
        rows=_ordered(by, named[by]),
        totals=replace(totals, key="TOTAL"),
        budgets=tuple(
            BudgetRow(
                tenant=tenant_name,
                team=team_name,
                currency=period.currency,
                limit=period.limit_amount,
                settled=period.settled,
                reserved=period.reserved,
            )
            for tenant_name, team_name, period in sums.month_budgets(session, first=first, tenant_id=tenant_id)
        ),
        spend_by_day=_every_day(named["day"], first, last),
        spend_by_team=_ordered("team", named["team"]),
        spend_by_model=_ordered("model", named["model"]),
    )


def _row(values: Mapping[Any, Any]) -> ReportRow:
    """Sums as a row (its key is set later); SUM of no rows is NULL, SUM of integers NUMERIC on Postgres."""

    def n(name: str) -> int:
        return int(values[name] or 0)

    def usd(name: str) -> Decimal:
        return Decimal(values[name] or 0)

    return ReportRow(
        key="",
        spend_usd=usd("spend_usd"),
        calls=n("calls"),
        failed_calls=n("failed_calls"),
        simulated_calls=n("simulated_calls"),
        input_tokens=n("input_tokens"),
        cached_input_tokens=n("cached_input_tokens"),
        output_tokens=n("output_tokens"),
        failed_spend_usd=usd("failed_spend_usd"),
        calibration_spend_usd=usd("calibration_spend_usd"),
        drift_spend_usd=usd("drift_spend_usd"),
        baseline_usd=usd("baseline_usd"),
        refused_calls=n("refused_calls"),
        refused_spend_usd=usd("refused_spend_usd"),
        filtered_calls=n("filtered_calls"),
        filtered_spend_usd=usd("filtered_spend_usd"),
        blocked_calls=n("blocked_calls"),
        blocked_spend_usd=usd("blocked_spend_usd"),
        cut_off_calls=n("cut_off_calls"),
        cut_off_spend_usd=usd("cut_off_spend_usd"),
        batch_calls=n("batch_calls"),
        batch_spend_usd=usd("batch_spend_usd"),
        batch_saved_usd=usd("batch_saved_usd"),
        batch_run_saved_usd=usd("batch_run_saved_usd"),
    )


def _name_keys(session: Session, dim: str, found: dict[Any, ReportRow], tenant_id: int | None) -> dict[str, ReportRow]:
    """Keys as people read them: team names (tenant/team across tenants), ISO days, ids as they are."""
    if dim == "team":
        names = sums.team_names(session, found, qualified=tenant_id is None)
        return {names.get(k, f"team #{k}"): replace(r, key=names.get(k, f"team #{k}")) for k, r in found.items()}
    keyed = {(k.isoformat() if isinstance(k, date) else str(k)): r for k, r in found.items()}
    return {k: replace(r, key=k) for k, r in keyed.items()}


def _ordered(dim: str, found: dict[str, ReportRow]) -> tuple[ReportRow, ...]:
    if dim == "day":
        return tuple(found[k] for k in sorted(found))
    return tuple(sorted(found.values(), key=lambda r: (-r.spend_usd, r.key)))


def _every_day(found: dict[str, ReportRow], first: date, last: date) -> tuple[ReportRow, ...]:
    days = (first + timedelta(days=n) for n in range((last - first).days + 1))
    return tuple(found.get(d.isoformat(), ReportRow(key=d.isoformat())) for d in days)
