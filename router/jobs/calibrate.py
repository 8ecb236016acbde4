"""Calibration: measure models on the job's own labelled items before the bulk runs, then set its route.

    gold       the job's labelled items (`gold`); a model's score is its accuracy on them.
    reference  no labels: the strongest eligible model answers up to REFERENCE_SAMPLE items (their
               results), and a model's score is its agreement with those answers.

Which model answers which labelled items next, and when to stop, is a cost decision
(policies.calibration): a test runs while it can save more than it costs, within the calibration
budget and the baseline-only cost. This module does the I/O around it: it buys the answers (every
call ledgered with purpose "calibration"), judges them (summaries by a judge model), keeps the
measured estimates per (tenant, task signature, model) for later jobs of the kind, and sets the
route, or stops the job with each option's estimate. Labelled items end with their label.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from policies.calibration import (
    CalibrationJob,
    Evidence,
    Measure,
    Option,
    RouteOption,
    Step,
    cheapest_first,
    next_step,
    percent,
)
from policies.cheapest_qualifying import choose_model, expected_cost_usd
from policies.scoring import agrees, overlap_f1
from policies.types import Candidate, Decision, JobProfile, QualityEstimate
from router.candidates import candidates, decision_as_json
from router.catalog import Catalog
from router.engine.chunk import answer_items
from router.errors import CalibrationBudgetError
from router.jobs import estimates
from router.jobs.intake import DEFAULT_CALIBRATION_BUDGET, parse_calibration_budget
from router.jobs.judge import judge_cost_per_item, judge_summaries
from router.ledger import repo
from router.ledger.db import get_engine, session_scope
from router.ledger.tables import ItemStatus, Job, JobStatus, utcnow
from router.providers.sandbox import true_label
from router.route import DEFAULT_DRIFT_SHARE, Route, fallbacks_from
from router.settings import Settings

# Reference mode (no labels): the strongest eligible model answers up to this many items, spread
# over the job; its answers are those items' results (they are bought once) and the truth the
# others are measured against.
REFERENCE_SAMPLE = 200
# `pennyroute calibrate` runs no bulk: its measurements pay off on later jobs of the kind, this many
# items unless --volume says otherwise.
DEFAULT_VOLUME = 10_000
# Measured estimates are reused this long; older ones are measured again.
ESTIMATE_TTL = timedelta(days=30)
# The calibration bounds: one-sided, valid over every look (policies/confidence.py proving_bound), at this confidence.
CONFIDENCE = 0.95
# Amounts derived from a share are kept to this many places (prices need about 10).
MONEY_PLACES = Decimal("0.0000000001")
BOUNDS = "95% one-sided, sequential"
# Summaries sharing less than this word overlap (ROUGE-1 F1) with the reference fail without a judge call.
OVERLAP_FLOOR = 0.2


@dataclass
class Calibration:
    """What a calibration bought: per model, the answers it gave and which were right."""

    mode: str  # gold | reference
    sample: list[Any]  # item rows (id, seq, text, gold), in the order they are used
    truth: dict[int, str]  # item id -> the right answer (gold, or the reference's answer)
    answers: dict[str, dict[int, str | None]] = field(default_factory=dict)  # model -> item id -> answer
    right: dict[str, dict[int, bool]] = field(default_factory=dict)  # model -> item id -> judged right
    calls: dict[str, dict[int, str]] = field(default_factory=dict)  # model -> item id -> call id
    reference_id: str | None = None
    steps: list[str] = field(default_factory=list)
    task: str = "classify"
    judge_id: str | None = None  # summaries: the model that judges each answer against its source


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
            # A run cut short left calls in flight: their outcome is unknown (never charged twice).
            repo.interrupt_calibration_calls(session, job_id=job_id, now=utcnow())
            options = dict(full.calibration or {})
            sample_job = options.get("sample_job_id") or job_id
            # The reference answers at most a quarter of the job: the rest is what calibration can save on.
            limit = None if full.quality_mode == "gold" else min(REFERENCE_SAMPLE, max(1, full.n_items // 4))
            sample = repo.calibration_sample(session, job_id=sample_job, mode=full.quality_mode, limit=limit)
            stored = estimates.fresh_estimates(session, catalog, tenant_id=job.tenant_id, signature=signature(job))
            spent = repo.job_spend(session, job_id)
        sample.sort(key=lambda row: _shuffled(job_id, row.id))  # files are often sorted by label
        pool = candidates(catalog, settings, task=job.task, simulated=job.simulated)
        cal = Calibration(mode=full.quality_mode, sample=sample, truth={}, task=job.task)
        try:
            summary = _search(settings, catalog, full, job, pool, cal, stored, spent)
        except CalibrationBudgetError as exc:
            return _stop(
                settings,
                full.id,
                {
                    "mode": cal.mode,
                    "outcome": "budget",
                    "estimates": {},
                    "message": f"{exc}: raise it with `pennyroute budget set`, or submit with --quality prior",
                },
            )
        if options.get("only"):
            _close_without_bulk(settings, job_id)
        return summary


def _search(
    settings: Settings,
    catalog: Catalog,
    full: Job,
    job: Any,
    pool: list[Candidate],
    cal: Calibration,
    stored: dict[str, Any],
    spent: Decimal,
) -> dict[str, Any]:
    """Test models while a test pays for itself (policies.calibration), then conclude."""
    profile = _profile(full)
    eligible = _eligible(full.decision or {})
    if cal.task == "summarize":
        cal.judge_id = (full.calibration or {}).get("judge") or _strongest(eligible, pool)
    if cal.mode == "gold":
        cal.truth = {row.id: row.gold for row in cal.sample}
    else:
        cal.reference_id = _strongest(eligible, pool)
        _answer(settings, catalog, job, cal, cal.reference_id, cal.sample)
        cal.truth = {i: a for i, a in cal.answers[cal.reference_id].items() if a is not None}
    # The reference's answers are its sample items' results, bought once like any run: they are not
    # calibration overhead (the plan counts the job without those items).
    delivered = Decimal(0)
    if cal.reference_id is not None:
        with session_scope(settings) as session:
            delivered = repo.job_spend(session, full.id) - spent
    plan = _plan(settings, catalog, full, profile, pool, cal, stored, eligible)
    step = next_step(plan, _evidence(cal, spent, exclude=cal.reference_id))
    while step.kind == "test":
        assert step.model_id is not None
        asked = set(step.items)
        rows = [row for row in cal.sample if row.id in asked]
        cal.steps.append(f"{step.model_id}: {len(rows)} items ({step.reason})")
        _answer(settings, catalog, job, cal, step.model_id, rows)
        with session_scope(settings) as session:
            spent = repo.job_spend(session, full.id) - delivered
        step = next_step(plan, _evidence(cal, spent, exclude=cal.reference_id))
    return _conclude(settings, catalog, full, job, profile, pool, cal, plan, step)


def _plan(
    settings: Settings,
    catalog: Catalog,
    full: Job,
    profile: JobProfile,
    pool: list[Candidate],
    cal: Calibration,
    stored: dict[str, Any],
    eligible: list[str],
) -> CalibrationJob:
    """The job as the calibration policy sees it: options, labels, sizes, prices and ceilings."""
    by_id = {c.model_id: c for c in pool}
    per_item = {m: expected_cost_usd(profile, by_id[m]) / max(1, profile.n_items) for m in eligible}
    baseline_id = max(eligible, key=lambda m: (per_item[m], m))
    settings_of = full.calibration or {}
    own_labels = cal.mode == "gold" and not settings_of.get("sample_job_id")
    n_labelled = len(cal.truth) if own_labels else 0
    n_to_run = full.n_items - (0 if settings_of.get("run_labelled") else n_labelled)
    if cal.mode == "reference":
        n_to_run = full.n_items - len(cal.truth)  # the reference's answers are those items' results
    n_items = full.n_items - (len(cal.truth) if cal.mode == "reference" else 0)
    if settings_of.get("only"):  # `pennyroute calibrate`: what it measures pays off on later jobs' items
        volume = int(settings_of.get("volume") or DEFAULT_VOLUME)
        n_to_run, n_items = volume, n_items + volume
    kind, amount = parse_calibration_budget(settings_of.get("budget") or DEFAULT_CALIBRATION_BUDGET)
    baseline_only = per_item[baseline_id] * n_items
    judge = Decimal(0)
    if cal.judge_id is not None:
        judge = judge_cost_per_item(catalog, full, cal.judge_id, full.total_input_tokens / max(1, full.n_items))
    options = []
    for model_id in eligible:
        if model_id == cal.reference_id:
            continue
        prior = by_id[model_id].quality
        row = stored.get(model_id)
        options.append(
            Option(
                model_id,
                per_item[model_id],
                prior=prior.value if prior is not None and prior.n is None else None,
                stored=(int(row.n), int(round(row.successes))) if row is not None else None,
            )
        )
    return CalibrationJob(
        bar=full.min_quality,
        options=cheapest_first(options),
        labelled=tuple(row.id for row in cal.sample if row.id in cal.truth),
        n_items=n_items,
        n_to_run=max(0, n_to_run),
        baseline_usd_per_item=per_item[baseline_id],
        budget_usd=amount if kind == "usd" else (amount * baseline_only).quantize(MONEY_PLACES),
        confidence=CONFIDENCE,
        drift_share=DEFAULT_DRIFT_SHARE if full.task == "classify" else 0.0,
        judge_usd_per_item=judge,
        cascades=full.task == "classify",
        run_unproven=settings_of.get("if_unproven") == "best",
    )


def _evidence(cal: Calibration, spent: Decimal, *, exclude: str | None) -> Evidence:
    return Evidence(
        right={m: r for m, r in cal.right.items() if m != exclude},
        answers={m: a for m, a in cal.answers.items() if m != exclude},
        spent_usd=spent,
    )


def _conclude(
    settings: Settings,
    catalog: Catalog,
    full: Job,
    job: Any,
    profile: JobProfile,
    pool: list[Candidate],
    cal: Calibration,
    plan: CalibrationJob,
    step: Step,
) -> dict[str, Any]:
    """Keep what was measured; set the route it proved (or the best-measured one, marked unproven,
    under --if-unproven best), or stop the job with each option's estimate."""
    settings_of = full.calibration or {}
    measures = {r.model_id: r.measure for r in step.options if r.kind == "single" and r.measure.source == "this job"}
    decision = choose_model(profile, _measured_pool(pool, step))
    route_option = step.route
    unproven = step.kind != "chosen"
    run_anyway = unproven and settings_of.get("if_unproven") == "best" and route_option is not None
    summary: dict[str, Any] = {
        "mode": cal.mode,
        "reference_id": cal.reference_id,
        "sample": len(cal.truth),
        "labelled_used": len({i for r in cal.right.values() for i in r}),
        "steps": cal.steps,
        "signature": signature(job),
        "outcome": "chosen"
        if step.kind == "chosen"
        else ("unproven" if run_anyway else "need_more" if step.more_labels else "none"),
        "message": step.reason,
        "bounds": BOUNDS,
        "sample_job_id": settings_of.get("sample_job_id"),
        "estimates": {m: _estimate_json(r.measure) for m, r in _singles(step).items()},
        "routes": [_route_json(r) for r in step.options],
        "route_measure": _route_json(route_option) if route_option is not None else None,
        "unproven": unproven,
        "budget_usd": str(plan.budget_usd),
        "baseline_only_usd": str((plan.baseline_usd_per_item * plan.n_items).quantize(MONEY_PLACES)),
        "more_labels": step.more_labels,
        "budget": settings_of.get("budget"),
        "run_labelled": bool(settings_of.get("run_labelled")),
        "if_unproven": settings_of.get("if_unproven", "stop"),
        "simulated_note": _simulated_note(job, cal),
    }
    all_labelled = (
        cal.mode == "gold"
        and plan.n_to_run == 0
        and not any(settings_of.get(k) for k in ("only", "sample_job_id", "run_labelled"))
    )
    if all_labelled and unproven:
        summary.update(outcome="labelled", unproven=False)
        summary["message"] = f"every item carries its label, so nothing is left to run ({step.reason})"
    now = utcnow()
    with session_scope(settings) as session:
        repo.find_job(session, full.id, for_update=True)  # one conclusion at a time
        summary["spent_usd"] = str(repo.job_spend(session, full.id))
        _store_estimates(session, catalog, job, measures, cal, now)
        if summary["outcome"] == "labelled":  # done: each item's label is its answer
            repo.update_job(
                session, full.id, decision=decision_as_json(decision), calibration=summary, status=JobStatus.RUNNING
            )
            summary["kept_answers"] = done = repo.close_labelled(session, job_id=full.id, now=now)
            repo.count_finished(session, job_id=full.id, done=done, failed=0, now=now)
            repo.update_job(session, full.id, calibration=dict(summary))
            repo.add_job_event(session, job_id=full.id, kind="calibrated", detail={"outcome": "labelled"})
            return summary
        if route_option is None or (unproven and not run_anyway):
            repo.update_job(
                session,
                full.id,
                status=JobStatus.NO_MODEL,
                decision=decision_as_json(decision),
                calibration=summary,
                finished_at=now,
            )
            repo.add_job_event(
                session,
                job_id=full.id,
                kind="calibrated",
                detail={"outcome": summary["outcome"], "message": step.reason},
            )
            return summary
        route = _route(decision, route_option, full, plan)
        repo.update_job(
            session,
            full.id,
            route=route.as_json(),
            model_id=route.model_id,
            decision=decision_as_json(decision),
            expected_cost_usd=route_option.usd_per_item * plan.n_to_run,
            calibration=summary,
            status=JobStatus.RUNNING,
        )
        kept = _keep_answers(session, full, cal, route, run_labelled=bool(settings_of.get("run_labelled")))
        summary["kept_answers"] = kept
        repo.update_job(session, full.id, calibration=dict(summary))
        repo.add_job_event(
            session,
            job_id=full.id,
            kind="calibrated",
            detail={
                "outcome": summary["outcome"],
                "route": route.kind,
                "model_id": route.model_id,
                "kept_answers": kept,
                "unproven": unproven,
            },
        )
    return summary


def _singles(step: Step) -> dict[str, Any]:
    return {r.model_id: r for r in step.options if r.kind == "single"}


def _measured_pool(pool: list[Candidate], step: Step) -> list[Candidate]:
    """The candidates as routing sees them after calibration: a model measured on this job (or with
    a fresh stored estimate) carries that measure and its bound; every other has none, so a prior
    never outranks a measurement."""
    singles = _singles(step)
    out = []
    for candidate in pool:
        option = singles.get(candidate.model_id)
        if option is None:
            out.append(replace(candidate, quality=None))
            continue
        m = option.measure
        source = "measured on this job" if m.source == "this job" else "a fresh stored estimate"
        estimate = QualityEstimate(value=m.mean, n=m.n, source=source, lower=m.lower)
        out.append(replace(candidate, quality=estimate))
    return out


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


def _route(decision: Decision, option: RouteOption, job: Job, plan: CalibrationJob) -> Route:
    """The route as it runs: the option calibration settled on, falling back to the models proven
    after it (cheapest first), drift-checked against the baseline."""
    reference = decision.baseline_model_id
    chosen = option.model_id
    drift_share = plan.drift_share if reference and reference not in (chosen, option.strong_id) else 0.0
    fallbacks = fallbacks_from(decision, exclude={chosen, option.second_id or "", option.strong_id or ""})
    reasons = (
        f"{option.name}: {option.measure.right}/{option.measure.n} right, bounds [{option.measure.lower:.3f}, "
        f"{option.measure.upper:.3f}] ({percent(option.measure.confidence)} {option.measure.bounds}; "
        f"{option.measure.source})",
    )
    if option.kind == "cascade":
        return Route(
            kind="cascade",
            model_id=option.model_id,
            second_id=option.second_id,
            strong_id=option.strong_id,
            fallbacks=fallbacks,
            reference_id=reference,
            drift_share=drift_share,
            reasons=reasons,
        )
    return Route(
        kind="single",
        model_id=chosen,
        fallbacks=fallbacks,
        reference_id=reference,
        drift_share=drift_share,
        reasons=reasons,
    )


def _keep_answers(session: Any, job: Job, cal: Calibration, route: Route, *, run_labelled: bool) -> int:
    """Items whose answer is already known are not bought again.

    gold       a labelled item's answer is its label: it is done with the label, no call made
               (with --run-labelled, its answer under the route when calibration bought it)
    reference  an item the reference answered keeps the reference's answer
    Labels borrowed from an earlier job are that job's items: nothing here to keep."""
    if (job.calibration or {}).get("sample_job_id"):
        return 0
    now = utcnow()
    if cal.mode == "gold" and not run_labelled:
        done = repo.close_labelled(session, job_id=job.id, now=now)
        repo.count_finished(session, job_id=job.id, done=done, failed=0, now=now)
        return done
    rows = []
    for item_id in cal.truth:
        if cal.mode == "reference":
            assert cal.reference_id is not None
            found: tuple[str, str] | None = (cal.truth[item_id], cal.calls[cal.reference_id][item_id])
        else:
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
                    "finished_at": now,
                    "lease_until": None,
                    "held": 0,
                }
            )
    done, _ = repo.finish_items(session, rows)  # still pending, never claimed: held with 0 tries
    repo.count_finished(session, job_id=job.id, done=done, failed=0, now=now)
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
    """Have `model_id` answer `rows` (purpose calibration), ledgered like any call, and judge each
    answer against the truth (summaries: by the judge, where there is one)."""
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
    right = cal.right.setdefault(model_id, {})
    judged = [row for row in rows if row.id in cal.truth]
    if cal.judge_id is None or model_id == cal.reference_id:
        for row in judged:
            right[row.id] = agrees(cal.task, got.get(row.id), cal.truth[row.id])
        return
    # Summaries: word overlap with the reference is a cheap first filter (a summary sharing almost
    # nothing with it fails unjudged); the rest are judged against their source on the rubric.
    for row in judged:
        summary = got.get(row.id)
        if summary is None or overlap_f1(summary, cal.truth[row.id]) < OVERLAP_FLOOR:
            right[row.id] = False
    to_judge = [row for row in judged if row.id not in right]
    verdicts = judge_summaries(
        settings, catalog, job, judge_id=cal.judge_id, items=to_judge, summaries={r.id: got.get(r.id) for r in to_judge}
    )
    if verdicts is None:
        raise CalibrationBudgetError("the team's budget cannot take the judge's calls")
    right.update(verdicts)  # an item the judge could not judge is left out: it measures nothing


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


def _store_estimates(
    session: Any, catalog: Catalog, job: Any, measures: dict[str, Measure], cal: Calibration, now: datetime
) -> None:
    for model_id, m in measures.items():
        if not m.n:
            continue
        price = catalog.price(model_id, now)
        repo.upsert_quality_estimate(
            session,
            values={
                "tenant_id": job.tenant_id,
                "signature": signature(job),
                "task": job.task,
                "model_id": model_id,
                "source": "gold" if cal.mode == "gold" else "reference",
                "n": m.n,
                "successes": float(m.right),
                "mean": round(m.mean, 4),
                "lower": round(m.lower, 4),
                "upper": round(m.upper, 4),
                "confidence": m.confidence,
                "input_usd_per_mtok": price.input.base,
                "output_usd_per_mtok": price.output.base,
                "job_id": job.id,
                "measured_at": now,
                "expires_at": now + ESTIMATE_TTL,
                "drifted_at": None,
            },
        )


def _estimate_json(m: Measure) -> dict[str, Any]:
    return {
        "n": m.n,
        "right": m.right,
        "mean": round(m.mean, 4),
        "lower": round(m.lower, 4),
        "upper": round(m.upper, 4),
        "confidence": m.confidence,
        "bounds": m.bounds,
        "source": m.source,
    }


def _route_json(option: RouteOption) -> dict[str, Any]:
    return {
        "kind": option.kind,
        "name": option.name,
        "model_id": option.model_id,
        "second_id": option.second_id,
        "strong_id": option.strong_id,
        "usd_per_item": str(option.usd_per_item),
        "escalated": option.escalated,
        **_estimate_json(option.measure),
    }


def _shuffled(job_id: str, item_id: int) -> bytes:
    """A fixed, job-specific order for the labelled items (a file sorted by label is not sampled by label)."""
    return hashlib.blake2b(f"{job_id}\x1f{item_id}".encode(), digest_size=8).digest()


def _simulated_note(job: Any, cal: Calibration) -> str | None:
    """The sandbox cannot know a user's own labels: say so where its accuracy shows."""
    if not job.simulated:
        return None
    note = "SIMULATED: the sandbox answered, so these accuracies are not a measurement of any real model"
    if cal.mode != "gold" or not job.labels:
        return note
    rows = [row for row in cal.sample if row.gold is not None][:200]
    known = sum(true_label(row.text, tuple(job.labels)) == row.gold for row in rows)
    if rows and known < 0.9 * len(rows):
        note += (
            f"; it knows only its own demo keywords, and agrees with {known}/{len(rows)} of your labels before "
            "any model answers: simulated accuracy says nothing about real models on your labels"
        )
    return note


@contextmanager
def _job_lock(settings: Settings, job_id: str) -> Iterator[bool]:
    """Hold a Postgres advisory lock on the job for the calibration (SQLite: one process, no lock)."""
    if settings.is_sqlite:
        yield True
        return
    with repo.try_lock(get_engine(settings), f"calibrate:{job_id}") as locked:
        yield locked
