"""Ledger sums for /metrics: all-time spend, tokens and calls per provider, model and tenant (from
the daily rollups, so a scrape reads a few rows per job, never the call rows), and items still open
per job state. Every worker writes the same ledger, so these figures add up across processes.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from router.ledger.tables import CallRollup, Job, Tenant

ROLLUP = CallRollup.__table__  # type: ignore[attr-defined]
JOB = Job.__table__  # type: ignore[attr-defined]
TENANT = Tenant.__table__  # type: ignore[attr-defined]


def spend_by_model(session: Session) -> list[Any]:
    """(provider, model_id, tenant, cost_usd, batch_cost_usd, batch_calls, failed_cost_usd, calls, failed_calls, refused_calls,
    filtered_calls, blocked_calls, cut_off_calls, input_tokens, cached_input_tokens, output_tokens)."""
    r = ROLLUP.c
    query = (
        select(
            r.provider,
            r.model_id,
            TENANT.c.name.label("tenant"),
            func.sum(r.cost_usd).label("cost_usd"),
            func.sum(r.batch_cost_usd).label("batch_cost_usd"),
            func.sum(r.batch_calls).label("batch_calls"),
            func.sum(r.failed_cost_usd).label("failed_cost_usd"),
            func.sum(r.calls).label("calls"),
            func.sum(r.failed_calls).label("failed_calls"),
            func.sum(r.refused_calls).label("refused_calls"),
            func.sum(r.filtered_calls).label("filtered_calls"),
            func.sum(r.blocked_calls).label("blocked_calls"),
            func.sum(r.cut_off_calls).label("cut_off_calls"),
            func.sum(r.input_tokens).label("input_tokens"),
            func.sum(r.cached_input_tokens).label("cached_input_tokens"),
            func.sum(r.output_tokens).label("output_tokens"),
        )
        .join(TENANT, TENANT.c.id == r.tenant_id)
        .group_by(r.provider, r.model_id, TENANT.c.name)
    )
    return list(session.execute(query).all())


def open_items_by_state(session: Session) -> list[tuple[str, int]]:
    """(job status, items not yet done or failed) over every job."""
    query = select(JOB.c.status, func.sum(JOB.c.n_items - JOB.c.n_done - JOB.c.n_failed)).group_by(JOB.c.status)
    return [(status, int(n or 0)) for status, n in session.execute(query).all()]


def job_rolled(session: Session, *, job_id: str, tenant_id: int, team_id: int) -> tuple[Decimal, list[tuple[str, int]]]:
    """A job's spend and its settled calls per model, most first, from its rollups: a few rows read
    through the rollup's primary key (tenant, team, job, ...), however many calls the job made. The
    spend equals the call rows' sum (repo.job_spend): rollups are written with the calls' outcomes."""
    r = ROLLUP.c
    rows = session.execute(
        select(r.model_id, func.sum(r.calls), func.sum(r.cost_usd))
        .where(r.tenant_id == tenant_id, r.team_id == team_id, r.job_id == job_id)
        .group_by(r.model_id)
    ).all()
    spent = sum((Decimal(row[2] or 0) for row in rows), Decimal(0))
    calls = sorted(((str(row[0]), int(row[1] or 0)) for row in rows), key=lambda mc: (-mc[1], mc[0]))
    return spent, calls
