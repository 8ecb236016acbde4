"""The sweeper: the database says what work is left; it re-enqueues what lost its queue message.

Run by Celery beat (`sweep_task`, every `PENNYROUTE_SWEEP_EVERY_S`). For every running job it finds
items whose lease expired (their worker died) and, when the job has been idle for
`PENNYROUTE_SWEEP_IDLE_S` (no call started), items still pending (their message was lost, e.g. in a
Redis restart without persistence). It hands over one chunk per range of such items. A message
is a hint: a chunk claims only items nobody holds, so an extra message costs nothing but a query.
Given the catalog, it also expires /v1 batches whose 24h window closed (jobs/openai_batches.py), so
one nobody reads expires on time.
"""

from __future__ import annotations

from datetime import timedelta

from router.catalog import Catalog
from router.jobs import openai_batches
from router.jobs.dispatch import Dispatcher
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import utcnow
from router.settings import Settings


def stalled_ranges(settings: Settings) -> dict[str, list[tuple[int, int]]]:
    """Per running job, the chunk ranges holding items to re-enqueue."""
    now = utcnow()
    size = settings.chunk_size
    with session_scope(settings) as session:
        chunks = repo.stalled_chunks(
            session, now=now, idle_since=now - timedelta(seconds=settings.sweep_idle_s), chunk_size=size
        )
    return {job_id: [(c * size, c * size + size) for c in numbers] for job_id, numbers in chunks.items()}


def sweep(settings: Settings, *, dispatcher: Dispatcher, catalog: Catalog | None = None) -> int:
    """Hand over every stalled range again (and, given the catalog, expire overdue /v1 batches);
    returns how many ranges were handed over."""
    if catalog is not None:
        openai_batches.expire_overdue(settings, catalog)
    ranges = stalled_ranges(settings)
    for job_id, job_ranges in ranges.items():
        dispatcher.run(job_id, job_ranges)
    return sum(len(r) for r in ranges.values())
