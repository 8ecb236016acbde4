"""Bad input, tried as a new user would through the CLI: each gets a clear error naming what is
wrong, and nothing is half-written (no job, no items)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from router.cli.app import app
from router.ledger.db import session_scope
from router.ledger.tables import Item, Job
from router.settings import Settings
from tests.helpers import tickets, write_jsonl

runner = CliRunner()


def _counts(settings: Settings) -> tuple[int, int]:
    with session_scope(settings) as session:
        return (
            session.execute(select(func.count()).select_from(Job)).scalar_one(),
            session.execute(select(func.count()).select_from(Item)).scalar_one(),
        )


def _submit(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["submit", *args])
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


GOOD = ["--task", "classify", "--labels", "billing,bug,other", "--min-quality", "0.9"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--task", "translate", "--labels", "a,b"], "unknown task 'translate'"),
        (["--task", "classify", "--labels", "a,b", "--min-quality", "1.5"], "outside 0..1"),
        (["--task", "classify", "--labels", "a,b", "--min-quality", "-0.1"], "outside 0..1"),
        (["--task", "classify"], "classify needs at least two labels"),
        (["--task", "classify", "--labels", "a,A"], "labels repeat"),
        (["--task", "summarize", "--max-words", "0"], "--max-words must be at least 1"),
    ],
)
def test_bad_flags_are_named_and_nothing_is_written(
    cli_env: Settings, cli_team: str, tmp_path: Path, args: list[str], expected: str
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", tickets(3))
    before = _counts(cli_env)
    code, output = _submit(str(path), "--team", cli_team, *args)
    assert code == 2 and expected in output
    assert _counts(cli_env) == before


def test_unknown_team(cli_env: Settings, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", tickets(3))
    before = _counts(cli_env)
    code, output = _submit(str(path), "--team", "nobody-here", *GOOD)
    assert code == 2 and "unknown team 'nobody-here'" in output and "pennyroute team create" in output
    assert _counts(cli_env) == before


def test_missing_file(cli_env: Settings, cli_team: str, tmp_path: Path) -> None:
    code, output = _submit(str(tmp_path / "nope.jsonl"), "--team", cli_team, *GOOD)
    assert code == 2 and "does not exist" in output


def test_empty_file(cli_env: Settings, cli_team: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    before = _counts(cli_env)
    code, output = _submit(str(path), "--team", cli_team, *GOOD)
    assert code == 2 and "empty.jsonl is empty: no items to run" in output
    assert _counts(cli_env) == before


def test_bad_lines_are_reported_and_good_lines_run(cli_env: Settings, cli_team: str, tmp_path: Path) -> None:
    rows: list[object] = [
        {"id": "a", "text": "I was charged twice on my invoice"},
        '{"id": "b", "text": "unterminated',  # line 2: malformed JSON
        {"id": "c"},  # line 3: missing text
        {"id": "a", "text": "same id again"},  # line 4: duplicate id
        {"id": "d", "text": "   "},  # line 5: empty text
        {"id": "e", "text": "ok", "gold": "refund"},  # line 6: gold not a label
        {"id": "f", "text": "x" * 5_000_000},  # line 7: longer than every context window
        {"id": "g", "text": "The app crashes with an error"},
        [1, 2],  # line 9: not an object
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    code, output = _submit(str(path), "--team", cli_team, *GOOD)
    assert code == 0, output
    for expected in (
        "line 2: not valid JSON",
        "line 3, field 'text': missing",
        "line 4, field 'id': duplicate id 'a'",
        "line 5, field 'text': is empty",
        "line 6, field 'gold': 'refund' is not one of the labels",
        "line 7, field 'text'",
        "longer than every eligible model's context window",
        "line 9: a line must be a JSON object",
    ):
        assert expected in output, expected
    assert "2 items accepted, 7 lines rejected" in output
    job_id = output.split("job ", 1)[1].split(":", 1)[0].strip()
    status = runner.invoke(app, ["status", job_id])
    assert status.exit_code == 0 and "done" in status.output and "SIMULATED" in status.output
    out = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["results", job_id, "-o", str(out)]).exit_code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "g"]
    assert all(r["status"] == "done" and r["model"] and r["simulated"] and float(r["cost_usd"]) > 0 for r in records)


def test_no_model_meets_the_bar(cli_env: Settings, cli_team: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", tickets(3))
    before = _counts(cli_env)
    code, output = _submit(
        str(path), "--team", cli_team, "--task", "classify", "--labels", "a,b", "--min-quality", "0.999"
    )
    assert code == 2 and "No model qualifies" in output and "< bar 0.999" in output
    assert _counts(cli_env) == before


def test_region_constraint_routes_to_an_eu_model(cli_env: Settings, cli_team: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", tickets(20))
    code, output = _submit(str(path), "--team", cli_team, *GOOD, "--region", "eu")
    assert code == 0, output
    assert "mistral-medium-2508 is the cheapest" in output


def test_unknown_job(cli_env: Settings) -> None:
    result = runner.invoke(app, ["status", "doesnotexist"])
    assert result.exit_code == 2 and "unknown job 'doesnotexist'" in result.output


def test_all_lines_bad(cli_env: Settings, cli_team: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["{", {"id": 1}])
    before = _counts(cli_env)
    code, output = _submit(str(path), "--team", cli_team, *GOOD)
    assert code == 2 and "all 2 lines were rejected" in output and "line 1: not valid JSON" in output
    assert _counts(cli_env) == before
