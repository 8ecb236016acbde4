"""The sweeper: the database says what work is left; it re-enqueues what lost its queue message.

Run by Celery beat (`sweep_task`, every `PENNYROUTE_SWEEP_EVERY_S`). For every running job it finds
items whose lease expired (their worker died) and, when the job has been idle for
`PENNYROUTE_SWEEP_IDLE_S` (no call started), items still pending (their message was lost, e.g. in a
Redis restart without persistence). It sends one chunk message per range of such items. A message
is a hint: a chunk claims only items nobody holds, so an extra message costs nothing but a query.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from router.db import session_scope
from router.ledger.tables import Call, Item, ItemStatus, Job, JobStatus, utcnow
from router.settings import Settings

ITEM = Item.__table__  # type: ignore[attr-defined]
CALL = Call.__table__  # type: ignore[attr-defined]
JOB = Job.__table__  # type: ignore[attr-defined]


def stalled_ranges(settings: Settings) -> dict[str, list[tuple[int, int]]]:
    """Per running job, the chunk ranges holding items to re-enqueue."""
    now = utcnow()
    idle_since = now - timedelta(seconds=settings.sweep_idle_s)
    size = settings.chunk_size
    out: dict[str, list[tuple[int, int]]] = {}
    with session_scope(settings) as session:
        jobs = session.execute(select(JOB.c.id, JOB.c.created_at).where(JOB.c.status == JobStatus.RUNNING)).all()
        for job_id, created_at in jobs:
            last_call = session.execute(select(func.max(CALL.c.started_at)).where(CALL.c.job_id == job_id)).scalar()
            idle = (last_call or created_at) is None or (last_call or created_at) < idle_since
            expired = (ITEM.c.status == ItemStatus.RUNNING) & (ITEM.c.lease_until < now)
            wanted = (expired | (ITEM.c.status == ItemStatus.PENDING)) if idle else expired
            chunks = session.execute(
                select((ITEM.c.seq // size).label("chunk")).where(ITEM.c.job_id == job_id, wanted).group_by("chunk")
            ).scalars().all()
            if chunks:
                out[job_id] = [(int(c) * size, int(c) * size + size) for c in sorted(chunks)]
    return out


def sweep(settings: Settings) -> int:
    """Re-enqueue every stalled range; returns how many messages were sent."""
    from router.jobs.dispatch import CeleryDispatcher

    ranges = stalled_ranges(settings)
    if not ranges:
        return 0
    dispatcher = CeleryDispatcher(settings)
    for job_id, job_ranges in ranges.items():
        dispatcher.send(job_id, job_ranges)
    return sum(len(r) for r in ranges.values())
