"""Ledger sums for /metrics: all-time spend, tokens and calls per provider, model and tenant (from
the daily rollups, so a scrape reads a few rows per job, never the call rows), and items still open
per job state. Every worker writes the same ledger, so these figures add up across processes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from router.ledger.tables import CallRollup, Job, Tenant

ROLLUP = CallRollup.__table__  # type: ignore[attr-defined]
JOB = Job.__table__  # type: ignore[attr-defined]
TENANT = Tenant.__table__  # type: ignore[attr-defined]


def spend_by_model(session: Session) -> list[Any]:
    """(provider, model_id, tenant, cost_usd, failed_cost_usd, calls, failed_calls, refused_calls,
    filtered_calls, blocked_calls, cut_off_calls, input_tokens, cached_input_tokens, output_tokens)."""
    r = ROLLUP.c
    query = (
        select(
            r.provider,
            r.model_id,
            TENANT.c.name.label("tenant"),
            func.sum(r.cost_usd).label("cost_usd"),
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
