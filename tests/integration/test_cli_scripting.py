"""Scripting the CLI: `jobs list`, `--json` on the commands that show data, `submit --quiet` (the job id
alone on stdout) and `-` as standard input."""

from __future__ import annotations

import json
from decimal import Decimal

from typer.testing import CliRunner

from router.cli.app import app
from router.settings import Settings
from tests.helpers import tickets

runner = CliRunner()


def _jsonl(items: list[dict[str, str]]) -> str:
    return "".join(json.dumps(i) + "\n" for i in items)


ARGS = ["--task", "classify", "--labels", "billing,bug,other", "--min-quality", "0.5", "--quality", "prior"]


def test_submit_quiet_reads_stdin_and_prints_the_job_id_alone(sqlite_cli: Settings) -> None:
    result = runner.invoke(app, ["submit", "-", "--team", "growth", *ARGS, "--quiet"], input=_jsonl(tickets(7)))
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    assert len(job_id) == 12 and "\n" not in job_id
    status = runner.invoke(app, ["status", job_id, "--json"])
    state = json.loads(status.stdout)
    assert state["job_id"] == job_id and state["status"] == "done" and state["n_done"] == 7
    assert state["exit_code"] == 0 and "is done: 7 done, 0 failed" in state["summary"]
    assert isinstance(state["spent_usd"], str) and "E" not in state["spent_usd"]


def test_submit_json_and_jobs_list_with_filters(sqlite_cli: Settings) -> None:
    submitted = runner.invoke(app, ["submit", "-", "--team", "growth", *ARGS, "--json"], input=_jsonl(tickets(5)))
    job = json.loads(submitted.stdout)
    assert submitted.exit_code == 0 and job["n_items"] == 5
    listed = json.loads(runner.invoke(app, ["jobs", "list", "--team", "growth", "--json"]).stdout)
    assert [j["id"] for j in listed] == [job["job_id"]] and listed[0]["tenant"] == "acme"
    assert json.loads(runner.invoke(app, ["jobs", "list", "--status", "paused", "--json"]).stdout) == []
    assert json.loads(runner.invoke(app, ["jobs", "list", "--month", "2001-01", "--json"]).stdout) == []
    bad = runner.invoke(app, ["jobs", "list", "--status", "finished"])
    assert bad.exit_code == 2 and "unknown state" in bad.output
    table = runner.invoke(app, ["jobs", "list"])
    assert job["job_id"] in table.output


def test_data_commands_speak_json(sqlite_cli: Settings) -> None:
    assert {"tenant": "acme", "team": "growth"} in json.loads(runner.invoke(app, ["team", "list", "--json"]).stdout)
    models = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    assert any(m["model_id"] == "gpt-4o" and Decimal(m["input_usd_per_mtok"]) == Decimal("2.5") for m in models)
    assert json.loads(runner.invoke(app, ["quality", "--json"]).stdout) == []
    assert runner.invoke(app, ["budget", "set", "--team", "growth", "--monthly", "500"]).exit_code == 0
    budgets = json.loads(runner.invoke(app, ["budget", "show", "--json"]).stdout)
    assert budgets[0]["team"] == "growth" and Decimal(budgets[0]["limit"]) == 500 and "E" not in budgets[0]["limit"]
