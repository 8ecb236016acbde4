"""Budgets through the CLI, as a new user meets them: on the embedded SQLite default (no servers),
bad input that changes nothing, and a job that pauses when the budget is spent and resumes when raised."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from router.cli.app import app
from router.cli.demo import write_demo_file
from router.ledger.db import session_scope
from router.ledger.tables import BudgetEvent, BudgetPeriod, BudgetPolicy, Call, CallRollup, Job
from router.settings import Settings

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def _policies(settings: Settings) -> list[tuple[object, ...]]:
    with session_scope(settings) as session:
        return [
            tuple(r)
            for r in session.execute(
                select(BudgetPolicy.team_id, BudgetPolicy.monthly_limit, BudgetPolicy.currency)
            ).all()
        ]  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--team", "growth", "--monthly", "-5"], "--monthly: -5 must be a positive amount"),
        (["--team", "growth", "--monthly", "0"], "--monthly: 0 must be a positive amount"),
        (["--team", "growth", "--monthly", "lots"], "--monthly: 'lots' is not a number"),
        (["--team", "growth", "--monthly", "NaN"], "--monthly: NaN must be a positive amount"),
        (["--team", "nobody", "--monthly", "5"], "unknown team 'nobody'"),
        (["--team", "growth", "--tenant", "nowhere", "--monthly", "5"], "unknown tenant 'nowhere'"),
        (["--team", "growth", "--monthly", "5", "--currency", "GBP"], "--currency: unknown currency 'GBP'"),
        (["--team", "growth", "--monthly", "5", "--currency", "EUR"], "set PENNYROUTE_USD_PER_EUR"),
        (["--team", "growth", "--monthly", "5", "--soft", "120%"], "--soft: 120% must be between 0% and 100%"),
        (["--team", "growth", "--monthly", "5", "--soft", "most"], "--soft: 'most' is not a percentage"),
    ],
)
def test_bad_budget_input_changes_nothing(sqlite_cli: Settings, args: list[str], expected: str) -> None:
    assert _run("budget", "set", "--team", "growth", "--monthly", "7")[0] == 0
    before = _policies(sqlite_cli)
    code, output = _run("budget", "set", *args)
    assert code == 2 and expected in output, output
    assert _policies(sqlite_cli) == before


@pytest.mark.parametrize("month", ["2026-13", "nov", "2026/11", "26-11"])
def test_malformed_month(sqlite_cli: Settings, month: str) -> None:
    code, output = _run("budget", "show", "--month", month)
    assert code == 2 and f"'{month}' is not a month" in output


def test_unknown_tenant_for_a_team(sqlite_cli: Settings) -> None:
    code, output = _run("team", "create", "ops", "--tenant", "nowhere")
    assert code == 2 and "unknown tenant 'nowhere'" in output


def test_job_pauses_when_the_budget_is_spent_and_resumes_when_raised(sqlite_cli: Settings, tmp_path: Path) -> None:
    path = write_demo_file(tmp_path / "tickets.jsonl", n=300)
    assert _run("budget", "set", "--team", "growth", "--monthly", "0.001", "--soft", "50%")[0] == 0
    labels = "billing,bug,account,other"
    code, output = _run(
        "submit", str(path), "--task", "classify", "--labels", labels, "--team", "growth", "--quality", "prior"
    )
    assert code == 2 and "exceeds team growth's remaining budget $0.001000" in output  # reject is the default
    code, output = _run(
        "submit",
        str(path),
        "--task",
        "classify",
        "--labels",
        labels,
        "--team",
        "growth",
        "--on-budget",
        "pause",
        "--quality",
        "prior",
    )
    assert code == 3 and "is paused" in output and "its team's budget is spent" in output, output  # 3: paused
    job_id = output.split("job ", 1)[1].split(":", 1)[0].strip()
    with session_scope(sqlite_cli) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "paused" and 0 < job.n_done < 300
        spent = sum(
            (c for (c,) in session.execute(select(Call.cost_usd).where(Call.job_id == job_id))), start=Decimal(0)
        )
        kinds = {e.kind for e in session.execute(select(BudgetEvent)).scalars()}
        assert {"limit_set", "soft_limit", "paused"} <= kinds
    code, output = _run("budget", "show")
    assert code == 0 and "growth" in output and "(sent)" in output
    with session_scope(sqlite_cli) as session:
        settled, reserved = session.execute(select(BudgetPeriod.settled, BudgetPeriod.reserved)).one()  # type: ignore[call-overload]
    assert Decimal("0.00095") <= settled <= Decimal("0.001") and reserved == 0  # at least 95% spent, never over
    assert settled == spent
    code, output = _run("budget", "set", "--team", "growth", "--monthly", "1")
    assert code == 0 and f"resuming job {job_id}" in output
    with session_scope(sqlite_cli) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "done" and job.n_done + job.n_failed == 300
        calls = session.execute(select(func.count()).select_from(Call).where(Call.job_id == job_id)).scalar_one()  # type: ignore[arg-type]
        assert calls == 300  # paused items were handed back untried: nothing called twice
        rolled = session.execute(select(CallRollup.calls, CallRollup.cost_usd).where(CallRollup.job_id == job_id)).all()  # type: ignore[call-overload]
        ledger = sum(
            (c for (c,) in session.execute(select(Call.cost_usd).where(Call.job_id == job_id))), start=Decimal(0)
        )
        assert sum(r[0] for r in rolled) == 300 and sum((r[1] for r in rolled), start=Decimal(0)) == ledger
    assert spent > 0
    results = tmp_path / "out.jsonl"
    assert _run("results", job_id, "-o", str(results))[0] == 0
    assert len([json.loads(line) for line in results.read_text().splitlines()]) == 300


def test_report_command_in_every_format(sqlite_cli: Settings, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    path = write_demo_file(tmp_path / "tickets.jsonl", n=120)
    assert (
        _run(
            "submit",
            str(path),
            "--task",
            "classify",
            "--labels",
            "billing,bug,account,other",
            "--team",
            "growth",
            "--quality",
            "prior",
        )[0]
        == 0
    )
    month = datetime.now(UTC).strftime("%Y-%m")
    with session_scope(sqlite_cli) as session:
        ledger = sum((c for (c,) in session.execute(select(Call.cost_usd))), start=Decimal(0))
    code, output = _run("report", "--month", month, "--by", "model")
    assert code == 0 and "gpt-4o-mini" in output
    assert "SIMULATED: all calls answered by the sandbox" in output  # sandbox spend is labelled
    for fmt in ("csv", "json", "html"):
        target = tmp_path / f"report.{fmt}"
        code, output = _run("report", "--month", month, "--format", fmt, "-o", str(target))
        assert code == 0, output
        assert str(ledger) in target.read_text() or f"{ledger:.10f}" in target.read_text(), fmt  # exact, unrounded
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["calls"] == 120 and report["totals"]["simulated_calls"] == 120
    assert "SIMULATED" in (tmp_path / "report.html").read_text()
    assert _run("report", "--month", "2026-13")[0] == 2
    assert "unknown format" in _run("report", "--month", month, "--format", "pdf")[1]
    assert "unknown tenant" in _run("report", "--month", month, "--tenant", "nowhere")[1]
