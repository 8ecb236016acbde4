"""`-o` does no harm: no overwrite without --force, never the ledger, a clear error for a missing or
unwritable folder or a folder given as the file, and nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.cli.app import app
from router.settings import Settings
from tests.helpers import run_cli, tickets, write_jsonl

runner = CliRunner()


@pytest.fixture
def finished_job(sqlite_cli: Settings, tmp_path: Path) -> str:
    """One finished job on the embedded default (SQLite in tmp_path, the sandbox); returns its id."""
    path = write_jsonl(tmp_path / "t.jsonl", tickets(5))
    code, out = run_cli(
        "submit", str(path), "--task", "classify", "--labels", "billing,bug,other", "--team", "growth",
        "--min-quality", "0.5", "--quality", "prior",
    )  # fmt: skip
    assert code == 0, out
    return out.split("job ")[1].split(":")[0]


def _results(job_id: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["results", job_id, *args])
    return result.exit_code, " ".join(result.output.split())


def test_results_never_overwrite_without_force_and_never_the_ledger(finished_job: str, tmp_path: Path) -> None:
    target = tmp_path / "r.jsonl"
    assert _results(finished_job, "-o", str(target))[0] == 0 and len(target.read_text().splitlines()) == 5
    target.write_text("mine\n")
    code, out = _results(finished_job, "-o", str(target))
    assert code == 2 and "already exists" in out and "--force" in out and target.read_text() == "mine\n"
    assert _results(finished_job, "-o", str(target), "--force")[0] == 0 and len(target.read_text().splitlines()) == 5
    ledger = tmp_path / "ledger.db"
    before = ledger.read_bytes()
    code, out = _results(finished_job, "-o", str(ledger), "--force")
    assert code == 2 and "is the ledger itself" in out and ledger.read_bytes() == before
    report = runner.invoke(app, ["report", "--month", "2026-12", "--format", "csv", "-o", str(ledger), "--force"])
    assert report.exit_code == 2 and "is the ledger itself" in report.output and ledger.read_bytes() == before


def test_bad_output_paths_are_named(finished_job: str, tmp_path: Path) -> None:
    code, out = _results(finished_job, "-o", str(tmp_path / "missing" / "r.jsonl"))
    assert code == 2 and "does not exist" in out
    code, out = _results(finished_job, "-o", str(tmp_path))
    assert code == 2 and "is a folder" in out
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]  # nothing half-written


def test_an_unwritable_folder_is_named(finished_job: str, tmp_path: Path) -> None:
    """A folder the user may not write in is named: a chmod'ed one (refused before anything is
    written, where permissions bind, as for any user but root), and /sys, where the kernel refuses to
    create a file even for root (so the test runs in CI whoever it runs as)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, out = _results(finished_job, "-o", str(locked / "r.jsonl"))
        if os.access(locked, os.W_OK):  # root: permissions do not bind, so this one is written
            assert code == 0 and (locked / "r.jsonl").exists()
        else:
            assert code == 2 and "not writable" in out
    finally:
        locked.chmod(0o700)
    code, out = _results(finished_job, "-o", "/sys/pennyroute-results.jsonl")
    assert code == 2 and ("cannot write in /sys" in out or "not writable" in out), out
    assert not Path("/sys/pennyroute-results.jsonl").exists()
