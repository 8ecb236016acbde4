"""Calibration on the job's own items, on Postgres, with the sandbox answering (model-dependent quality)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from router.catalog import Catalog, load_catalog
from router.cli.demo import DEMO_LABELS, write_demo_tickets
from router.engine.chunk import chunk_ranges, run_job_inline
from router.jobs.calibrate import calibrate_job
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import Call, Item, JobStatus, QualityEstimate
from router.settings import Settings


@pytest.fixture
def sandbox(pg_url: str) -> tuple[Settings, Catalog]:
    settings = Settings(database_url=pg_url, sandbox="on", _env_file=None)  # type: ignore[call-arg]
    return settings, load_catalog(None)


def _job(
    settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    *,
    n: int,
    labelled: int,
    bar: float = 0.9,
    **kw: object,
) -> tuple[str, dict[str, str]]:
    path = tmp_path / f"t{n}-{labelled}.jsonl"
    truth = write_demo_tickets(path, n=n, labelled=labelled)
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task="classify", labels=DEMO_LABELS, min_quality=bar, **kw
    )  # type: ignore[arg-type]
    submitted = submit_job(settings, catalog, request)
    return submitted.job_id, truth


def _calls(settings: Settings, job_id: str) -> list[Call]:
    with session_scope(settings) as session:
        return list(session.execute(select(Call).where(Call.job_id == job_id)).scalars())


def test_gold_calibration_chooses_a_model_whose_bound_meets_the_bar_and_charges_gold_items_once(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog = sandbox
    job_id, truth = _job(settings, catalog, tmp_path, team, n=1000, labelled=200)
    with session_scope(settings) as session:
        assert repo.get_job(session, job_id).status == JobStatus.CALIBRATING
    summary = calibrate_job(settings, catalog, job_id=job_id)
    assert summary["outcome"] == "chosen" and summary["sample"] == 200
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
    assert job.status == JobStatus.RUNNING and job.route
    estimates = summary["estimates"]
    if job.route["kind"] == "single":
        assert estimates[job.model_id]["lower"] >= 0.9
    else:
        assert summary["cascade"]["use_cascade"] and summary["cascade"]["right"] / summary["cascade"]["n"] >= 0.9
    # Every estimate is Wilson on its own counts; models dropped or undecided are shown too.
    assert all(e["lower"] <= e["mean"] <= e["upper"] and e["n"] > 0 for e in estimates.values())
    run_job_inline(settings, catalog, job_id=job_id, ranges=chunk_ranges(1000, settings.chunk_size))
    calls = _calls(settings, job_id)
    calibration = [c for c in calls if c.purpose == "calibration"]
    assert calibration and all(c.simulated for c in calibration)
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        items = list(session.execute(select(Item).where(Item.job_id == job_id)).scalars())
        stored = session.execute(
            select(func.count()).select_from(QualityEstimate).where(QualityEstimate.job_id == job_id)
        ).scalar()
    assert job.status == JobStatus.DONE and job.n_done + job.n_failed == 1000
    assert stored == len(estimates)
    gold_ids = {i.id for i in items if i.gold is not None}
    kept = summary["kept_answers"]
    assert kept > 100  # most gold items' answers under the chosen route were already known
    run_on_gold = {c.item_id for c in calls if c.purpose == "run" and c.item_id in gold_ids}
    assert len(run_on_gold) <= len(gold_ids) - kept  # the kept ones were not called again
    accuracy = sum(i.output == truth[i.ext_id] for i in items if i.status == "done") / len(items)
    assert accuracy >= 0.9
    # Calibration spend shows as such in the month report, to the last digit of the ledger.
    from datetime import UTC, datetime

    from router.reports.monthly import monthly_report

    with session_scope(settings) as session:
        report = monthly_report(session, month=datetime.now(UTC).strftime("%Y-%m"), tenant=team[0], by="team")
    assert report.totals.calibration_spend_usd == sum((c.cost_usd for c in calibration), Decimal(0)) > 0


def test_a_sample_too_small_says_how_many_more_items_are_needed_and_runs_nothing(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog = sandbox
    job_id, _ = _job(settings, catalog, tmp_path, team, n=300, labelled=12, bar=0.9, models=frozenset({"gpt-4o-mini"}))
    summary = calibrate_job(settings, catalog, job_id=job_id)
    assert summary["outcome"] == "need_more", summary
    assert "more labelled items would decide it" in summary["message"]
    needed = int(summary["message"].split("about ")[1].split(" more")[0])
    assert needed > 12
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
    assert job.status == JobStatus.NO_MODEL and job.n_done == 0
    assert {c.purpose for c in _calls(settings, job_id)} == {"calibration"}  # the bulk never ran


def test_a_bar_no_model_can_meet_stops_before_the_bulk_with_each_estimate(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog = sandbox
    job_id, _ = _job(settings, catalog, tmp_path, team, n=400, labelled=200, bar=0.995)
    summary = calibrate_job(settings, catalog, job_id=job_id)
    assert summary["outcome"] in ("none", "need_more")
    assert len(summary["estimates"]) >= 3 and all(
        e["upper"] < 1.0 or e["lower"] < 0.995 for e in summary["estimates"].values()
    )
    before = len(_calls(settings, job_id))
    run_job_inline(
        settings, catalog, job_id=job_id, ranges=chunk_ranges(400, settings.chunk_size)
    )  # a stopped job claims nothing
    assert len(_calls(settings, job_id)) == before


def test_estimates_are_reused_by_the_next_job_of_the_kind_and_a_price_change_retests(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog = sandbox
    job_id, _ = _job(settings, catalog, tmp_path, team, n=300, labelled=200)
    first = calibrate_job(settings, catalog, job_id=job_id)
    assert first["outcome"] == "chosen"
    # The next job of the same kind has no labels: it routes on the stored estimates, no calibration.
    second, _ = _job(settings, catalog, tmp_path / "..", team, n=50, labelled=0)
    with session_scope(settings) as session:
        job = repo.get_job(session, second)
    assert job.status == JobStatus.RUNNING and job.quality_mode == "prior"
    sources = [v for v in job.decision["verdicts"] if v["model_id"] in first["estimates"]]
    assert sources and all(v["quality_bound"] is not None for v in sources)
    # A cheaper model's price changes: its estimate goes stale, and the next job re-tests on the first job's labels.
    cheapest = min(first["estimates"], key=lambda m: catalog.price(m).input.base)
    with session_scope(settings) as session:
        row = session.execute(
            select(QualityEstimate).where(QualityEstimate.model_id == cheapest, QualityEstimate.job_id == job_id)
        ).scalar_one()
        row.input_usd_per_mtok = row.input_usd_per_mtok + Decimal("0.01")
        session.add(row)
    third, _ = _job(settings, catalog, tmp_path / "..", team, n=60, labelled=0)
    with session_scope(settings) as session:
        job = repo.get_job(session, third)
    assert job.status == JobStatus.CALIBRATING and job.calibration["sample_job_id"] == job_id
    summary = calibrate_job(settings, catalog, job_id=third)
    assert cheapest in summary["estimates"]


def test_reference_mode_scores_models_against_the_strongest(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    settings, catalog = sandbox
    job_id, _ = _job(settings, catalog, tmp_path, team, n=400, labelled=0, bar=0.85, quality="reference")
    summary = calibrate_job(settings, catalog, job_id=job_id)
    reference = summary["reference_id"]
    assert reference and reference not in summary["estimates"]
    calls = _calls(settings, job_id)
    assert sum(1 for c in calls if c.model_id == reference and c.purpose == "calibration") == summary["sample"]
    assert summary["outcome"] == "chosen"


def test_drift_checks_reroute_the_rest_of_the_job_upward(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    from router.engine import runtime
    from router.ledger.tables import JobEvent
    from router.providers.registry import close_all

    settings, catalog = sandbox
    job_id, _ = _job(
        settings,
        catalog,
        tmp_path,
        team,
        n=4000,
        labelled=200,
        bar=0.85,
        models=frozenset({"gpt-4o", "claude-sonnet-4-5"}),
    )
    summary = calibrate_job(settings, catalog, job_id=job_id)
    with session_scope(settings) as session:
        route = repo.get_job(session, job_id).route
    assert (
        summary["outcome"] == "chosen"
        and route["model_id"] == "gpt-4o"
        and route["reference_id"] == "claude-sonnet-4-5"
    )
    assert route["drift_share"] == 0.02
    # The chosen model gets worse after calibration (the sandbox answers by the catalog's quality).
    worse = tmp_path / "worse.toml"
    worse.write_text('[[models]]\nid = "gpt-4o"\nquality = { classify = 0.40 }\n')
    runtime.run(close_all())
    # A re-route reaches only chunks claimed after it: what is already held runs on. Hold 4 chunks
    # (400 items) at once, so that most of this 4,000-item job is claimed after drift shows.
    held = Settings(database_url=settings.database_url, sandbox="on", worker_threads=4, _env_file=None)  # type: ignore[call-arg]
    try:
        run_job_inline(held, load_catalog(worse), job_id=job_id, ranges=chunk_ranges(4000, held.chunk_size))
    finally:
        runtime.run(close_all())
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        events = list(
            session.execute(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "drift")).scalars()
        )
        last_gpt4o = session.execute(
            select(func.max(Item.seq))
            .join(Call, Call.id == Item.final_call_id)
            .where(Item.job_id == job_id, Call.model_id == "gpt-4o", Call.purpose == "run")
        ).scalar()
        stale = session.execute(
            select(QualityEstimate.drifted_at).where(
                QualityEstimate.job_id == job_id, QualityEstimate.model_id == "gpt-4o"
            )
        ).scalar()
    assert len(events) == 1 and events[0].detail["rerouted_to"] == "claude-sonnet-4-5", events
    assert job.model_id == "claude-sonnet-4-5" and job.status == JobStatus.DONE
    assert last_gpt4o is not None and last_gpt4o < 3000  # the rest of the job ran on the stronger model
    assert stale is not None  # later jobs of this kind re-measure gpt-4o


def test_summaries_are_scored_by_overlap_with_the_reference(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    from policies.scoring import agrees, overlap_f1
    from tests.helpers import write_jsonl

    assert overlap_f1("the cat sat", "the cat sat") == 1.0 and overlap_f1("a b", "c d") == 0.0
    assert agrees("summarize", "refund for a double charge", "customer asks a refund for a double charge")
    assert not agrees("summarize", "login fails", "customer asks a refund for a double charge")
    settings, catalog = sandbox
    texts = [
        f"Customer {k} reports that the invoice for March charged the card twice and asks for a refund of one "
        f"payment before the end of the month, citing order {k}."
        for k in range(120)
    ]
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{k}", "text": t} for k, t in enumerate(texts)])
    job_id = submit_job(
        settings,
        catalog,
        JobRequest(
            path=path,
            team=team[1],
            tenant=team[0],
            task="summarize",
            max_words=30,
            min_quality=0.8,
            quality="reference",
        ),
    ).job_id
    summary = calibrate_job(settings, catalog, job_id=job_id)
    assert summary["outcome"] == "chosen" and summary["reference_id"]
    assert all(e["n"] > 0 for e in summary["estimates"].values())
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
    assert job.route["kind"] == "single" and job.route["drift_share"] == 0.0  # no cascade or drift checks for summaries


def test_drift_counts_from_before_a_reroute_are_not_charged_to_the_new_model(
    sandbox: tuple[Settings, Catalog], tmp_path: Path, team: tuple[str, str]
) -> None:
    """Many chunks run at once: those that started on the old model finish after the re-route."""
    settings, catalog = sandbox
    job_id, _ = _job(settings, catalog, tmp_path, team, n=300, labelled=0, bar=0.5)
    with session_scope(settings) as session:
        running_on = repo.get_job(session, job_id).model_id
        assert running_on is not None
        repo.add_drift_counts(session, job_id=job_id, model_id=running_on, checked=5, agreed=4)
        repo.add_drift_counts(session, job_id=job_id, model_id="a-model-it-left", checked=50, agreed=0)
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
    assert (job.n_drift_checked, job.n_drift_agreed) == (5, 4)
