"""Calibration's options through the CLI, as a user runs them: budgets, labelled items, unproven jobs,
the judge, `pennyroute calibrate`, and what the sandbox says about labels it cannot know."""

from __future__ import annotations

import json
import random
from pathlib import Path

from sqlalchemy import select

from router.cli.demo import DEMO_LABELS, write_demo_tickets
from router.ledger.db import session_scope
from router.ledger.tables import Call, Item, Job, JobStatus, QualityEstimate
from router.settings import Settings
from tests.helpers import run_cli, write_jsonl

LABELS = ",".join(DEMO_LABELS)


def _last_job(settings: Settings) -> Job:
    with session_scope(settings) as session:
        job = session.execute(select(Job).order_by(Job.created_at.desc()).limit(1)).scalar_one()  # type: ignore[union-attr]
        session.expunge(job)
        return job


def test_bad_calibration_options_are_named(cli_env: Settings, cli_team: str, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_demo_tickets(path, n=100, labelled=50)
    base = ["submit", str(path), "--task", "classify", "--labels", LABELS, "--team", cli_team]
    code, out = run_cli(*base, "--calibration-budget", "lots")
    assert code != 0 and "--calibration-budget" in out and "20%" in out
    code, out = run_cli(*base, "--if-unproven", "maybe")
    assert code != 0 and "--if-unproven" in out
    code, out = run_cli(*base, "--judge", "gpt-4o")
    assert code != 0 and "--judge applies to summarize jobs" in out


def test_if_unproven_best_runs_the_best_measured_route_and_marks_it(
    cli_env: Settings, cli_team: str, tmp_path: Path
) -> None:
    path = tmp_path / "t.jsonl"
    write_demo_tickets(path, n=600, labelled=200)
    args = ["submit", str(path), "--task", "classify", "--labels", LABELS, "--team", cli_team, "--min-quality", "0.97"]
    code, out = run_cli(*args, "--models", "gpt-4o-mini,gpt-4o", "--if-unproven", "best")
    job = _last_job(cli_env)
    assert job.calibration and job.calibration["unproven"], out
    assert job.status == JobStatus.DONE and job.n_done == 600, out
    code, status = run_cli("status", job.id)
    assert "UNPROVEN" in status
    results = tmp_path / "r.jsonl"
    run_cli("results", job.id, "-o", str(results))
    records = [json.loads(line) for line in results.read_text().splitlines()]
    run = [r for r in records if "gold" not in r]
    assert run and all("lower bound" in r["unproven"] for r in run)
    assert all("unproven" not in r and r["answer_from"] == "gold label" for r in records if "gold" in r)
    # The same job without --if-unproven stops, says why, and runs nothing.
    code, out = run_cli(*args, "--models", "gpt-4o-mini,gpt-4o")
    stopped = _last_job(cli_env)
    assert code == 4 and stopped.status == JobStatus.NO_MODEL and stopped.n_done == 0  # 4: stopped
    code, status = run_cli("status", stopped.id)
    assert "stopped" in status and "no route is proven" in status


def test_run_labelled_sends_labelled_items_to_the_route(cli_env: Settings, cli_team: str, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_demo_tickets(path, n=400, labelled=200)
    code, out = run_cli(
        "submit", str(path), "--task", "classify", "--labels", LABELS, "--team", cli_team, "--min-quality", "0.85",
        "--run-labelled",
    )  # fmt: skip
    job = _last_job(cli_env)
    assert code == 0 and job.status == JobStatus.DONE, out
    with session_scope(cli_env) as session:
        gold = list(session.execute(select(Item).where(Item.job_id == job.id, Item.gold.is_not(None))).scalars())
    assert gold and all(item.final_call_id is not None for item in gold)  # answered by a model, not by its label


def test_calibrate_measures_for_later_jobs_and_keeps_the_estimates(
    cli_env: Settings, cli_team: str, tmp_path: Path
) -> None:
    path = tmp_path / "labelled.jsonl"
    write_demo_tickets(path, n=300, labelled=300)
    code, out = run_cli(
        "calibrate", str(path), "--task", "classify", "--labels", LABELS, "--team", cli_team, "--min-quality", "0.85"
    )
    assert code == 0, out
    job = _last_job(cli_env)
    with session_scope(cli_env) as session:
        stored = list(session.execute(select(QualityEstimate).where(QualityEstimate.job_id == job.id)).scalars())
        run_calls = session.execute(select(Call).where(Call.job_id == job.id, Call.purpose == "run")).all()
    assert stored and not run_calls
    assert "one-sided, sequential" in out


def test_the_sandbox_says_it_cannot_measure_a_users_own_labels(
    cli_env: Settings, cli_team: str, tmp_path: Path
) -> None:
    rng = random.Random(3)
    topics = ["shipping", "warranty", "returns"]
    lines = [
        {"id": f"u{k}", "text": f"Customer note {k} about order {rng.randint(1000, 9999)}", "gold": topics[k % 3]}
        for k in range(300)
    ]
    path = write_jsonl(tmp_path / "own.jsonl", lines)
    code, out = run_cli(
        "submit",
        str(path),
        "--task",
        "classify",
        "--labels",
        ",".join(topics),
        "--team",
        cli_team,
        "--min-quality",
        "0.6",
    )
    job = _last_job(cli_env)
    note = (job.calibration or {}).get("simulated_note") or ""
    assert "not a measurement" in note and "your labels" in note
    assert "your labels" in out
