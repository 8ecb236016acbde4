"""Calibration: measure candidate models on a sample of the job's own items before the bulk runs.

    gold       the job's labelled items (`gold`) are the sample; a model's score is its accuracy on them.
    reference  no labels: the strongest eligible model answers a sample first, and a model's score is
               its agreement with those answers.

Candidates answer the sample cheapest first, a slice at a time, and the search stops as soon as the
choice is decided (policies.calibration). Every call is ledgered with purpose "calibration". The
measured estimates are kept per (tenant, task signature, model) and reused by later jobs of the same
kind. A gold item answered by the chosen model keeps that answer as its result: it is not charged twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from policies.calibration import CalibrationStep, next_step
from policies.cascade import CascadeChoice, choose_cascade
from policies.cheapest_qualifying import choose_model
from policies.confidence import wilson_lower_bound, wilson_upper_bound
from policies.scoring import agrees
from policies.types import Candidate, JobProfile, QualityEstimate
from router.candidates import candidates, decision_as_json
from router.catalog import Catalog
from router.engine.chunk import answer_items
from router.errors import CalibrationBudgetError
from router.jobs import estimates
from router.ledger import repo
from router.ledger.db import get_engine, session_scope
from router.ledger.tables import ItemStatus, Job, JobStatus, utcnow
from router.prompts import MESSAGE_OVERHEAD_TOKENS, estimate_tokens, spec_for
from router.route import DEFAULT_DRIFT_SHARE, Route, fallbacks_from
from router.settings import Settings

# At most this many items are used to calibrate: at 200 items a Wilson bound is within about +-4
# points of the mean at 90% accuracy, enough to separate models, and cheap next to a batch.
MAX_SAMPLE = 200
# A model answers the sample a slice at a time, so a clearly good or bad model is decided early.
SLICE = 50
# Measured estimates are reused this long; older ones are measured again.
ESTIMATE_TTL = timedelta(days=30)


@dataclass
class Calibration:
    """What a calibration found: per model, the items it answered and which it got right."""

    mode: str  # gold | reference
    sample: list[Any]  # item rows (id, seq, text, gold)
    truth: dict[int, str]  # item id -> the right answer (gold, or the reference's answer)
    answers: dict[str, dict[int, str | None]] = field(default_factory=dict)  # model -> item id -> answer
    calls: dict[str, dict[int, str]] = field(default_factory=dict)  # model -> item id -> call id
    spent_usd: Decimal = Decimal(0)
    reference_id: str | None = None
    steps: list[str] = field(default_factory=list)

    task: str = "classify"

    def counts(self, model_id: str) -> tuple[int, int]:
        """(items judged, items right) for a model: items with a truth and an answer attempt."""
        got = self.answers.get(model_id, {})
        judged = [i for i in got if i in self.truth]
        return len(judged), sum(1 for i in judged if agrees(self.task, got[i], self.truth[i]))


def signature(job: Any) -> str:
    return estimates.signature(job.task, job.labels, job.max_words)


def calibrate_job(settings: Settings, catalog: Catalog, *, job_id: str) -> dict[str, Any]:
    """Calibrate a job whose status is calibrating, then set its route; safe to run twice (the
    second finds the job no longer calibrating, or waits on the first's lock). Returns the summary
    kept on the job row."""
    with _job_lock(settings, job_id) as locked:
        if not locked:
            return {}
        with session_scope(settings) as session:
            job = repo.job_for_chunk(session, job_id)
            full = repo.find_job(session, job_id)
            if job is None or full is None or full.status != JobStatus.CALIBRATING:
                return {}
            mode = full.quality_mode
            # A run cut short left calls in flight: their outcome is unknown (never charged twice).
            repo.interrupt_calibration_calls(session, job_id=job_id, now=utcnow())
            sample_job = (full.calibration or {}).get("sample_job_id") or job_id
            sample = repo.calibration_sample(session, job_id=sample_job, mode=mode, limit=MAX_SAMPLE)
            decision = full.decision or {}
            profile = _profile(full)
        pool = candidates(catalog, settings, task=job.task, simulated=job.simulated)
        eligible = _eligible(decision)
        cal = Calibration(mode=mode, sample=sample, truth={}, task=job.task)
        only = bool((full.calibration or {}).get("only"))
        try:
            summary = _search(settings, catalog, full, job, profile, pool, cal, eligible, sample)
            if only:
                _close_without_bulk(settings, job_id)
            return summary
        except CalibrationBudgetError as exc:
            return _stop(
                settings,
                full.id,
                {
                    "mode": mode,
                    "outcome": "budget",
                    "estimates": {},
                    "message": f"{exc}: raise it with `pennyroute budget set`, or submit with --quality prior",
                },
            )


def _search(
    settings: Settings,
    catalog: Catalog,
    full: Job,
    job: Any,
    profile: JobProfile,
    pool: list[Candidate],
    cal: Calibration,
    eligible: list[str],
    sample: list[Any],
) -> dict[str, Any]:
    """Test candidates cheapest first until the choice is decided, then conclude."""
    if cal.mode == "gold":
        cal.truth = {row.id: row.gold for row in sample}
    else:
        cal.reference_id = _strongest(eligible, pool)
        _answer(settings, catalog, job, cal, cal.reference_id, sample)
        cal.truth = {i: a for i, a in cal.answers[cal.reference_id].items() if a is not None}
    tested = [m for m in eligible if m != cal.reference_id]
    costs = {m: _per_item_cost(catalog, job, m, sample) for m in eligible}
    step = next_step(
        models=tuple(tested),
        counts={m: cal.counts(m) for m in cal.answers},
        sample_size=len(cal.truth),
        bar=profile.min_quality,
        confidence=profile.confidence,
        slice_size=SLICE,
    )
    while step.kind == "test":
        assert step.model_id is not None
        done = set(cal.answers.get(step.model_id, {}))
        batch = [row for row in sample if row.id in cal.truth and row.id not in done][: step.n_items]
        cal.steps.append(f"{step.model_id}: {len(batch)} items")
        _answer(settings, catalog, job, cal, step.model_id, batch)
        step = next_step(
            models=tuple(tested),
            counts={m: cal.counts(m) for m in cal.answers},
            sample_size=len(cal.truth),
            bar=profile.min_quality,
            confidence=profile.confidence,
            slice_size=SLICE,
        )
    return _conclude(settings, catalog, full, job, profile, pool, cal, step, costs)


def _conclude(
    settings: Settings,
    catalog: Catalog,
    full: Job,
    job: Any,
    profile: JobProfile,
    pool: list[Candidate],
    cal: Calibration,
    step: CalibrationStep,
    costs: dict[str, Decimal],
) -> dict[str, Any]:
    measured = {m: cal.counts(m) for m in cal.answers if m != cal.reference_id}
    source = "gold labels" if cal.mode == "gold" else f"agreement with {cal.reference_id}"
    measured_pool = [_with_estimate(c, measured[c.model_id], source) if c.model_id in measured else c for c in pool]
    decision = choose_model(profile, measured_pool)
    cascade: CascadeChoice | None = None
    if step.kind == "chosen" and job.task == "classify":
        cascade = choose_cascade(
            answers=cal.answers,
            truth=cal.truth,
            costs=costs,
            single=step.model_id,
            bar=profile.min_quality,
            confidence=profile.confidence,
        )
    summary: dict[str, Any] = {
        "mode": cal.mode,
        "reference_id": cal.reference_id,
        "sample": len(cal.truth),
        "steps": cal.steps,
        "signature": signature(job),
        "outcome": step.kind,
        "message": step.reason,
        "sample_job_id": (full.calibration or {}).get("sample_job_id"),
        "estimates": {m: _estimate_json(n, k, profile.confidence) for m, (n, k) in measured.items()},
        "cascade": cascade.as_json() if cascade else None,
    }
    now = utcnow()
    with session_scope(settings) as session:
        repo.find_job(session, full.id, for_update=True)  # one conclusion at a time
        summary["spent_usd"] = str(repo.job_spend(session, full.id))
        _store_estimates(session, catalog, job, measured, cal, profile.confidence, now)
        if step.kind != "chosen" or not decision.ok:
            repo.update_job(
                session,
                full.id,
                status=JobStatus.NO_MODEL,
                decision=decision_as_json(decision),
                calibration=summary,
                finished_at=now,
            )
            repo.add_job_event(
                session, job_id=full.id, kind="calibrated", detail={"outcome": step.kind, "message": step.reason}
            )
            return summary
        route = _route(decision, cascade, cal, full)
        repo.update_job(
            session,
            full.id,
            route=route.as_json(),
            model_id=route.model_id,
            decision=decision_as_json(decision),
            expected_cost_usd=(
                cascade.expected_cost_usd * full.n_items
                if route.kind == "cascade" and cascade
                else decision.expected_cost_usd
            ),
            calibration=summary,
            status=JobStatus.RUNNING,
        )
        kept = _keep_answers(session, full, cal, route) if not (full.calibration or {}).get("sample_job_id") else 0
        summary["kept_answers"] = kept
        repo.update_job(session, full.id, calibration=dict(summary))
        repo.add_job_event(
            session,
            job_id=full.id,
            kind="calibrated",
            detail={"outcome": "chosen", "route": route.kind, "model_id": route.model_id, "kept_answers": kept},
        )
    return summary


def _close_without_bulk(settings: Settings, job_id: str) -> None:
    """`pennyroute calibrate`: the items calibration did not answer are not run; the job ends."""
    with session_scope(settings) as session:
        row = repo.find_job(session, job_id, for_update=True)
        if row is None or row.status != JobStatus.RUNNING:
            return
        repo.close_job(session, job_id=job_id, pending_error="not run: calibration only", now=utcnow())


def _stop(settings: Settings, job_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    """End a job before its bulk, keeping why on the job row (it spends nothing more)."""
    with session_scope(settings) as session:
        repo.find_job(session, job_id, for_update=True)
        summary["spent_usd"] = str(repo.job_spend(session, job_id))
        repo.update_job(session, job_id, status=JobStatus.NO_MODEL, calibration=summary, finished_at=utcnow())
        repo.add_job_event(
            session,
            job_id=job_id,
            kind="calibrated",
            detail={"outcome": summary["outcome"], "message": summary["message"]},
        )
    return summary


def _route(decision: Any, cascade: CascadeChoice | None, cal: Calibration, job: Job) -> Route:
    chosen = decision.model_id
    reference = cal.reference_id or decision.baseline_model_id
    drift_share = DEFAULT_DRIFT_SHARE if job.task == "classify" and reference and reference != chosen else 0.0
    fallbacks = fallbacks_from(decision, exclude={chosen})
    if cascade is not None and cascade.use_cascade:
        return Route(
            kind="cascade",
            model_id=cascade.first_id,
            second_id=cascade.second_id,
            strong_id=cascade.strong_id,
            fallbacks=fallbacks,
            reference_id=reference,
            drift_share=drift_share,
            reasons=tuple(cascade.reasons),
        )
    return Route(
        kind="single",
        model_id=chosen,
        fallbacks=fallbacks,
        reference_id=reference,
        drift_share=drift_share,
        reasons=(decision.summary,),
    )


def _keep_answers(session: Any, job: Job, cal: Calibration, route: Route) -> int:
    """Gold items whose answer under the chosen route is already known keep it: not charged twice.

    Single model: its calibration answer. Cascade: the two cheap models' shared answer, or, where
    they disagreed, the strong model's answer when it was asked."""
    if cal.mode != "gold":
        return 0
    rows = []
    for item_id in cal.truth:
        found = _route_answer(cal, route, item_id)
        if found is not None:
            answer, call_id = found
            rows.append(
                {
                    "id": item_id,
                    "status": ItemStatus.DONE,
                    "output": answer,
                    "error": None,
                    "final_call_id": call_id,
                    "finished_at": utcnow(),
                    "lease_until": None,
                    "held": 0,
                }
            )
    done, _ = repo.finish_items(session, rows)  # still pending, never claimed: held with 0 tries
    repo.count_finished(session, job_id=job.id, done=done, failed=0, now=utcnow())
    return done


def _route_answer(cal: Calibration, route: Route, item_id: int) -> tuple[str, str] | None:
    def known(model_id: str | None) -> tuple[str | None, str] | None:
        if model_id is None or item_id not in cal.calls.get(model_id, {}):
            return None
        return cal.answers[model_id].get(item_id), cal.calls[model_id][item_id]

    if route.kind == "cascade":
        first, second = known(route.model_id), known(route.second_id)
        if first is not None and second is not None and first[0] is not None and first[0] == second[0]:
            return first[0], first[1]
        if first is None or second is None:
            return None
        strong = known(route.strong_id)
        return (strong[0], strong[1]) if strong is not None and strong[0] is not None else None
    single = known(route.model_id)
    return (single[0], single[1]) if single is not None and single[0] is not None else None


def _answer(settings: Settings, catalog: Catalog, job: Any, cal: Calibration, model_id: str, rows: list[Any]) -> None:
    """Have `model_id` answer `rows` (purpose calibration), ledgered like any call."""
    if not rows:
        return
    answers = answer_items(settings, catalog, job, model_id=model_id, items=rows)
    if answers is None:
        raise CalibrationBudgetError("the team's budget cannot take the calibration calls")
    got = cal.answers.setdefault(model_id, {})
    calls = cal.calls.setdefault(model_id, {})
    for item_id, answer in answers.items():
        got[item_id] = answer.output
        calls[item_id] = answer.call_id


def _profile(job: Job) -> JobProfile:
    constraints = job.constraints or {}
    output = 8 if job.task == "classify" else int((job.max_words or 60) * 1.5)
    return JobProfile(
        task=job.task,
        min_quality=job.min_quality,
        n_items=job.n_items,
        total_input_tokens=job.total_input_tokens,
        max_input_tokens=job.max_input_tokens,
        output_tokens_per_item=output,
        allowed_providers=frozenset(constraints["providers"]) if constraints.get("providers") else None,
        allowed_models=frozenset(constraints["models"]) if constraints.get("models") else None,
        regions=frozenset(constraints["regions"]) if constraints.get("regions") else None,
    )


def _eligible(decision: dict[str, Any]) -> list[str]:
    """Models meeting the job's constraints, cheapest expected cost first."""
    verdicts = [
        v for v in decision.get("verdicts", []) if v.get("meets_constraints") and v.get("expected_cost_usd") is not None
    ]
    verdicts.sort(key=lambda v: Decimal(v["expected_cost_usd"]))
    return [v["model_id"] for v in verdicts]


def _strongest(eligible: list[str], pool: list[Candidate]) -> str:
    """The reference: the eligible model with the best quality prior (then the dearest)."""
    by_id = {c.model_id: c for c in pool}

    def strength(model_id: str) -> tuple[float, int]:
        quality = by_id[model_id].quality
        return (quality.value if quality is not None else 0.0), eligible.index(model_id)

    return max(eligible, key=strength)


def _per_item_cost(catalog: Catalog, job: Any, model_id: str, sample: list[Any]) -> Decimal:
    """Expected cost of one item on `model_id`, from the sample's lengths."""
    spec = spec_for(job.task, job.labels, job.max_words)
    if not sample:
        return Decimal(0)
    tokens = (
        sum(estimate_tokens(row.text) for row in sample) / len(sample)
        + estimate_tokens(spec.system)
        + MESSAGE_OVERHEAD_TOKENS
    )
    price = catalog.price(model_id)
    output = catalog.model(model_id).output_cap(spec.expected_output_tokens)  # thinking is billed as output
    return (Decimal(int(tokens)) * price.input.base + Decimal(output) * price.output.base) / Decimal(1_000_000)


def _with_estimate(candidate: Candidate, counts: tuple[int, int], source: str) -> Candidate:
    n, k = counts
    return replace(candidate, quality=QualityEstimate(value=k / n if n else 0.0, n=n, source=source))


def _estimate_json(n: int, k: int, confidence: float) -> dict[str, Any]:
    mean = k / n if n else 0.0
    return {
        "n": n,
        "right": k,
        "mean": round(mean, 4),
        "lower": round(wilson_lower_bound(mean, n, confidence), 4),
        "upper": round(wilson_upper_bound(mean, n, confidence), 4),
    }


def _store_estimates(
    session: Any,
    catalog: Catalog,
    job: Any,
    measured: dict[str, tuple[int, int]],
    cal: Calibration,
    confidence: float,
    now: datetime,
) -> None:
    for model_id, (n, k) in measured.items():
        if not n:
            continue
        estimate = _estimate_json(n, k, confidence)
        price = catalog.price(model_id, now)
        repo.upsert_quality_estimate(
            session,
            values={
                "tenant_id": job.tenant_id,
                "signature": signature(job),
                "task": job.task,
                "model_id": model_id,
                "source": "gold" if cal.mode == "gold" else "reference",
                "n": n,
                "successes": float(k),
                "mean": estimate["mean"],
                "lower": estimate["lower"],
                "upper": estimate["upper"],
                "confidence": confidence,
                "input_usd_per_mtok": price.input.base,
                "output_usd_per_mtok": price.output.base,
                "job_id": job.id,
                "measured_at": now,
                "expires_at": now + ESTIMATE_TTL,
                "drifted_at": None,
            },
        )


@contextmanager
def _job_lock(settings: Settings, job_id: str) -> Iterator[bool]:
    """Hold a Postgres advisory lock on the job for the calibration (SQLite: one process, no lock)."""
    if settings.is_sqlite:
        yield True
        return
    with repo.try_lock(get_engine(settings), f"calibrate:{job_id}") as locked:
        yield locked
