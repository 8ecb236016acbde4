"""Repository functions over the ledger: every read and write the engine and CLI make.

Hot paths (claiming a chunk, recording its calls) are single set-based statements or executemany
batches: one round trip per chunk, never one per item.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, case, func, insert, or_, select, text, update
from sqlmodel import Session
from sqlmodel import select as sm_select

from router.errors import InputError, NotFoundError
from router.ledger.budgets import parse_month
from router.ledger.db import execute_and_commit
from router.ledger.rollup import in_lock_order, upsert_rollups, upsert_sql
from router.ledger.tables import (
    BatchState,
    BudgetPeriod,
    BudgetPolicy,
    Call,
    CallMode,
    CallRollup,
    CallStatus,
    Item,
    ItemStatus,
    Job,
    JobEvent,
    JobStatus,
    ProviderBatch,
    QualityEstimate,
    Team,
    Tenant,
)
from router.ledger.types import JobSnapshot
from router.redact import is_control, printable

ITEM = Item.__table__  # type: ignore[attr-defined]
CALL = Call.__table__  # type: ignore[attr-defined]
JOB = Job.__table__  # type: ignore[attr-defined]
QE = QualityEstimate.__table__  # type: ignore[attr-defined]


# -- tenants and teams ---------------------------------------------------------------------------


def checked_name(name: str, *, what: str) -> str:
    """`name` without surrounding spaces; InputError if it is empty or holds a control character
    (ESC, a newline, a bidirectional override: router.redact.is_control), which a terminal would act on
    wherever the name is shown."""
    name = name.strip()
    if not name:
        raise InputError(f"a {what} needs a name", field="name")
    bad = sorted({printable(c) for c in name if is_control(c)})
    if bad:
        raise InputError(
            f"a {what} name cannot hold control characters ({', '.join(bad)} in '{printable(name)}')", field="name"
        )
    return name


def create_tenant(session: Session, *, name: str, timezone: str = "UTC") -> Tenant:
    """Create a tenant; a clear error if the name is taken, empty or holds a control character."""
    name = checked_name(name, what="tenant")
    if session.exec(sm_select(Tenant).where(Tenant.name == name)).first():
        raise InputError(f"tenant '{name}' already exists", field="name")
    tenant = Tenant(name=name, timezone=timezone)
    session.add(tenant)
    session.flush()
    return tenant


def create_team(session: Session, *, tenant: str, name: str) -> Team:
    """Create a team under `tenant`; a clear error if the name is taken, empty or holds a control character."""
    name = checked_name(name, what="team")
    owner = get_tenant(session, name=tenant)
    if session.exec(sm_select(Team).where(Team.tenant_id == owner.id, Team.name == name)).first():
        raise InputError(f"team '{name}' already exists in tenant '{tenant}'", field="name")
    assert owner.id is not None  # flushed rows have their ids
    team = Team(tenant_id=owner.id, name=name)
    session.add(team)
    session.flush()
    return team


def ensure_team(session: Session, *, tenant: str, team: str) -> Team:
    """The team, created with its tenant if missing (the demo's own team)."""
    owner = session.exec(sm_select(Tenant).where(Tenant.name == tenant)).first()
    if owner is None:
        owner = create_tenant(session, name=tenant)
    found = session.exec(sm_select(Team).where(Team.tenant_id == owner.id, Team.name == team)).first()
    return found if found is not None else create_team(session, tenant=tenant, name=team)


def get_tenant(session: Session, *, name: str) -> Tenant:
    tenant = session.exec(sm_select(Tenant).where(Tenant.name == name)).first()
    if tenant is None:
        raise NotFoundError(f"unknown tenant '{name}': create it with `pennyroute tenant create {name}`")
    return tenant


def find_team(session: Session, *, name: str, tenant: str | None = None) -> Team:
    """The team called `name` (in `tenant` when given); a clear error if none or ambiguous."""
    if tenant:
        get_tenant(session, name=tenant)  # an unknown tenant is named as such, not as an unknown team
    query = sm_select(Team, Tenant.name).join(Tenant, Team.tenant_id == Tenant.id).where(Team.name == name)  # type: ignore[arg-type]
    if tenant:
        query = query.where(Tenant.name == tenant)
    rows = session.exec(query).all()
    if not rows:
        hint = f" --tenant {tenant}" if tenant else " --tenant TENANT"
        raise NotFoundError(f"unknown team '{name}': create it with `pennyroute team create {name}{hint}`")
    if len(rows) > 1:
        tenants = ", ".join(sorted(r[1] for r in rows))
        raise InputError(f"team '{name}' exists in several tenants ({tenants}): name one with --tenant", field="team")
    return rows[0][0]


def list_teams(session: Session) -> list[tuple[str, str]]:
    query = sm_select(Tenant.name, Team.name).join(Team, Team.tenant_id == Tenant.id).order_by(Tenant.name, Team.name)  # type: ignore[arg-type]
    return [(row[0], row[1]) for row in session.exec(query).all()]


# -- jobs and items --------------------------------------------------------------------------------


def list_jobs(
    session: Session,
    *,
    tenant: str | None = None,
    team: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[Any]:
    """Jobs newest first, with tenant and team names and their spend so far; filters are exact."""
    tenant_t, team_t = Tenant.__table__, Team.__table__  # type: ignore[attr-defined]
    spend = (
        select(CALL.c.job_id, func.coalesce(func.sum(CALL.c.cost_usd), 0).label("spent_usd"))
        .group_by(CALL.c.job_id)
        .subquery()
    )
    query = (
        select(
            JOB.c.id,
            tenant_t.c.name.label("tenant"),
            team_t.c.name.label("team"),
            JOB.c.task,
            JOB.c.status,
            JOB.c.n_items,
            JOB.c.n_done,
            JOB.c.n_failed,
            JOB.c.model_id,
            JOB.c.simulated,
            JOB.c.created_at,
            func.coalesce(spend.c.spent_usd, 0).label("spent_usd"),
        )
        .join(team_t, team_t.c.id == JOB.c.team_id)
        .join(tenant_t, tenant_t.c.id == JOB.c.tenant_id)
        .outerjoin(spend, spend.c.job_id == JOB.c.id)
    )
    if tenant is not None:
        query = query.where(tenant_t.c.name == tenant)
    if team is not None:
        query = query.where(team_t.c.name == team)
    if status is not None:
        query = query.where(JOB.c.status == status)
    if since is not None:
        query = query.where(JOB.c.created_at >= since)
    if until is not None:
        query = query.where(JOB.c.created_at < until)
    return list(session.execute(query.order_by(JOB.c.created_at.desc(), JOB.c.id).limit(limit)).all())


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"unknown job '{job_id}'")
    return job


def job_for_chunk(session: Session, job_id: str) -> JobSnapshot | None:
    """The job columns a chunk needs, its tenant's time zone, and whether its team has a budget:
    one narrow Core query per chunk. None for an unknown job."""
    tenant = Tenant.__table__  # type: ignore[attr-defined]
    policy = BudgetPolicy.__table__  # type: ignore[attr-defined]
    row = session.execute(
        select(
            JOB.c.id,
            JOB.c.status,
            JOB.c.model_id,
            JOB.c.tenant_id,
            JOB.c.team_id,
            JOB.c.task,
            JOB.c.labels,
            JOB.c.max_words,
            JOB.c.min_quality,
            JOB.c.simulated,
            JOB.c.route,
            JOB.c.stopped_providers,
            JOB.c.baseline_model_id,
            JOB.c.baseline_input_usd_per_mtok,
            JOB.c.baseline_output_usd_per_mtok,
            tenant.c.timezone,
            policy.c.team_id.is_not(None).label("has_budget"),
            JOB.c.mode,
            JOB.c.deadline_at,
            JOB.c.execution,
            JOB.c.constraints,
            JOB.c.max_output_tokens,
        )
        .join(tenant, tenant.c.id == JOB.c.tenant_id)
        .outerjoin(policy, policy.c.team_id == JOB.c.team_id)
        .where(JOB.c.id == job_id)
    ).first()
    if row is None:
        return None
    return JobSnapshot(
        id=row.id,
        status=row.status,
        model_id=row.model_id,
        tenant_id=row.tenant_id,
        team_id=row.team_id,
        task=row.task,
        labels=tuple(row.labels or ()),
        max_words=row.max_words,
        min_quality=row.min_quality,
        simulated=row.simulated,
        route=row.route,
        stopped_providers=dict(row.stopped_providers or {}),
        baseline_model_id=row.baseline_model_id,
        baseline_input_usd_per_mtok=row.baseline_input_usd_per_mtok,
        baseline_output_usd_per_mtok=row.baseline_output_usd_per_mtok,
        timezone=row.timezone,
        has_budget=bool(row.has_budget),
        mode=row.mode,
        deadline_at=row.deadline_at,
        execution=row.execution,
        regions=tuple((row.constraints or {}).get("regions") or ()),
        max_output_tokens=row.max_output_tokens,
    )


def release_items(session: Session, items: Sequence[tuple[int, int]]) -> None:
    """Hand claimed items back, untried (budget, stopped provider): pending, no lease, try not
    counted. `items` are (id, tries when claimed): an item taken over since is left alone."""
    if items:
        held = {item_id: attempts for item_id, attempts in items}
        session.execute(
            update(ITEM)
            .where(
                ITEM.c.id == bindparam("b_id"),
                ITEM.c.attempts == bindparam("b_held"),
                ITEM.c.status == ItemStatus.RUNNING,
            )
            .values(status=ItemStatus.PENDING, lease_until=None, attempts=ITEM.c.attempts - 1),
            [{"b_id": item_id, "b_held": attempts} for item_id, attempts in held.items()],
        )


def pause_job(session: Session, job_id: str, *, reason: str = "budget") -> bool:
    """Mark a running job paused, waiting for `reason` (budget | provider); True if this call paused it."""
    row = session.execute(
        update(JOB)
        .where(JOB.c.id == job_id, JOB.c.status == JobStatus.RUNNING)
        .values(status=JobStatus.PAUSED, pause_reason=reason)
        .returning(JOB.c.id)
    ).first()
    return row is not None


def add_job_event(session: Session, *, job_id: str, kind: str, detail: dict[str, Any]) -> None:
    """Record something the job's owner should see (drift, a provider stopped, a pause, a re-route)."""
    session.add(JobEvent(job_id=job_id, kind=kind, detail=detail))
    session.flush()


def job_events(session: Session, job_id: str) -> list[JobEvent]:
    return list(session.exec(sm_select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all())  # type: ignore[arg-type]


def add_drift_counts(session: Session, *, job_id: str, model_id: str, checked: int, agreed: int) -> None:
    """Add a batch's drift checks (items also answered by the reference model) to the job's counts,
    only while the job still runs on `model_id`, the model the batch ran on: a batch that started
    before the job was re-routed must not charge the old model's disagreements to the new one."""
    session.execute(
        update(JOB)
        .where(JOB.c.id == job_id, JOB.c.model_id == model_id)
        .values(n_drift_checked=JOB.c.n_drift_checked + checked, n_drift_agreed=JOB.c.n_drift_agreed + agreed)
    )


def drift_counts(session: Session, *, job_id: str) -> Any | None:
    """The job's status, drift counts (n_drift_checked, n_drift_agreed) and bar (min_quality), read
    without a lock: most batches only look. None for an unknown job."""
    return session.execute(
        select(JOB.c.status, JOB.c.n_drift_checked, JOB.c.n_drift_agreed, JOB.c.min_quality).where(JOB.c.id == job_id)
    ).first()


def lock_job_for_reroute(session: Session, *, job_id: str) -> Any | None:
    """What re-routing a job reads (status, drift counts, bar, route, model, tenant), with its row
    locked until the transaction ends, so that two batches cannot both re-route it. None for an
    unknown job."""
    return session.execute(
        select(
            JOB.c.id,
            JOB.c.status,
            JOB.c.tenant_id,
            JOB.c.model_id,
            JOB.c.route,
            JOB.c.n_drift_checked,
            JOB.c.n_drift_agreed,
            JOB.c.min_quality,
        )
        .where(JOB.c.id == job_id)
        .with_for_update()
    ).first()


def reroute_job(session: Session, *, job_id: str, route: dict[str, Any], model_id: str) -> None:
    """Run the rest of the job on `route` (whose first model is `model_id`); call with its row locked
    (lock_job_for_reroute). Its drift counts restart at zero: the new route earns its own record."""
    session.execute(
        update(JOB)
        .where(JOB.c.id == job_id)
        .values(route=route, model_id=model_id, n_drift_checked=0, n_drift_agreed=0)
    )


def upsert_quality_estimate(session: Session, *, values: dict[str, Any]) -> None:
    """Keep the newest estimate per (tenant, signature, model)."""
    key = (
        (QE.c.tenant_id == values["tenant_id"])
        & (QE.c.signature == values["signature"])
        & (QE.c.model_id == values["model_id"])
    )
    found = session.execute(select(QE.c.id).where(key)).first()
    if found is None:
        session.execute(insert(QE).values(**values))
    else:
        session.execute(update(QE).where(QE.c.id == found.id).values(**values))


def quality_estimates(session: Session, *, tenant_id: int | None = None, signature: str | None = None) -> list[Any]:
    """Stored estimates with their tenant's name, newest first."""
    tenant = Tenant.__table__  # type: ignore[attr-defined]
    query = select(QE, tenant.c.name.label("tenant")).join(tenant, tenant.c.id == QE.c.tenant_id)
    if tenant_id is not None:
        query = query.where(QE.c.tenant_id == tenant_id)
    if signature is not None:
        query = query.where(QE.c.signature == signature)
    return list(session.execute(query.order_by(tenant.c.name, QE.c.signature, QE.c.mean.desc())).all())


def mark_drifted(
    session: Session, *, tenant_id: int, model_ids: Sequence[str], now: datetime, signature: str | None = None
) -> None:
    """Mark a tenant's quality estimates of `model_ids` as drifted: later jobs re-measure them."""
    stmt = update(QE).where(QE.c.tenant_id == tenant_id, QE.c.model_id.in_(list(model_ids)), QE.c.drifted_at.is_(None))
    if signature is not None:
        stmt = stmt.where(QE.c.signature == signature)
    session.execute(stmt.values(drifted_at=now))


def stop_provider(session: Session, *, job_id: str, provider: str, why: str) -> None:
    """Take no more calls to `provider` for this job (a bad key, a spent quota), and say why."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or provider in (job.stopped_providers or {}):
        return
    job.stopped_providers = {**(job.stopped_providers or {}), provider: why}
    session.add(job)
    add_job_event(session, job_id=job_id, kind="provider_stopped", detail={"provider": provider, "why": why})


def paused_jobs(session: Session, *, team_id: int) -> list[str]:
    return [
        r[0]
        for r in session.execute(select(JOB.c.id).where(JOB.c.team_id == team_id, JOB.c.status == JobStatus.PAUSED))
    ]


def budget_rows(session: Session, *, month: str | None) -> list[Any]:
    """Budget periods with their tenant and team names: the given month's, or each team's latest."""
    period = BudgetPeriod.__table__  # type: ignore[attr-defined]
    team, tenant = Team.__table__, Tenant.__table__  # type: ignore[attr-defined]
    query = (
        select(
            tenant.c.name.label("tenant"),
            team.c.name.label("team"),
            period.c.period_start,
            period.c.limit_amount,
            period.c.currency,
            period.c.settled,
            period.c.reserved,
            period.c.soft_pct,
            period.c.soft_alerted_at,
        )
        .join(team, team.c.id == period.c.team_id)
        .join(tenant, tenant.c.id == team.c.tenant_id)
        .order_by(tenant.c.name, team.c.name, period.c.period_start)
    )
    if month:
        query = query.where(period.c.period_start == parse_month(month))
    rows = session.execute(query).all()
    if month:
        return list(rows)
    latest: dict[tuple[str, str], Any] = {}
    for row in rows:
        latest[(row.tenant, row.team)] = row
    return list(latest.values())


def resume_job(session: Session, job_id: str) -> Job:
    """Mark a paused job running again; the caller dispatches its chunks."""
    job = get_job(session, job_id)
    if job.status == JobStatus.PAUSED:
        job.status = JobStatus.RUNNING
        job.pause_reason = None
        job.stopped_providers = None  # resuming says the provider was fixed: try it again
        session.add(job)
    return job


def recalibrate_job(session: Session, job_id: str) -> bool:
    """Mark a job that stopped with no model calibrating again; True if it was one (the caller hands its calibration over)."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status != JobStatus.NO_MODEL:
        return False
    job.status, job.finished_at = JobStatus.CALIBRATING, None
    session.add(job)
    return True


ITEM_COLUMNS = ("job_id", "seq", "ext_id", "text", "gold", "status", "attempts")


def insert_items(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert a batch of item rows (tuples in ITEM_COLUMNS order), inside the session's transaction.

    Postgres: COPY, several times faster than INSERT for the millions of rows a big job has.
    Elsewhere: one executemany.
    """
    if not rows:
        return
    if _is_postgres(session):
        raw = session.connection().connection.driver_connection
        assert raw is not None  # a live psycopg connection inside the session's transaction
        with raw.cursor() as cursor, cursor.copy(f"COPY item ({', '.join(ITEM_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    session.execute(insert(ITEM), [dict(zip(ITEM_COLUMNS, row, strict=True)) for row in rows])


def in_open_batch() -> Any:
    """An item with a line in a provider batch not yet ingested (a call of mode batch still in flight):
    the batch's poller, not a lease, says when it is done, so it is never taken over as a dead
    worker's (its calls are not lost: they are at the provider)."""
    return (
        select(CALL.c.id)
        .where(CALL.c.item_id == ITEM.c.id, CALL.c.status == CallStatus.IN_FLIGHT, CALL.c.mode == CallMode.BATCH)
        .exists()
    )


def claim_items(session: Session, *, job_id: str, lo: int, hi: int, now: datetime, lease_until: datetime) -> list[Any]:
    """Claim the chunk's items that are pending, or whose holder's lease ran out; return them.

    One statement: two workers given the same chunk (a message delivered twice) claim disjoint sets.
    """
    stmt = (
        update(ITEM)
        .where(
            ITEM.c.job_id == job_id,
            ITEM.c.seq >= lo,
            ITEM.c.seq < hi,
            or_(
                ITEM.c.status == ItemStatus.PENDING,
                (ITEM.c.status == ItemStatus.RUNNING) & (ITEM.c.lease_until < now) & ~in_open_batch(),
            ),
        )
        .values(status=ItemStatus.RUNNING, lease_until=lease_until, attempts=ITEM.c.attempts + 1)
        .returning(ITEM.c.id, ITEM.c.seq, ITEM.c.text, ITEM.c.attempts)
    )
    rows = session.execute(stmt).all()
    return sorted(rows, key=lambda r: r.seq)


def claim_next(
    session: Session, *, job_id: str, after_seq: int, limit: int, now: datetime, lease_until: datetime
) -> list[Any]:
    """Claim up to `limit` pending items of a running job with seq above `after_seq`, lowest first:
    a chunk whose own items are nearly done takes the next ones, so its thread does not idle on its
    last slow calls. Rows other claimers hold are skipped, not waited for (Postgres: SKIP LOCKED);
    the chunk those items were planned for finds them claimed and has nothing to do."""
    candidates = (
        select(ITEM.c.id)
        .where(ITEM.c.job_id == job_id, ITEM.c.seq > after_seq, ITEM.c.status == ItemStatus.PENDING)
        .order_by(ITEM.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    running = select(JOB.c.id).where(JOB.c.id == job_id, JOB.c.status == JobStatus.RUNNING).exists()
    stmt = (
        update(ITEM)
        .where(ITEM.c.id.in_(candidates.scalar_subquery()), ITEM.c.status == ItemStatus.PENDING, running)
        .values(status=ItemStatus.RUNNING, lease_until=lease_until, attempts=ITEM.c.attempts + 1)
        .returning(ITEM.c.id, ITEM.c.seq, ITEM.c.text, ITEM.c.attempts)
    )
    return sorted(session.execute(stmt).all(), key=lambda r: r.seq)


# How a failed item's error reads, by kind (router/providers/base.py Completion.unusable and cut_reason
# write the first four; engine/rounds.py the next two), first match wins; the rest are "other".
FAILURE_KINDS = (
    ("refused by the model", "%refused by the model%"),
    ("withheld by a content filter", "%content filter%"),
    ("prompt blocked", "%prompt blocked%"),
    ("cut off by the output cap", "%cut off by the output cap%"),
    ("billed but unreadable", "%unreadable%"),
    ("cancelled", "cancelled%"),
)


def failure_kinds(session: Session, job_id: str) -> dict[str, int]:
    """The job's failed items counted by what failed them (FAILURE_KINDS, else "other"), most first."""
    kind = case(*((ITEM.c.error.like(pattern), name) for name, pattern in FAILURE_KINDS), else_="other")
    rows = session.execute(
        select(kind.label("kind"), func.count())
        .where(ITEM.c.job_id == job_id, ITEM.c.status == ItemStatus.FAILED)
        .group_by(kind)
    ).all()
    return dict(sorted(((str(k), int(n)) for k, n in rows), key=lambda kv: (-kv[1], kv[0])))


def finished_count(session: Session, job_id: str) -> int:
    """How many of the job's items are finished (done or failed)."""
    return int(session.execute(select(JOB.c.n_done + JOB.c.n_failed).where(JOB.c.id == job_id)).scalar() or 0)


def job_status(session: Session, job_id: str) -> str | None:
    return session.execute(select(JOB.c.status).where(JOB.c.id == job_id)).scalar()


def fail_items(
    session: Session,
    *,
    job_id: str,
    item_ids: Sequence[int] | None,
    error: str,
    now: datetime,
    only_status: Sequence[str] = (ItemStatus.PENDING, ItemStatus.RUNNING),
) -> int:
    """Mark items failed with `error` (all of the job's items in `only_status` when `item_ids` is None)
    and count them on the job; returns how many."""
    stmt = update(ITEM).where(ITEM.c.job_id == job_id, ITEM.c.status.in_(list(only_status)))
    if item_ids is not None:
        stmt = stmt.where(ITEM.c.id.in_(list(item_ids)))
    count = session.execute(
        stmt.values(status=ItemStatus.FAILED, error=error, finished_at=now, lease_until=None)
    ).rowcount  # type: ignore[attr-defined]
    if count:
        session.execute(update(JOB).where(JOB.c.id == job_id).values(n_failed=JOB.c.n_failed + count))
    return int(count)


def lost_calls(session: Session, item_ids: Sequence[int]) -> list[Any]:
    """Calls still in flight for items being taken over: their worker died mid-call (the caller
    records them as unknown, at their worst case)."""
    if not item_ids:
        return []
    return list(
        session.execute(
            select(
                CALL.c.id,
                CALL.c.item_id,
                CALL.c.model_id,
                CALL.c.provider,
                CALL.c.purpose,
                CALL.c.started_at,
                CALL.c.input_usd_per_mtok,
                CALL.c.output_usd_per_mtok,
                CALL.c.price_multiplier,
            ).where(CALL.c.item_id.in_(list(item_ids)), CALL.c.status == CallStatus.IN_FLIGHT)
        ).all()
    )


def insert_calls(session: Session, *, common: dict[str, Any], ids: Sequence[str], item_ids: Sequence[int]) -> None:
    """Record calls (status in_flight) before they are made. `common` holds the columns all share.

    Postgres: one INSERT ... SELECT FROM unnest(ids, item_ids); elsewhere one executemany.
    """
    if not ids:
        return
    if _is_postgres(session):
        columns = list(common)
        select_list = ", ".join(f":{c}" for c in columns)
        session.execute(
            text(
                f"INSERT INTO call (id, item_id, {', '.join(columns)}) "
                f"SELECT v.id, v.item_id, {select_list} FROM unnest(CAST(:ids AS text[]), CAST(:item_ids AS bigint[])) AS v(id, item_id)"
            ).bindparams(*(bindparam(c, type_=CALL.c[c].type) for c in columns)),
            {"ids": array_literal(ids, "text"), "item_ids": array_literal(item_ids, "bigint"), **common},
        )
        return
    session.execute(insert(CALL), [{**common, "id": i, "item_id": item} for i, item in zip(ids, item_ids, strict=True)])


# Columns written when calls finish, with their Postgres array types for unnest.
_CALL_OUTCOME = {
    "status": "text",
    "input_tokens": "int",
    "cached_input_tokens": "int",
    "cache_write_tokens": "int",
    "output_tokens": "int",
    "reasoning_tokens": "int",
    "usage_estimated": "bool",
    "cost_usd": "numeric",
    "latency_ms": "int",
    "error": "text",
    "finish": "text",
    "finished_at": "timestamptz",
}
_ITEM_OUTCOME = {
    "status": "text",
    "output": "text",
    "error": "text",
    "final_call_id": "text",
    "finished_at": "timestamptz",
}


def finish_calls(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write calls' outcomes onto their rows (only rows still in flight), in one statement on Postgres."""
    _bulk_update(session, "call", CALL, _CALL_OUTCOME, rows, only_in_flight=True)


def finish_items(session: Session, rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """Write items' outcomes (and release their lease), only where the writer still holds them;
    returns (done, failed) as written."""
    done_rows = [r for r in rows if r["status"] == ItemStatus.DONE]
    failed_rows = [r for r in rows if r["status"] != ItemStatus.DONE]
    return (
        _bulk_update(session, "item", ITEM, _ITEM_OUTCOME, done_rows, only_in_flight=False),
        _bulk_update(session, "item", ITEM, _ITEM_OUTCOME, failed_rows, only_in_flight=False),
    )


def array_literal(values: Sequence[Any], kind: str) -> str:
    """A Postgres array literal ('{...}') for `values` of one `kind` (the SQL casts it).

    Built here rather than by psycopg's list adapter, which inspects every element and cost about
    40 microseconds an item on the hot path (profiled). Text is always quoted, with backslashes and
    quotes escaped; None is NULL; timestamps are ISO 8601 with their offset; Decimals exact.
    """
    out = []
    for value in values:
        if value is None:
            out.append("NULL")
        elif kind == "bool":
            out.append("t" if value else "f")
        elif kind in ("int", "bigint", "numeric"):
            out.append(str(value))
        elif kind == "timestamptz":
            out.append(f'"{value.isoformat()}"')
        else:
            text_value = str(value).replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'"{text_value}"')
    return "{" + ",".join(out) + "}"


def _unnest_update(
    table_name: str, fields: dict[str, str], rows: Sequence[dict[str, Any]], *, prefix: str
) -> tuple[str, dict[str, Any]]:
    """One Postgres UPDATE setting `fields` on many rows from parallel arrays (unnest), and its
    parameters (named with `prefix`, so several can share one statement).

    Call rows are only written while in flight. Item rows are only written by their holder: the
    item must still be pending or running with the try count (`held`) it was claimed with, so a
    worker whose lease ran out (its items taken over) cannot write over the new holder's outcome;
    they also give up their lease."""
    id_type = "text" if table_name == "call" else "bigint"
    columns = {**fields, "held": "int"} if table_name == "item" else fields
    arrays = ", ".join(f"CAST(:{prefix}_{f} AS {t}[])" for f, t in columns.items())
    sets = ", ".join(f"{f} = v.{f}" for f in fields) + (", lease_until = NULL" if table_name == "item" else "")
    if table_name == "call":
        guard = f" AND call.status = '{CallStatus.IN_FLIGHT}'"
    else:
        guard = f" AND item.attempts = v.held AND item.status IN ('{ItemStatus.PENDING}', '{ItemStatus.RUNNING}')"
    params: dict[str, Any] = {f"{prefix}_ids": array_literal([r["id"] for r in rows], id_type)}
    for f, kind in columns.items():
        params[f"{prefix}_{f}"] = array_literal([r[f] for r in rows], kind)
    sql = (
        f"UPDATE {table_name} SET {sets} FROM unnest(CAST(:{prefix}_ids AS {id_type}[]), {arrays}) "
        f"AS v(id, {', '.join(columns)}) WHERE {table_name}.id = v.id{guard}"
    )
    return sql, params


def _bulk_update(
    session: Session,
    name: str,
    table: Any,
    fields: dict[str, str],
    rows: Sequence[dict[str, Any]],
    *,
    only_in_flight: bool,
) -> int:
    """Write rows as `_unnest_update` says (same guards); returns how many rows were written."""
    if not rows:
        return 0
    if _is_postgres(session):
        sql, params = _unnest_update(name, fields, rows, prefix="u")
        return int(session.execute(text(sql), params).rowcount)  # type: ignore[attr-defined]
    values: dict[str, Any] = {f: bindparam(f"b_{f}") for f in fields}
    stmt = update(table).where(table.c.id == bindparam("b_id"))
    keys: tuple[str, ...] = ("id", *fields)
    if name == "item":
        values["lease_until"] = None
        stmt = stmt.where(
            table.c.attempts == bindparam("b_held"), table.c.status.in_([ItemStatus.PENDING, ItemStatus.RUNNING])
        )
        keys = (*keys, "held")
    if only_in_flight:
        stmt = stmt.where(table.c.status == CallStatus.IN_FLIGHT)
    written = 0
    for row in rows:  # one by one: SQLite's executemany does not report how many rows matched
        written += int(session.execute(stmt.values(values), {f"b_{k}": row[k] for k in keys}).rowcount)  # type: ignore[attr-defined]
    return written


def finish_batch(
    session: Session,
    *,
    job_id: str,
    calls: Sequence[dict[str, Any]],
    items: Sequence[dict[str, Any]],
    rollups: Sequence[dict[str, Any]],
    now: datetime,
    commit: bool = False,
) -> None:
    """Record a batch's outcome: call rows, item rows, the job's counts and the daily rollups.

    Postgres: one statement (data-modifying CTEs), one round trip. Elsewhere: one statement each.
    `commit`: it is the transaction's last statement; on Postgres it is committed in the same round
    trip (db.execute_and_commit), so the job's row and rollups are locked only while it runs.
    """
    if not _is_postgres(session):
        finish_calls(session, calls)
        written_done, written_failed = finish_items(session, items)
        count_finished(session, job_id=job_id, done=written_done, failed=written_failed, now=now)
        upsert_rollups(session, rollups)
        return
    params: dict[str, Any] = {"job_id": job_id, "now": now}
    parts = []
    for name, table_name, fields, rows in (("c", "call", _CALL_OUTCOME, calls), ("i", "item", _ITEM_OUTCOME, items)):
        if rows:
            sql, update_params = _unnest_update(table_name, fields, rows, prefix=name)
            params.update(update_params)
            parts.append(f"{name} AS ({sql} RETURNING {'item.status' if name == 'i' else '1'})")
    if items:
        # The job counts what was written: an item its writer no longer held is not counted twice.
        done_sql = f"(SELECT count(*) FROM i WHERE status = '{ItemStatus.DONE}')"
        failed_sql = f"(SELECT count(*) FROM i WHERE status <> '{ItemStatus.DONE}')"
        total = f"n_done + n_failed + {done_sql} + {failed_sql}"
        parts.append(
            f"j AS (UPDATE job SET n_done = n_done + {done_sql}, n_failed = n_failed + {failed_sql}, "
            f"status = CASE WHEN {total} >= n_items AND status IN ('{JobStatus.RUNNING}', '{JobStatus.PAUSED}') "
            f"THEN '{JobStatus.DONE}' ELSE status END, "
            f"finished_at = CASE WHEN {total} >= n_items AND finished_at IS NULL THEN CAST(:now AS timestamptz) ELSE finished_at END "
            f"WHERE id = :job_id RETURNING 1)"
        )
    for k, row in enumerate(in_lock_order(rollups)):
        sql, rollup_params = upsert_sql(row, prefix=f"r{k}")
        params.update(rollup_params)
        parts.append(f"r{k} AS ({sql} RETURNING 1)")
    if parts and commit:
        execute_and_commit(session, f"WITH {', '.join(parts)} SELECT 1", params)
    elif parts:
        session.execute(text(f"WITH {', '.join(parts)} SELECT 1"), params)


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def count_finished(session: Session, *, job_id: str, done: int, failed: int, now: datetime) -> None:
    """Add a chunk's finished items to the job's counts; the job is done when all items are."""
    if not done and not failed:
        return
    total = JOB.c.n_done + JOB.c.n_failed + done + failed
    session.execute(
        update(JOB)
        .where(JOB.c.id == job_id)
        .values(
            n_done=JOB.c.n_done + done,
            n_failed=JOB.c.n_failed + failed,
            status=case(
                ((total >= JOB.c.n_items) & JOB.c.status.in_([JobStatus.RUNNING, JobStatus.PAUSED]), JobStatus.DONE),
                else_=JOB.c.status,
            ),
            finished_at=case(((total >= JOB.c.n_items) & JOB.c.finished_at.is_(None), now), else_=JOB.c.finished_at),
        )
    )


# -- money ------------------------------------------------------------------------------------------


def sum_money(session: Session, column: Any, *where: Any) -> Decimal:
    """Exact SUM of a Money column: NUMERIC sum on Postgres; summed as Decimal on SQLite (text there)."""
    if session.get_bind().dialect.name == "sqlite":
        return sum((Decimal(v) for (v,) in session.execute(select(column).where(*where)) if v is not None), Decimal(0))
    value = session.execute(select(func.coalesce(func.sum(column), 0)).where(*where)).scalar_one()
    return Decimal(value)


def job_spend(session: Session, job_id: str) -> Decimal:
    return sum_money(session, CALL.c.cost_usd, CALL.c.job_id == job_id)


def job_models(session: Session, job_id: str) -> list[tuple[str, int]]:
    """Models the job's calls went to, with their call counts."""
    rows = session.execute(
        select(CALL.c.model_id, func.count()).where(CALL.c.job_id == job_id).group_by(CALL.c.model_id)
    ).all()
    return [(r[0], r[1]) for r in rows]


def job_quality_facts(session: Session, job_id: str) -> dict[str, Any]:
    """What a job's quality report needs from the ledger: who answered the items, calls and spend
    by purpose and model, and the baseline cost of its run calls (from the rollups)."""
    answered = session.execute(
        select(CALL.c.model_id, func.count())
        .select_from(ITEM.join(CALL, CALL.c.id == ITEM.c.final_call_id))
        .where(ITEM.c.job_id == job_id, ITEM.c.status == ItemStatus.DONE)
        .group_by(CALL.c.model_id)
    ).all()
    by_purpose = session.execute(
        select(CALL.c.purpose, CALL.c.model_id, func.count(), func.coalesce(func.sum(CALL.c.cost_usd), 0))
        .where(CALL.c.job_id == job_id)
        .group_by(CALL.c.purpose, CALL.c.model_id)
    ).all()
    rollup = CallRollup.__table__  # type: ignore[attr-defined]
    baseline = sum_money(session, rollup.c.baseline_cost_usd, rollup.c.job_id == job_id, rollup.c.purpose == "run")
    return {
        "answered": {r[0]: r[1] for r in answered},
        "calls": [(r[0], r[1], r[2], Decimal(str(r[3]))) for r in by_purpose],
        "baseline_usd": baseline,
    }


def iter_results(session: Session, job_id: str, batch: int = 2000) -> Iterable[tuple[Any, Decimal]]:
    """Items in order with their final call and their total cost (retries included), streamed in
    batches: a job can hold millions of items."""
    last = -1
    while True:
        rows = session.execute(
            select(
                ITEM.c.id,
                ITEM.c.seq,
                ITEM.c.ext_id,
                ITEM.c.status,
                ITEM.c.output,
                ITEM.c.error,
                ITEM.c.gold,
                ITEM.c.attempts,
                CALL.c.model_id,
                CALL.c.input_tokens,
                CALL.c.cached_input_tokens,
                CALL.c.output_tokens,
                CALL.c.simulated,
                CALL.c.finish,
            )
            .select_from(ITEM.outerjoin(CALL, CALL.c.id == ITEM.c.final_call_id))
            .where(ITEM.c.job_id == job_id, ITEM.c.seq > last)
            .order_by(ITEM.c.seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        costs: dict[int, Decimal] = {}
        for item_id, cost in session.execute(
            select(CALL.c.item_id, CALL.c.cost_usd).where(CALL.c.item_id.in_([r.id for r in rows]))
        ):
            costs[item_id] = costs.get(item_id, Decimal(0)) + Decimal(cost)
        for row in rows:
            yield row, costs.get(row.id, Decimal(0))
        last = rows[-1].seq


# -- job lifecycle: submit, calibration, resume, cancel, sweep -------------------------------------


def add_job(session: Session, job: Job) -> Job:
    """Add a new job row and flush it, so its items can reference it in the same transaction."""
    session.add(job)
    session.flush()
    return job


def find_job(session: Session, job_id: str, *, for_update: bool = False) -> Job | None:
    """The job row, or None; `for_update` locks it until the transaction ends."""
    return session.get(Job, job_id, with_for_update=for_update)


def update_job(session: Session, job_id: str, **values: Any) -> None:
    """Set columns of one job row (keyword names are Job's columns)."""
    session.execute(update(JOB).where(JOB.c.id == job_id).values(**values))


def interrupt_calibration_calls(session: Session, *, job_id: str, now: datetime) -> None:
    """Calibration calls a cut-short run left in flight: their outcome is unknown (never charged twice)."""
    session.execute(
        update(CALL)
        .where(CALL.c.job_id == job_id, CALL.c.purpose == "calibration", CALL.c.status == CallStatus.IN_FLIGHT)
        .values(status=CallStatus.UNKNOWN, error="calibration interrupted", finished_at=now)
    )


def calibration_sample(session: Session, *, job_id: str, mode: str, limit: int | None = None) -> list[Any]:
    """The items a calibration measures on: every labelled item (gold; the first `limit` when given),
    or an evenly spread sample of `limit` items, every k-th (reference), not just the file's first lines."""
    query = select(ITEM.c.id, ITEM.c.seq, ITEM.c.text, ITEM.c.gold, ITEM.c.attempts).where(ITEM.c.job_id == job_id)
    if mode == "gold":
        return list(session.execute(query.where(ITEM.c.gold.is_not(None)).order_by(ITEM.c.seq).limit(limit)).all())
    n_items = session.execute(select(JOB.c.n_items).where(JOB.c.id == job_id)).scalar() or 0
    step = max(1, n_items // (limit or n_items or 1))
    return list(session.execute(query.where(ITEM.c.seq % step == 0).order_by(ITEM.c.seq).limit(limit)).all())


def close_labelled(session: Session, *, job_id: str, now: datetime) -> int:
    """Labelled items still pending are done with their gold label as the answer (no call is made:
    the answer is known); returns how many. Their result says so (router/jobs/results.py)."""
    return int(
        session.execute(
            update(ITEM)
            .where(ITEM.c.job_id == job_id, ITEM.c.gold.is_not(None), ITEM.c.status == ItemStatus.PENDING)
            .values(status=ItemStatus.DONE, output=ITEM.c.gold, error=None, finished_at=now, lease_until=None)
        ).rowcount  # type: ignore[attr-defined]
        or 0
    )


def count_gold(session: Session, job_id: str) -> int:
    """How many of the job's items carry a gold label."""
    return int(
        session.execute(select(func.count()).where(ITEM.c.job_id == job_id, ITEM.c.gold.is_not(None))).scalar() or 0
    )


def close_job(session: Session, *, job_id: str, pending_error: str, now: datetime) -> None:
    """End a running job now: its pending items fail with `pending_error`, and it is done."""
    left = session.execute(
        update(ITEM)
        .where(ITEM.c.job_id == job_id, ITEM.c.status == ItemStatus.PENDING)
        .values(status=ItemStatus.FAILED, error=pending_error, finished_at=now)
    ).rowcount  # type: ignore[attr-defined]
    session.execute(
        update(JOB)
        .where(JOB.c.id == job_id, JOB.c.status == JobStatus.RUNNING)
        .values(status=JobStatus.DONE, finished_at=now, n_failed=JOB.c.n_failed + int(left or 0))
    )


@contextmanager
def try_lock(engine: Any, name: str) -> Iterator[bool]:
    """Hold a Postgres advisory lock named `name` on a connection of its own while the block runs;
    yields False (and holds nothing) when another session holds it."""
    key = zlib.crc32(name.encode())
    with engine.connect() as conn:
        locked = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        try:
            yield locked
        finally:
            if locked:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


def budget_paused_jobs(session: Session, *, team_id: int | None = None) -> list[tuple[str, int]]:
    """(job id, team id) of paused jobs waiting for budget (not for a stopped provider, nor interrupted
    by Ctrl-C: their owner resumes those), of one team or all."""
    query = select(JOB.c.id, JOB.c.team_id).where(
        JOB.c.status == JobStatus.PAUSED,
        or_(JOB.c.pause_reason.is_(None), JOB.c.pause_reason.not_in(["provider", "interrupted"])),
    )
    if team_id is not None:
        query = query.where(JOB.c.team_id == team_id)
    return [(row.id, row.team_id) for row in session.execute(query)]


def expired_items(session: Session, *, job_id: str, now: datetime) -> list[Any]:
    """The job's claimed items whose holder's lease ran out (its worker died): id, seq, text, attempts."""
    return list(
        session.execute(
            select(ITEM.c.id, ITEM.c.seq, ITEM.c.text, ITEM.c.attempts).where(
                ITEM.c.job_id == job_id,
                ITEM.c.status == ItemStatus.RUNNING,
                ITEM.c.lease_until < now,
                ~in_open_batch(),
            )
        ).all()
    )


def count_items(session: Session, *, job_id: str, status: str) -> int:
    return int(
        session.execute(select(func.count()).where(ITEM.c.job_id == job_id, ITEM.c.status == status)).scalar() or 0
    )


def stalled_chunks(session: Session, *, now: datetime, idle_since: datetime, chunk_size: int) -> dict[str, list[int]]:
    """Per running job, the chunk numbers (seq // chunk_size) holding items to re-enqueue: items
    whose lease expired, and, for a job with no call started since `idle_since`, pending items."""
    out: dict[str, list[int]] = {}
    jobs = session.execute(select(JOB.c.id, JOB.c.created_at).where(JOB.c.status == JobStatus.RUNNING)).all()
    for job_id, created_at in jobs:
        last_call = session.execute(select(func.max(CALL.c.started_at)).where(CALL.c.job_id == job_id)).scalar()
        idle = (last_call or created_at) is None or (last_call or created_at) < idle_since
        expired = (ITEM.c.status == ItemStatus.RUNNING) & (ITEM.c.lease_until < now) & ~in_open_batch()
        wanted = (expired | (ITEM.c.status == ItemStatus.PENDING)) if idle else expired
        # Floor division: SQLAlchemy 2's `/` is true division, which would give one "chunk" per item.
        chunks = (
            session.execute(
                select((ITEM.c.seq // chunk_size).label("chunk"))
                .where(ITEM.c.job_id == job_id, wanted)
                .group_by("chunk")
            )
            .scalars()
            .all()
        )
        if chunks:
            out[job_id] = sorted(int(c) for c in chunks)
    return out


# -- provider batches (a provider's batch API) ------------------------------------------------------

PROVIDER_BATCH = ProviderBatch.__table__  # type: ignore[attr-defined]


def insert_provider_batches(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write provider batch rows (state creating), with their lines' call rows, before `create`."""
    if rows:
        session.execute(insert(PROVIDER_BATCH), list(rows))


def record_batch_created(
    session: Session, *, tag: str, batch_id: str, state: str, vendor_status: str, now: datetime
) -> bool:
    """Record the provider's id of the batch created under `tag`, once: False when it was already
    recorded (another poller found it first)."""
    row = session.execute(
        update(PROVIDER_BATCH)
        .where(PROVIDER_BATCH.c.id == tag, PROVIDER_BATCH.c.batch_id.is_(None))
        .values(batch_id=batch_id, state=state, vendor_status=vendor_status, submitted_at=now, polled_at=now)
        .returning(PROVIDER_BATCH.c.id)
    ).first()
    return row is not None


def update_provider_batch(session: Session, tag: str, **values: Any) -> None:
    session.execute(update(PROVIDER_BATCH).where(PROVIDER_BATCH.c.id == tag).values(**values))


def open_provider_batches(session: Session, *, job_id: str | None = None) -> list[Any]:
    """Batches not yet ingested (creating, pending, running, ended, failed), oldest first; of one job if given."""
    stmt = select(PROVIDER_BATCH).where(PROVIDER_BATCH.c.state.in_(list(BatchState.OPEN)))
    if job_id is not None:
        stmt = stmt.where(PROVIDER_BATCH.c.job_id == job_id)
    return list(session.execute(stmt.order_by(PROVIDER_BATCH.c.created_at)).all())


def wave_batches(session: Session, *, wave: str, for_update: bool = False) -> list[Any]:
    """The batches of one wave (locked for update when asked: one ingest at a time)."""
    stmt = select(PROVIDER_BATCH).where(PROVIDER_BATCH.c.wave == wave).order_by(PROVIDER_BATCH.c.id)
    if for_update:
        stmt = stmt.with_for_update()
    return list(session.execute(stmt).all())


def job_batch_counts(session: Session, job_id: str) -> dict[str, int]:
    """A job's provider batches counted by state."""
    rows = session.execute(
        select(PROVIDER_BATCH.c.state, func.count())
        .where(PROVIDER_BATCH.c.job_id == job_id)
        .group_by(PROVIDER_BATCH.c.state)
    ).all()
    return {state: int(n) for state, n in rows}


def job_batches_quiet_since(session: Session, job_id: str) -> datetime | None:
    """When the job's open provider batches were last looked at: the oldest of their last polls (or
    creations, for one never polled); None when it has no open batch."""
    kind = PROVIDER_BATCH.c.polled_at.type  # kept through coalesce and min: SQLite's values are read back as datetimes
    seen = func.coalesce(PROVIDER_BATCH.c.polled_at, PROVIDER_BATCH.c.created_at, type_=kind)
    found = session.execute(
        select(func.min(seen, type_=kind)).where(
            PROVIDER_BATCH.c.job_id == job_id, PROVIDER_BATCH.c.state.in_(list(BatchState.OPEN))
        )
    ).scalar()
    if found is None:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def batch_calls(session: Session, tags: Sequence[str]) -> list[Any]:
    """The call rows of batches `tags` (their lines): what ingesting needs of each."""
    if not tags:
        return []
    return list(
        session.execute(
            select(
                CALL.c.id,
                CALL.c.item_id,
                CALL.c.model_id,
                CALL.c.provider,
                CALL.c.purpose,
                CALL.c.status,
                CALL.c.started_at,
                CALL.c.price_multiplier,
                CALL.c.provider_batch_id,
            ).where(CALL.c.provider_batch_id.in_(list(tags)))
        ).all()
    )


def batch_lines(session: Session, tag: str) -> list[Any]:
    """A batch's lines as they were recorded (call id, model, item text), to create it again after a
    worker died before the provider had it."""
    return list(
        session.execute(
            select(CALL.c.id, CALL.c.model_id, ITEM.c.text)
            .join(ITEM, ITEM.c.id == CALL.c.item_id)
            .where(CALL.c.provider_batch_id == tag)
            .order_by(CALL.c.id)
        ).all()
    )


def settle_calls(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Write calls' outcomes onto rows still in flight; returns the ids written (a line ingested twice
    is written once: the second time its row is no longer in flight)."""
    if not rows:
        return set()
    if _is_postgres(session):
        sql, params = _unnest_update("call", _CALL_OUTCOME, rows, prefix="u")
        return {r[0] for r in session.execute(text(f"{sql} RETURNING call.id"), params).all()}
    written = set()
    values: dict[str, Any] = {f: bindparam(f"b_{f}") for f in _CALL_OUTCOME}
    stmt = update(CALL).where(CALL.c.id == bindparam("b_id"), CALL.c.status == CallStatus.IN_FLIGHT).values(values)
    for row in rows:
        if session.execute(stmt, {f"b_{k}": row[k] for k in ("id", *_CALL_OUTCOME)}).rowcount:  # type: ignore[attr-defined]
            written.add(row["id"])
    return written


def held_items(session: Session, item_ids: Sequence[int]) -> list[Any]:
    """Items still running (id, seq, text, attempts), as a chunk claimed them."""
    if not item_ids:
        return []
    return list(
        session.execute(
            select(ITEM.c.id, ITEM.c.seq, ITEM.c.text, ITEM.c.attempts)
            .where(ITEM.c.id.in_(list(item_ids)), ITEM.c.status == ItemStatus.RUNNING)
            .order_by(ITEM.c.seq)
        ).all()
    )


def extend_lease(session: Session, items: Sequence[tuple[int, int]], *, until: datetime) -> None:
    """Keep claimed items (id, tries when claimed) held until `until` (their lines are in a batch)."""
    if items:
        session.execute(
            update(ITEM)
            .where(
                ITEM.c.id == bindparam("b_id"),
                ITEM.c.attempts == bindparam("b_held"),
                ITEM.c.status == ItemStatus.RUNNING,
            )
            .values(lease_until=until),
            [{"b_id": item_id, "b_held": held} for item_id, held in items],
        )


def lock_creating(session: Session, tag: str) -> bool:
    """Lock a batch row still without its provider id, for the one poller that recovers it (find, else
    create); False when it has its id now, or another poller holds it (skipped, not waited for)."""
    stmt = select(PROVIDER_BATCH.c.id).where(PROVIDER_BATCH.c.id == tag, PROVIDER_BATCH.c.batch_id.is_(None))
    if _is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    return session.execute(stmt).first() is not None
