"""Quality estimates that last: measured per (tenant, task signature, model), reused by later jobs of
the same kind until they expire, drift, or the model's price changes; and the choice of how a new job
gets its estimates (calibrate on its gold labels, on a reference model, on an earlier job's labels,
or use what is stored and the priors).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from policies.cheapest_qualifying import choose_model
from policies.types import Candidate, JobProfile, QualityEstimate
from router.catalog import Catalog
from router.errors import InputError
from router.jobs.intake import JobRequest
from router.ledger import repo
from router.ledger.tables import utcnow


def signature(task: str, labels: Any, max_words: int | None) -> str:
    """What makes two jobs 'the same kind': task, labels or length, and the prompt's version."""
    if task == "classify":
        return f"classify:{','.join(sorted(labels or ()))}:v1"
    return f"summarize:{max_words or 'default'}:v1"


def signature_of(request: JobRequest) -> str:
    return signature(request.task, request.labels, request.max_words)


def is_fresh(row: Any, catalog: Catalog, now: datetime) -> bool:
    """Usable for routing: not expired, not drifted, and measured at the model's current price."""
    expires = row.expires_at
    if expires is not None and expires.tzinfo is None:  # SQLite keeps no offset: the ledger writes UTC
        expires = expires.replace(tzinfo=UTC)
    if row.drifted_at is not None or (expires is not None and expires < now):
        return False
    if row.model_id not in catalog.models:
        return False
    price = catalog.price(row.model_id, now)
    return bool(price.input.base == row.input_usd_per_mtok and price.output.base == row.output_usd_per_mtok)


def fresh_estimates(session: Any, catalog: Catalog, *, tenant_id: int, signature: str) -> dict[str, Any]:
    """The tenant's fresh estimates for this kind of job, by model."""
    now = utcnow()
    return {
        row.model_id: row
        for row in repo.quality_estimates(session, tenant_id=tenant_id, signature=signature)
        if is_fresh(row, catalog, now)
    }


def with_estimates(pool: list[Candidate], measured: dict[str, Any]) -> list[Candidate]:
    """Candidates with measured estimates in place of priors where there are any."""
    out = []
    for candidate in pool:
        row = measured.get(candidate.model_id)
        if row is not None:
            source = f"measured on {row.n} items ({row.source}, job {row.job_id})"
            candidate = replace(candidate, quality=QualityEstimate(value=row.mean, n=row.n, source=source))
        out.append(candidate)
    return out


def mode_for(
    session: Any,
    request: JobRequest,
    *,
    n_gold: int,
    tenant_id: int,
    pool: list[Candidate],
    measured: dict[str, Any],
    profile: JobProfile,
) -> tuple[str, str | None]:
    """How this job gets its quality estimates: (gold | reference | prior, the job whose labelled
    items to calibrate on when not its own)."""
    if request.quality == "prior":
        return "prior", None
    if request.quality == "reference":
        return "reference", None
    if request.quality == "gold" and n_gold == 0:
        raise InputError('--quality gold needs labelled items: add a "gold" field to some lines', field="--quality")
    if n_gold:
        return "gold", None
    if not measured:
        return "prior", None
    # Earlier jobs of this kind measured some models: a cheaper model they did not measure (new in
    # the catalog, or re-priced) is tested on the labelled items of the job that measured them.
    decision = choose_model(profile, pool)
    proven = choose_model(profile, [c for c in pool if c.model_id in measured])
    proven_cost = proven.expected_cost_usd if proven.ok else None
    untested = [
        v.model_id
        for v in decision.verdicts
        if v.meets_constraints
        and v.model_id not in measured
        and v.expected_cost_usd is not None
        and (proven_cost is None or v.expected_cost_usd < proven_cost)
    ]
    if not untested:
        return "prior", None
    for row in sorted(measured.values(), key=lambda r: r.measured_at, reverse=True):
        if row.job_id and repo.count_gold(session, row.job_id):
            return "gold", row.job_id
    return "prior", None
