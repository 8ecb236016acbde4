"""Daily rollups of call rows: what reports read.

Written in the same transaction as the calls' outcomes, so a rollup never disagrees with the
call rows it sums. One upsert per chunk (usually one row: one job, model, purpose and day).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, text
from sqlmodel import Session

from router.ledger.tables import CallRollup

ROLLUP = CallRollup.__table__  # type: ignore[attr-defined]
KEY = ("tenant_id", "team_id", "job_id", "model_id", "purpose", "day")
# How a billed answer that was not used ended, as reports and results name it; each has a count
# (`<outcome>_calls`) and a cost (`<outcome>_cost_usd`) in the rollup.
OUTCOMES = ("refused", "filtered", "blocked", "cut_off")
OUTCOME_COUNTS = tuple(f"{o}_calls" for o in OUTCOMES)
OUTCOME_COSTS = tuple(f"{o}_cost_usd" for o in OUTCOMES)
SUMS = (
    "calls",
    "failed_calls",
    "simulated_calls",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
    "failed_cost_usd",
    "baseline_cost_usd",
    *OUTCOME_COUNTS,
    *OUTCOME_COSTS,
    "batch_calls",
    "batch_cost_usd",
    "batch_saved_usd",
)
MTOK = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What a rollup needs of one finished call."""

    started_at: datetime
    failed: bool  # no usable answer (an error, an unknown outcome, or an unreadable answer)
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    simulated: bool = False  # answered by the sandbox
    reasoning_tokens: int = 0  # thinking, inside output_tokens
    call_id: str | None = None
    outcome: str | None = None  # one of OUTCOMES, on a failed call: a billed answer not used because of how it ended
    batch: bool = False  # a line of a provider batch
    batch_saved_usd: Decimal = Decimal(0)  # its cost at the standard price minus its cost (the batch discount)

    @classmethod
    def of_update(cls, update: dict[str, Any], *, started_at: datetime, answered: bool, **rest: Any) -> CallFacts:
        """The facts of a call from the outcome written to its row (`update`): its tokens and cost."""
        return cls(
            started_at=started_at,
            failed=not answered,
            input_tokens=update["input_tokens"],
            cached_input_tokens=update["cached_input_tokens"],
            output_tokens=update["output_tokens"],
            cost_usd=update["cost_usd"],
            reasoning_tokens=update["reasoning_tokens"],
            **rest,
        )


@dataclass(frozen=True, slots=True)
class BaselineRates:
    """The job's baseline model as its rollups price run calls: its rates at submit, and the thinking
    it would add to every answered call (router.catalog.ModelInfo.thinking), billed as output."""

    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    thinking_tokens: int = 0


def local_day(moment: datetime, timezone: str) -> date:
    """The calendar day of `moment` in `timezone` (a call at 23:59:59 local time belongs to that day)."""
    return moment.astimezone(ZoneInfo(timezone)).date()


def rollup_rows(
    calls: Iterable[CallFacts],
    *,
    tenant_id: int,
    team_id: int,
    job_id: str,
    model_id: str,
    provider: str,
    task: str,
    purpose: str,
    timezone: str,
    baseline_rates: BaselineRates | None,
    baseline_calls: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Sum `calls` into one row per local day.

    The baseline is what the job would have cost on its baseline model alone: one call per item. A
    cascade or a retry makes several calls for one item, so `baseline_calls`, when given, names the
    calls that stand for their items (each item's final call); the others add nothing to it.
    """
    rows: dict[date, dict[str, Any]] = {}
    for call in calls:
        day = local_day(call.started_at, timezone)
        row = rows.get(day)
        if row is None:
            row = rows[day] = {
                "tenant_id": tenant_id,
                "team_id": team_id,
                "job_id": job_id,
                "model_id": model_id,
                "purpose": purpose,
                "day": day,
                "provider": provider,
                "task": task,
                **{k: 0 for k in SUMS[:6]},
                "cost_usd": Decimal(0),
                "failed_cost_usd": Decimal(0),
                "baseline_cost_usd": Decimal(0),
                **{k: 0 for k in OUTCOME_COUNTS},
                **{k: Decimal(0) for k in OUTCOME_COSTS},
                "batch_calls": 0,
                "batch_cost_usd": Decimal(0),
                "batch_saved_usd": Decimal(0),
            }
        row["calls"] += 1
        row["simulated_calls"] += call.simulated
        row["input_tokens"] += call.input_tokens
        row["cached_input_tokens"] += call.cached_input_tokens
        row["output_tokens"] += call.output_tokens
        row["cost_usd"] += call.cost_usd
        if call.failed:
            row["failed_calls"] += 1
            row["failed_cost_usd"] += call.cost_usd
        if call.outcome is not None:  # a failed call's, so also in failed_calls and failed_cost_usd
            row[f"{call.outcome}_calls"] += 1
            row[f"{call.outcome}_cost_usd"] += call.cost_usd
        if call.batch:
            row["batch_calls"] += 1
            row["batch_cost_usd"] += call.cost_usd
            row["batch_saved_usd"] += call.batch_saved_usd
        if baseline_rates is not None and (baseline_calls is None or call.call_id in baseline_calls):
            # The same input, the same answer, and the baseline's own thinking in place of this call's.
            output = call.output_tokens - call.reasoning_tokens + (0 if call.failed else baseline_rates.thinking_tokens)
            row["baseline_cost_usd"] += (
                (call.input_tokens + call.cached_input_tokens) * baseline_rates.input_usd_per_mtok
                + output * baseline_rates.output_usd_per_mtok
            ) / MTOK
    return list(rows.values())


def upsert_sql(row: dict[str, Any], *, prefix: str) -> tuple[str, dict[str, Any]]:
    """Postgres: add one rollup row (INSERT ... ON CONFLICT DO UPDATE, exact NUMERIC sums) and its
    parameters, named with `prefix` so several can share one statement."""
    columns = list(row)
    sets = ", ".join(f"{c} = call_rollup.{c} + excluded.{c}" for c in SUMS)
    sql = (
        f"INSERT INTO call_rollup ({', '.join(columns)}) VALUES ({', '.join(f':{prefix}_{c}' for c in columns)}) "
        f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {sets}"
    )
    return sql, {f"{prefix}_{c}": v for c, v in row.items()}


def in_lock_order(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` sorted by their key. Every writer of a job's rollups upserts them in this one order: two
    transactions taking the same two rows in opposite orders deadlock, and Postgres breaks a deadlock
    only after deadlock_timeout (1 s), with every other writer of the job queued behind them."""
    return sorted(rows, key=lambda row: tuple(str(row[k]) for k in KEY))


def upsert_rollups(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Add `rows` to the rollup: one INSERT ... ON CONFLICT DO UPDATE on Postgres (exact NUMERIC
    sums); on SQLite, where money is text, read-add-write in Python (SQLite has one writer)."""
    if not rows:
        return
    rows = in_lock_order(rows)
    if session.get_bind().dialect.name == "postgresql":
        for row in rows:
            sql, params = upsert_sql(row, prefix="r")
            session.execute(text(sql), params)
        return
    for row in rows:
        where = [ROLLUP.c[k] == row[k] for k in KEY]
        found = session.execute(select(*(ROLLUP.c[s] for s in SUMS)).where(*where)).first()
        if found is None:
            session.execute(ROLLUP.insert().values(**row))
        else:
            merged = {s: getattr(found, s) + row[s] for s in SUMS}
            session.execute(ROLLUP.update().where(*where).values(**merged))
