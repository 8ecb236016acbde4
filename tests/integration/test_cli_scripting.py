"""Scripting the CLI: `jobs list`, `--json` on the commands that show data, `submit --quiet` (the job id
alone on stdout) and `-` as standard input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.cli.app import app
from router.settings import get_settings
from tests.helpers import tickets

runner = CliRunner()


@pytest.fixture
def team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The embedded default (SQLite in tmp_path, the sandbox, no broker) with one team."""
    for name in ("BROKER_URL", "PENNYROUTE_BROKER_URL", "CELERY_BROKER_URL", "PENNYROUTE_CATALOG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("PENNYROUTE_SANDBOX", "on")
    get_settings.cache_clear()
    name = f"s-{uuid.uuid4().hex[:6]}"
    assert runner.invoke(app, ["tenant", "create", "acme"]).exit_code == 0
    assert runner.invoke(app, ["team", "create", name, "--tenant", "acme"]).exit_code == 0
    yield name
    get_settings.cache_clear()


def _jsonl(items: list[dict[str, str]]) -> str:
    return "".join(json.dumps(i) + "\n" for i in items)


ARGS = ["--task", "classify", "--labels", "billing,bug,other", "--min-quality", "0.5", "--quality", "prior"]


def test_submit_quiet_reads_stdin_and_prints_the_job_id_alone(team: str) -> None:
    result = runner.invoke(app, ["submit", "-", "--team", team, *ARGS, "--quiet"], input=_jsonl(tickets(7)))
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    assert len(job_id) == 12 and "\n" not in job_id
    status = runner.invoke(app, ["status", job_id, "--json"])
    state = json.loads(status.stdout)
    assert state["job_id"] == job_id and state["status"] == "done" and state["n_done"] == 7
    assert state["exit_code"] == 0 and "is done: 7 done, 0 failed" in state["summary"]
    assert isinstance(state["spent_usd"], str) and "E" not in state["spent_usd"]


def test_submit_json_and_jobs_list_with_filters(team: str) -> None:
    submitted = runner.invoke(app, ["submit", "-", "--team", team, *ARGS, "--json"], input=_jsonl(tickets(5)))
    job = json.loads(submitted.stdout)
    assert submitted.exit_code == 0 and job["n_items"] == 5
    listed = json.loads(runner.invoke(app, ["jobs", "list", "--team", team, "--json"]).stdout)
    assert [j["id"] for j in listed] == [job["job_id"]] and listed[0]["tenant"] == "acme"
    assert json.loads(runner.invoke(app, ["jobs", "list", "--status", "paused", "--json"]).stdout) == []
    assert json.loads(runner.invoke(app, ["jobs", "list", "--month", "2001-01", "--json"]).stdout) == []
    bad = runner.invoke(app, ["jobs", "list", "--status", "finished"])
    assert bad.exit_code == 2 and "unknown state" in bad.output
    table = runner.invoke(app, ["jobs", "list"])
    assert job["job_id"] in table.output


def test_data_commands_speak_json(team: str) -> None:
    assert {"tenant": "acme", "team": team} in json.loads(runner.invoke(app, ["team", "list", "--json"]).stdout)
    models = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    assert any(m["model_id"] == "gpt-4o" and Decimal(m["input_usd_per_mtok"]) == Decimal("2.5") for m in models)
    assert json.loads(runner.invoke(app, ["quality", "--json"]).stdout) == []
    assert runner.invoke(app, ["budget", "set", "--team", team, "--monthly", "500"]).exit_code == 0
    budgets = json.loads(runner.invoke(app, ["budget", "show", "--json"]).stdout)
    assert budgets[0]["team"] == team and Decimal(budgets[0]["limit"]) == 500 and "E" not in budgets[0]["limit"]
