"""Drift checks: a share of production items is also answered by the reference model; when the
agreement's bound falls below the job's bar, the job re-routes upward for its remaining items.

The decision is policies.drift's; this module reads the job's counts, applies the decision, and
records a drift event.
"""

from __future__ import annotations

from typing import Any

from policies.drift import DriftVerdict, judge_drift
from router.catalog import Catalog
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import JobStatus, utcnow
from router.route import Route
from router.settings import Settings


def check(settings: Settings, catalog: Catalog, *, job_id: str) -> DriftVerdict | None:
    """Judge a job's drift checks so far; re-route it upward when its quality no longer holds."""
    with session_scope(settings) as session:  # most batches: a plain read, no lock on the job row
        counts = repo.drift_counts(session, job_id=job_id)
    if counts is None or counts.status != JobStatus.RUNNING or not counts.n_drift_checked:
        return None
    if not judge_drift(n=counts.n_drift_checked, agree=counts.n_drift_agreed, bar=counts.min_quality).drifted:
        return None
    with session_scope(settings) as session:
        job = repo.lock_job_for_reroute(session, job_id=job_id)
        if job is None or job.status != JobStatus.RUNNING or not job.n_drift_checked:
            return None
        verdict = judge_drift(n=job.n_drift_checked, agree=job.n_drift_agreed, bar=job.min_quality)
        if not verdict.drifted:
            return verdict
        route = Route.from_json(job.route, model_id=job.model_id or "")
        upward = _upward(route)
        detail: dict[str, Any] = {
            "model_id": route.model_id,
            "route": route.kind,
            "checked": job.n_drift_checked,
            "agreed": job.n_drift_agreed,
            "bar": job.min_quality,
            "reason": verdict.reason,
            "rerouted_to": upward.model_id if upward else None,
        }
        if upward is not None:
            repo.reroute_job(session, job_id=job_id, route=upward.as_json(), model_id=upward.model_id)
        repo.add_job_event(session, job_id=job_id, kind="drift", detail=detail)
        repo.mark_drifted(session, tenant_id=job.tenant_id, model_ids=[route.model_id], now=utcnow())
    return verdict


def _upward(route: Route) -> Route | None:
    """The route for the rest of the job: the next stronger qualifying model, else the reference model."""
    used = {route.model_id, route.second_id}
    if route.kind == "cascade" and route.strong_id:
        target: str | None = route.strong_id
    else:
        target = next((m for m in route.fallbacks if m not in used), None) or route.reference_id
    if target is None or target == route.model_id:
        return None
    rest = tuple(m for m in route.fallbacks if m != target)
    return Route(
        kind="single",
        model_id=target,
        fallbacks=rest,
        reference_id=route.reference_id if route.reference_id != target else None,
        drift_share=route.drift_share if route.reference_id != target else 0.0,
        reasons=(f"re-routed upward from {route.model_id} after drift checks",),
    )
