"""A first run needs nothing: `pennyroute demo` in an empty directory, with no settings at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_with_no_configuration(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (
            k.endswith("_API_KEY")
            or k.startswith("PENNYROUTE_")
            or k in ("DATABASE_URL", "BROKER_URL", "CELERY_BROKER_URL")
        )
    }
    result = subprocess.run(
        [sys.executable, "-m", "router.cli.app", "demo", "--items", "2000", "--min-quality", "0.85"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "SIMULATED" in out and "2000/2000" in out
    assert "Calibration on 200 items (gold labels)" in out and "route:" in out and "saved" in out
    assert (tmp_path / "pennyroute.db").exists()
    # A second run reuses the same ledger file (schema already current, demo team already there).
    again = subprocess.run(
        [sys.executable, "-m", "router.cli.app", "demo", "--items", "50"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
