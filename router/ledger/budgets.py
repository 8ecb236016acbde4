"""Team budgets: monthly periods, atomic reservations, settlement, soft-limit alerts.

Invariant, at every instant and whatever the number of workers: settled + reserved <= limit.
A chunk reserves the worst-case cost of its calls before making them, in one conditional
UPDATE; afterwards it settles to the actual cost and releases the rest. The worst case is a true
upper bound: input tokens are bounded by the prompt's UTF-8 bytes (the tokenizers in use emit at
least one byte per token) and output tokens by the call's max_tokens, so no settlement can exceed
its reservation. Periods are calendar months in the tenant's time zone, created on first use from
the team's standing budget: they roll over on the 1st with no cron job, and old ones stay as history.

A budget set mid-month counts the month's spend so far: the period it creates starts settled at what
the team already spent that month (from the rollups). When that already passes the limit, the one
exception to the invariant, the period is over: nothing more is reserved until the limit is raised
or the month ends (remaining_usd is 0, never negative). Calls of dead workers settled after their
reservation was given back are the other (an `overshoot` event says so).
"""

from __future__ import annotations

import calendar
import re
import uuid
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session
from sqlmodel import select as sm_select

from router.errors import InputError
from router.ledger import sums
from router.ledger.tables import BudgetEvent, BudgetPeriod, BudgetPolicy, Reservation, Team, Tenant, utcnow
from router.settings import Settings

CURRENCIES = ("USD", "EUR")
PERIOD = BudgetPeriod.__table__  # type: ignore[attr-defined]
RESERVATION = Reservation.__table__  # type: ignore[attr-defined]
# Amounts are stored with 10 decimal places: reservations round up, settlements to nearest.
QUANTUM = Decimal("0.0000000001")


def parse_amount(value: str, *, field: str) -> Decimal:
    """A positive decimal amount from user text, or an InputError naming the flag."""
    try:
        amount = Decimal(value.strip().replace("_", ""))
    except (InvalidOperation, AttributeError):
        raise InputError(f"'{value}' is not a number (e.g. 500 or 499.99)", field=field) from None
    if not amount.is_finite() or amount <= 0:
        raise InputError(f"{value} must be a positive amount", field=field)
    return amount


def parse_soft(value: str | None) -> float | None:
    """'80%' or '80' as a percentage in (0, 100]."""
    if value is None:
        return None
    try:
        pct = float(value.strip().rstrip("%"))
    except ValueError:
        raise InputError(f"'{value}' is not a percentage (e.g. 80%)", field="--soft") from None
    if not 0 < pct <= 100:
        raise InputError(f"{value} must be between 0% and 100%", field="--soft")
    return pct


def usd_per_unit(currency: str, settings: Settings) -> Decimal:
    """The configured exchange rate into USD of one unit of `currency`."""
    if currency == "USD":
        return Decimal(1)
    if currency == "EUR":
        if settings.usd_per_eur is None:
            raise InputError(
                "EUR budgets need an exchange rate: set PENNYROUTE_USD_PER_EUR (e.g. 1.08)", field="--currency"
            )
        return settings.usd_per_eur
    raise InputError(f"unknown currency '{currency}': use one of {', '.join(CURRENCIES)}", field="--currency")


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def parse_month(value: str, *, field: str = "--month") -> date:
    """'2026-11' as date(2026, 11, 1), or an InputError naming the flag."""
    match = _MONTH.match(value.strip())
    if match:
        try:
            return date(int(match.group(1)), int(match.group(2)), 1)
        except ValueError:
            pass
    raise InputError(f"'{value}' is not a month: use YYYY-MM, e.g. 2026-11", field=field)


def period_start(moment: datetime, timezone: str) -> date:
    """The 1st of the month `moment` falls in, in `timezone`."""
    return moment.astimezone(ZoneInfo(timezone)).date().replace(day=1)


def set_budget(
    session: Session,
    *,
    team: Team,
    monthly: Decimal,
    currency: str,
    soft_pct: float | None,
    settings: Settings,
    now: datetime | None = None,
) -> BudgetPeriod:
    """Set a team's standing monthly budget; it applies to the current period at once.

    A period this creates (the team had no budget this month) starts with the month's spend so far
    settled: a budget set on the 20th counts what the team spent since the 1st. If that already
    passes the limit, the period is over (settled > limit: nothing more can be reserved)."""
    currency = currency.upper()
    rate = usd_per_unit(currency, settings)  # validates the currency and its rate
    policy = session.get(BudgetPolicy, team.id)
    if policy is None:
        policy = BudgetPolicy(team_id=team.id, monthly_limit=monthly, currency=currency, soft_pct=soft_pct)  # type: ignore[arg-type]
    else:
        policy.monthly_limit, policy.currency, policy.soft_pct, policy.updated_at = (
            monthly,
            currency,
            soft_pct,
            utcnow(),
        )
    session.add(policy)
    session.flush()
    found = _ensure_period(session, team_id=team.id, now=now)  # type: ignore[arg-type]
    assert found is not None
    period, created = found
    if period.currency != currency and (period.settled or period.reserved):
        raise InputError(
            f"this month already has spend in {period.currency}; change the currency next month", field="--currency"
        )
    detail: dict[str, Any] = {"monthly": format(monthly, "f"), "currency": currency, "soft_pct": soft_pct}
    if created:
        spent_usd = month_spend_usd(session, team_id=team.id, period_start=period.period_start)  # type: ignore[arg-type]
        if spent_usd:
            # Settled to the nearest unit, as a settlement is (settle); in the budget's currency.
            _add(session, period.id, settled=(spent_usd / rate).quantize(QUANTUM, rounding=ROUND_HALF_EVEN))  # type: ignore[arg-type]
            detail["spent_before_usd"] = format(spent_usd.quantize(QUANTUM), "f")  # the ledger's 10 places
    session.execute(
        update(PERIOD)
        .where(PERIOD.c.id == period.id)
        .values(limit_amount=monthly, currency=currency, soft_pct=soft_pct)
    )
    record_event(session, team_id=team.id, period=period.period_start, kind="limit_set", detail=detail)  # type: ignore[arg-type]
    session.refresh(period)
    return period


def month_spend_usd(session: Session, *, team_id: int, period_start: date) -> Decimal:
    """What the team spent in the (local) month starting `period_start`, budget or not."""
    last = period_start.replace(day=calendar.monthrange(period_start.year, period_start.month)[1])
    return sums.team_spend_usd(session, team_id=team_id, first=period_start, last=last)


def is_over(period: BudgetPeriod) -> bool:
    """The period can take nothing more: its settled spend alone reached the limit (spend made
    before the budget was set can pass it)."""
    return period.settled >= period.limit_amount


def current_period(session: Session, *, team_id: int, now: datetime | None = None) -> BudgetPeriod | None:
    """The team's budget period for the month of `now` (created from its standing budget on first
    use), or None when the team has no budget."""
    found = _ensure_period(session, team_id=team_id, now=now)
    return None if found is None else found[0]


def _ensure_period(session: Session, *, team_id: int, now: datetime | None = None) -> tuple[BudgetPeriod, bool] | None:
    """current_period, and whether this call created the period; None when the team has no budget."""
    policy = session.get(BudgetPolicy, team_id)
    if policy is None:
        return None
    timezone = session.exec(
        sm_select(Tenant.timezone).join(Team, Team.tenant_id == Tenant.id).where(Team.id == team_id)  # type: ignore[arg-type]
    ).one()
    start = period_start(now or utcnow(), timezone)
    values = {
        "team_id": team_id,
        "period_start": start,
        "limit_amount": policy.monthly_limit,
        "currency": policy.currency,
        "soft_pct": policy.soft_pct,
        "settled": Decimal(0),
        "reserved": Decimal(0),
    }
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    created = session.execute(
        insert(PERIOD)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["team_id", "period_start"])
        .returning(PERIOD.c.id)
    ).first()
    period = session.exec(
        sm_select(BudgetPeriod).where(BudgetPeriod.team_id == team_id, BudgetPeriod.period_start == start)
    ).one()
    return period, created is not None


def remaining_usd(period: BudgetPeriod, settings: Settings) -> Decimal:
    """What the period can still take, in USD; 0 when it is over (never negative)."""
    left = period.limit_amount - period.settled - period.reserved
    return max(left, Decimal(0)) * usd_per_unit(period.currency, settings)


def release_expired(session: Session, *, period_id: int, now: datetime) -> None:
    """Give back the reservations of chunks whose worker died (their lease ran out)."""
    expired = session.execute(
        update(RESERVATION)
        .where(
            RESERVATION.c.budget_period_id == period_id, RESERVATION.c.status == "held", RESERVATION.c.expires_at < now
        )
        .values(status="expired")
        .returning(RESERVATION.c.amount)
    ).all()
    if expired:
        total = sum((row.amount for row in expired), Decimal(0))
        _add(session, period_id, reserved=-total)


def fresh_period(session: Session, *, team_id: int, now: datetime) -> BudgetPeriod | None:
    """The team's current period (current_period) after giving back expired reservations
    (release_expired), reloaded so that its totals are the database's; None when the team has no budget."""
    period = current_period(session, team_id=team_id, now=now)
    if period is None:
        return None
    release_expired(session, period_id=period.id, now=now)  # type: ignore[arg-type]
    session.refresh(period)
    return period


def release(session: Session, *, period_id: int, amount: Decimal) -> None:
    """Give back `amount` (budget currency) of a period's reserved total (a cancelled job's holds)."""
    _add(session, period_id, reserved=-amount)


def release_job(session: Session, *, job_id: str) -> Decimal:
    """Give back every reservation a job holds (it was cancelled); returns the amount released, in
    the budgets' currencies. A batch still in flight settles its actual spend when it ends."""
    held = session.execute(
        update(RESERVATION)
        .where(RESERVATION.c.job_id == job_id, RESERVATION.c.status == "held")
        .values(status="expired")
        .returning(RESERVATION.c.amount, RESERVATION.c.budget_period_id)
    ).all()
    for amount, period_id in held:
        release(session, period_id=period_id, amount=amount)
    return sum((amount for amount, _ in held), Decimal(0))


def settle_unknown(
    session: Session, *, job_id: str, team_id: int, amount_usd: Decimal, settings: Settings, now: datetime
) -> None:
    """Settle the worst case of calls whose worker died mid-call, out of the job's reservations.

    The dead worker's reservation still holds that worst case (it expires only after twice the item
    lease, see `reserve`), so the amount moves from reserved to settled and the invariant holds. If
    the reservation is gone, the amount is settled anyway (the provider may have billed it), and an
    `overshoot` event is recorded when that passes the limit.
    """
    period = current_period(session, team_id=team_id, now=now)
    if period is None or amount_usd <= 0:
        return
    amount = (amount_usd / usd_per_unit(period.currency, settings)).quantize(QUANTUM, rounding=ROUND_CEILING)
    left = amount
    held = session.execute(
        select(RESERVATION.c.id, RESERVATION.c.amount)
        .where(
            RESERVATION.c.job_id == job_id, RESERVATION.c.status == "held", RESERVATION.c.budget_period_id == period.id
        )
        .order_by(RESERVATION.c.created_at)
        .with_for_update()
    ).all()
    for row in held:
        if left <= 0:
            break
        take = min(left, row.amount)
        session.execute(
            update(RESERVATION).where(RESERVATION.c.id == row.id).values(amount=RESERVATION.c.amount - take)
        )
        _add(session, period.id, reserved=-take, settled=take)  # type: ignore[arg-type]
        left -= take
    if left > 0:
        _add(session, period.id, settled=left)  # type: ignore[arg-type]
        session.refresh(period)
        if period.settled + period.reserved > period.limit_amount:
            record_event(
                session,
                team_id=team_id,
                period=period.period_start,
                kind="overshoot",
                detail={
                    "job_id": job_id,
                    "unknown_calls_usd": str(amount_usd),
                    "settled": str(period.settled),
                    "limit": str(period.limit_amount),
                },
            )


def reserve(
    session: Session,
    *,
    period: BudgetPeriod,
    amount_usd: Decimal,
    job_id: str,
    settings: Settings,
    now: datetime,
    hold_s: float | None = None,
) -> Reservation | None:
    """Hold `amount_usd` against the period, atomically; None (and nothing held) when it does not fit.
    `hold_s`: how long it is held before given back as a dead worker's (default twice the item lease;
    a provider batch holds its worst case for its window)."""
    rate = usd_per_unit(period.currency, settings)
    amount = (amount_usd / rate).quantize(QUANTUM, rounding=ROUND_CEILING)
    if session.get_bind().dialect.name == "postgresql":
        row = session.execute(
            text(
                "UPDATE budget_period SET reserved = reserved + :amount "
                "WHERE id = :id AND settled + reserved + :amount <= limit_amount RETURNING id"
            ),
            {"amount": amount, "id": period.id},
        ).first()
        if row is None:
            return None
    else:  # SQLite: one writer at a time, so read-check-write is atomic enough
        fresh = session.execute(
            select(PERIOD.c.settled, PERIOD.c.reserved, PERIOD.c.limit_amount).where(PERIOD.c.id == period.id)
        ).one()
        if fresh.settled + fresh.reserved + amount > fresh.limit_amount:
            return None
        _add(session, period.id, reserved=amount)  # type: ignore[arg-type]
    # Twice the item lease: a dead worker's items are taken over (and its lost calls settled out of
    # this reservation) at one lease, before the reservation could be given back to others.
    reservation = Reservation(
        id=uuid.uuid4().hex,
        budget_period_id=period.id,  # type: ignore[arg-type]
        job_id=job_id,
        amount=amount,
        usd_per_unit=rate,
        expires_at=now + timedelta(seconds=hold_s if hold_s is not None else 2 * settings.lease_s),
    )
    session.add(reservation)
    session.flush()
    return reservation


def settle(session: Session, *, reservation_id: str, actual_usd: Decimal, now: datetime) -> dict[str, Any] | None:
    """Turn a reservation into settled spend of `actual_usd`, releasing the rest; at most once.

    Returns the soft-limit alert to send (once per period), or None.
    """
    # Conditional on the reservation's status, so a second settle of the same reservation is a no-op.
    for status in ("held", "expired"):
        row = session.execute(
            update(RESERVATION)
            .where(RESERVATION.c.id == reservation_id, RESERVATION.c.status == status)
            .values(status="settled")
            .returning(RESERVATION.c.amount, RESERVATION.c.usd_per_unit, RESERVATION.c.budget_period_id)
        ).first()
        if row is not None:
            break
    else:
        return None
    releases = status == "held"  # an expired reservation was already given back
    actual = (actual_usd / row.usd_per_unit).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
    before = session.execute(
        select(RESERVATION.c.settled_amount).where(RESERVATION.c.id == reservation_id)
    ).scalar_one()  # a part settled on the way (settle_part), if any
    session.execute(
        update(RESERVATION)
        .where(RESERVATION.c.id == reservation_id)
        .values(settled_amount=(before or Decimal(0)) + actual)
    )
    _add(session, row.budget_period_id, reserved=-row.amount if releases else Decimal(0), settled=actual)
    return _soft_alert(session, row.budget_period_id, now)


def settle_part(session: Session, *, reservation_id: str, actual_usd: Decimal) -> None:
    """Settle `actual_usd` out of a reservation before its batch ends (the calls a batch writes on
    the way), keeping the rest held: the spend is settled even if the worker dies before `settle`.

    What the reservation still holds covers it (moved from reserved to settled); beyond that, or once
    the reservation has expired (given back already), it is settled all the same: it was spent."""
    row = session.execute(
        select(
            RESERVATION.c.amount,
            RESERVATION.c.usd_per_unit,
            RESERVATION.c.budget_period_id,
            RESERVATION.c.status,
            RESERVATION.c.settled_amount,
        )
        .where(RESERVATION.c.id == reservation_id)
        .with_for_update()
    ).first()
    if row is None or row.status == "settled" or actual_usd <= 0:
        return
    part = (actual_usd / row.usd_per_unit).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
    take = min(part, row.amount) if row.status == "held" else Decimal(0)
    session.execute(
        update(RESERVATION)
        .where(RESERVATION.c.id == reservation_id)
        .values(amount=row.amount - take, settled_amount=(row.settled_amount or Decimal(0)) + part)
    )
    _add(session, row.budget_period_id, reserved=-take, settled=part)


def _add(session: Session, period_id: int, *, reserved: Decimal = Decimal(0), settled: Decimal = Decimal(0)) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("UPDATE budget_period SET reserved = reserved + :r, settled = settled + :s WHERE id = :id"),
            {"r": reserved, "s": settled, "id": period_id},
        )
        return
    row = session.execute(select(PERIOD.c.settled, PERIOD.c.reserved).where(PERIOD.c.id == period_id)).one()
    session.execute(
        update(PERIOD)
        .where(PERIOD.c.id == period_id)
        .values(reserved=row.reserved + reserved, settled=row.settled + settled)
    )


def _soft_alert(session: Session, period_id: int, now: datetime) -> dict[str, Any] | None:
    period = session.get(BudgetPeriod, period_id)
    assert period is not None
    session.refresh(period)
    if period.soft_pct is None or period.soft_alerted_at is not None:
        return None
    threshold = period.limit_amount * Decimal(str(period.soft_pct)) / 100
    if period.settled < threshold:
        return None
    claimed = session.execute(
        update(PERIOD)
        .where(PERIOD.c.id == period_id, PERIOD.c.soft_alerted_at.is_(None))
        .values(soft_alerted_at=now)
        .returning(PERIOD.c.id)
    ).first()
    if claimed is None:  # another worker sent it
        return None
    detail = {
        "team_id": period.team_id,
        "period": f"{period.period_start:%Y-%m}",
        "soft_pct": period.soft_pct,
        "settled": str(period.settled),
        "limit": str(period.limit_amount),
        "currency": period.currency,
    }
    record_event(session, team_id=period.team_id, period=period.period_start, kind="soft_limit", detail=detail)
    return detail


def record_event(session: Session, *, team_id: int, period: date, kind: str, detail: dict[str, Any]) -> None:
    session.add(BudgetEvent(team_id=team_id, period_start=period, kind=kind, detail=detail))
