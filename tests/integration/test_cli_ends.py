"""How a job ends, as a user sees it: counts, the reason it waits or stopped, and an exit code a script
can act on (router/cli/ends.py): 0 done, 1 items failed, 2 the command failed, 3 paused, 4 stopped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from router.cli.app import app
from router.ledger import repo
from router.ledger.db import session_scope
from router.settings import Settings, get_settings
from tests.helpers import FAKE_KEY, tickets, write_jsonl

runner = CliRunner()


@pytest.fixture
def live_cli(pg_url: str, catalog_file: Path, fake_provider: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The CLI on the test Postgres, in-process, against the fake provider; yields a fresh team."""
    for name in ("BROKER_URL", "PENNYROUTE_BROKER_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("PENNYROUTE_CATALOG", str(catalog_file))
    monkeypatch.setenv("PENNYROUTE_SANDBOX", "off")
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    get_settings.cache_clear()
    name = f"ends-{uuid.uuid4().hex[:6]}"
    with session_scope(get_settings()) as session:
        repo.ensure_team(session, tenant=f"acme-{name}", team=name)
    yield name
    httpx.post(f"{fake_provider}/_reset")
    get_settings.cache_clear()


def _submit(team: str, path: Path) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["submit", str(path), "--task", "classify", "--labels", "billing,bug,other", "--team", team]
        + ["--min-quality", "0.5", "--models", "gpt-4o-mini", "--quality", "prior"],
    )
    return result.exit_code, " ".join(result.output.split())


def test_a_clean_job_ends_done_with_exit_0(live_cli: str, tmp_path: Path) -> None:
    code, out = _submit(live_cli, write_jsonl(tmp_path / "t.jsonl", tickets(12)))
    assert code == 0 and "is done: 12 done, 0 failed" in out, out


def test_a_refused_key_pauses_the_job_saying_so_and_exits_3(live_cli: str, tmp_path: Path, fake_provider: str) -> None:
    httpx.post(f"{fake_provider}/_fail", json={"status": 401, "count": 1000})
    code, out = _submit(live_cli, write_jsonl(tmp_path / "t.jsonl", tickets(12)))
    assert code == 3, out
    assert "waiting for a provider" in out and "OPENAI_API_KEY" in out and "budget" not in out
    job_id = out.split("job ")[1].split(":")[0]
    status = runner.invoke(app, ["status", job_id])
    assert "paused" in status.output and "OPENAI_API_KEY" in " ".join(status.output.split())


def test_items_that_fail_for_good_are_counted_and_exit_1(live_cli: str, tmp_path: Path, fake_provider: str) -> None:
    httpx.post(f"{fake_provider}/_fail", json={"status": 400, "count": 1000})
    code, out = _submit(live_cli, write_jsonl(tmp_path / "t.jsonl", tickets(12)))
    assert code == 1 and "done with failures: 0 done, 12 failed" in out, out


def test_status_wait_and_resume_give_the_same_codes(live_cli: str, tmp_path: Path, fake_provider: str) -> None:
    httpx.post(f"{fake_provider}/_fail", json={"status": 401, "count": 1000})
    code, out = _submit(live_cli, write_jsonl(tmp_path / "t.jsonl", tickets(8)))
    job_id = out.split("job ")[1].split(":")[0]
    assert code == 3
    assert runner.invoke(app, ["status", job_id, "--wait"]).exit_code == 3
    httpx.post(f"{fake_provider}/_reset")  # the key is fixed
    resumed = runner.invoke(app, ["jobs", "resume", job_id])
    assert resumed.exit_code == 0 and "is done: 8 done, 0 failed" in " ".join(resumed.output.split())
    settings: Settings = get_settings()
    with session_scope(settings) as session:
        assert repo.get_job(session, job_id).status == "done"
