"""The CLI's batch mode: --deadline and --mode, the decision line, status, the month report's levers,
and `pennyroute demo --deadline 24h` with the two savings side by side."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from router.settings import Settings
from tests.helpers import run_cli, tickets, write_jsonl


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--deadline", "soon"), "--deadline 'soon': give a duration"),
        (("--deadline", "2020-01-01"), "--deadline 2020-01-01: is not in the future"),
        (("--mode", "later"), "unknown --mode 'later': use one of auto, sync, batch"),
        (("--mode", "batch", "--deadline", "1h"), "--mode batch: deadline near"),
    ],
)
def test_bad_values_name_the_flag(
    cli_env: Settings, cli_team: str, tmp_path: Path, flags: tuple[str, ...], expected: str
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", tickets(5))
    code, output = run_cli(
        "submit", str(path), "--task", "classify", "--labels", "billing,bug,other", "--team", cli_team, *flags
    )
    assert code != 0 and expected in output, output


def test_submit_with_a_deadline_runs_in_batch_and_says_so(
    cli_env: Settings, cli_team: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PENNYROUTE_SANDBOX_BATCH_DIR", str(tmp_path / "batches"))
    monkeypatch.setenv("PENNYROUTE_BATCH_POLL_EVERY_S", "0.05")
    from router.settings import get_settings

    get_settings.cache_clear()
    path = write_jsonl(tmp_path / "in.jsonl", tickets(120))
    code, output = run_cli(
        "submit",
        str(path),
        "--task",
        "classify",
        "--labels",
        "billing,bug,other",
        "--team",
        cli_team,
        "--quality",
        "prior",
        "--min-quality",
        "0.5",
        "--deadline",
        "24h",
    )
    assert code == 0, output
    assert "mode: batch at 0.5 of the standard price (50% off, saving about $" in output
    job_id = output.split("job ")[1].split(":")[0]
    code, status = run_cli("status", job_id)
    assert code == 0 and "provider batches │ 0 open (1 ingested)" in status, status
    assert "saved vs baseline │" in status and "batch discount $0.0" in status
    from router.ledger.tables import utcnow

    code, report = run_cli("report", "--month", f"{utcnow():%Y-%m}", "--by", "job")
    assert code == 0, report
    assert "By lever: routing saved $" in report and "the providers' batch discount $" in report


def test_demo_with_a_deadline_shows_both_savings(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (
            k.endswith("_API_KEY")
            or k.startswith("PENNYROUTE_")
            or k in ("DATABASE_URL", "BROKER_URL", "CELERY_BROKER_URL")
        )
    }
    env["PENNYROUTE_SANDBOX_BATCH_DIR"] = str(tmp_path / "batches")
    env["PENNYROUTE_BATCH_POLL_EVERY_S"] = "0.1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "router.cli.app",
            "demo",
            "--items",
            "600",
            "--min-quality",
            "0.85",
            "--deadline",
            "24h",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "mode: batch at 0.5 of the standard price" in out
    assert "Savings by lever" in out and "routing saved" in out and "batch discount saved" in out
    assert "provider batches │ 0 open" in out


def test_bad_sandbox_batch_knobs_refuse_the_job_before_it_is_written(
    cli_env: Settings, cli_team: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.settings import get_settings

    monkeypatch.setenv("PENNYROUTE_SANDBOX_BATCH", "errors=lots")
    get_settings.cache_clear()
    path = write_jsonl(tmp_path / "in.jsonl", tickets(5))
    code, output = run_cli(
        "submit",
        str(path),
        "--task",
        "classify",
        "--labels",
        "billing,bug,other",
        "--team",
        cli_team,
        "--deadline",
        "24h",
    )
    assert code == 2 and "PENNYROUTE_SANDBOX_BATCH" in output, output


@pytest.mark.parametrize("ledger", ["cli_env", "sqlite_cli"])
def test_provider_batches_nobody_polls_are_said_with_what_to_do(
    ledger: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running job whose open provider batches nothing has polled for a while (beat not running, or
    the in-process run ended) says so in `status`, its JSON and the API's, with the command to fix it."""
    from datetime import timedelta

    from router.jobs.results import batches_unpolled, job_state
    from router.ledger import repo
    from router.ledger.db import session_scope
    from router.ledger.tables import Job, JobStatus, ProviderBatch, utcnow
    from router.settings import get_settings

    settings: Settings = request.getfixturevalue(ledger)
    job_id = f"quiet{uuid.uuid4().hex[:7]}"
    with session_scope(settings) as session:
        team = repo.ensure_team(session, tenant="quiet", team="quiet")
        session.add(
            Job(id=job_id, tenant_id=team.tenant_id, team_id=team.id, task="classify", min_quality=0.5,
                status=JobStatus.RUNNING, mode="batch")
        )  # fmt: skip
        session.flush()
        session.add(
            ProviderBatch(id=f"{job_id}-1", job_id=job_id, wave="w1", provider="openai", model_id="gpt-4o-mini",
                          state="running", created_at=utcnow() - timedelta(minutes=30), polled_at=utcnow() - timedelta(minutes=9))
        )  # fmt: skip
        session.add(
            ProviderBatch(id=f"{job_id}-2", job_id=job_id, wave="w1", provider="openai", model_id="gpt-4o-mini",
                          state="ingested", created_at=utcnow() - timedelta(hours=3))
        )  # fmt: skip
    code, status = run_cli("status", job_id)
    assert code == 0 and "have not been polled for 9 min" in status, status
    assert f"pennyroute jobs resume {job_id}" in status  # no broker: the in-process run had ended
    code, as_json = run_cli("status", job_id, "--json")
    assert '"batches_unpolled": "its provider batches have not been polled for 9 min' in as_json
    with_broker = settings.model_copy(update={"broker_url": "redis://127.0.0.1:6379/15"})
    said = batches_unpolled(with_broker, job_state(with_broker, job_id))
    assert said is not None and "is celery beat running?" in said
    with session_scope(settings) as session:  # polled a moment ago: nothing to say
        repo.update_provider_batch(session, f"{job_id}-1", polled_at=utcnow())
    assert batches_unpolled(settings, job_state(settings, job_id)) is None
    get_settings.cache_clear()
