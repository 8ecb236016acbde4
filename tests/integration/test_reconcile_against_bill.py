"""`pennyroute reconcile` against a provider that keeps its own bill: a job under hangs and timeouts
(some answered and billed after the client gave up, some never answered), then the provider's own
usage and costs exports, fetched as OpenAI serves them, compared with the ledger per UTC day and
model. The ledger is never below the bill, and what it holds above is the unknown calls' worst case.
Then a ledger deliberately made short is caught: BELOW the bill, exit code 5."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from router.catalog import Catalog, load_catalog
from router.cli import ends
from router.engine.chunk import run_chunk
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger.db import session_scope
from router.ledger.tables import Call, CallStatus
from router.settings import Settings, get_settings
from tests.conftest import clean_cli_env
from tests.fakes.server import start_in_thread
from tests.helpers import FAKE_KEY, ledger, run_cli, tickets, write_catalog, write_jsonl

ADMIN_KEY = "sk-admin-test-fake-0123456789"
ITEMS = 40


@pytest.fixture
def own_fake() -> Iterator[str]:
    """A fake provider of its own: its bill holds this test's calls only."""
    url, stop = start_in_thread(api_key=FAKE_KEY, admin_key=ADMIN_KEY)
    yield url
    stop()


@pytest.fixture
def ran(
    own_fake: str, live_settings: Settings, team: tuple[str, str], tmp_path: Path
) -> tuple[Settings, Catalog, str, Path]:
    """A gpt-4o-mini job run in this process with a 0.5 s timeout, under a fault mix with hangs (never
    answered) and 5 calls that are answered, and billed, 1.2 s after they were sent."""
    catalog_file = write_catalog(tmp_path / "catalog.toml", own_fake)
    catalog = load_catalog(catalog_file)
    settings = live_settings.model_copy(update={"catalog": catalog_file, "request_timeout_s": 0.5})
    request = JobRequest(
        path=write_jsonl(tmp_path / "t.jsonl", tickets(ITEMS)), team=team[1], tenant=team[0], task="classify",
        labels=("billing", "bug", "other"), min_quality=0.5, models=frozenset({"gpt-4o-mini"}), quality="prior",
    )  # fmt: skip
    job_id = submit_job(settings, catalog, request).job_id
    httpx.post(f"{own_fake}/_fail", json={"hang_s": 1.2, "count": 5}).raise_for_status()
    httpx.post(f"{own_fake}/_faults", json={"seed": 7, "rates": {"hang": 0.1, "500": 0.05}}).raise_for_status()
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=ITEMS)
    time.sleep(1.5)  # the slow calls are answered, and billed, after our client gave up on them
    return settings, catalog, job_id, catalog_file


@pytest.fixture
def reconcile_env(
    ran: tuple[Settings, Catalog, str, Path], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The CLI's environment: the test ledger, the job's catalog, the admin key."""
    clean_cli_env(monkeypatch)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("PENNYROUTE_CATALOG", str(ran[3]))
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    get_settings.cache_clear()
    yield ran[3]
    get_settings.cache_clear()


def _reconcile(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / f"reconcile-{time.monotonic_ns()}.json"
    code, text = run_cli("reconcile", "--provider", "openai", *args, "--json", "-o", str(out))
    assert out.exists(), text
    return code, json.loads(out.read_text())


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def test_the_ledger_is_never_below_the_bill_and_the_unknown_calls_explain_the_rest(
    ran: tuple[Settings, Catalog, str, Path], reconcile_env: Path, own_fake: str, team: tuple[str, str], tmp_path: Path
) -> None:
    settings, _, job_id, _ = ran
    calls, _ = ledger(settings, job_id)
    unknown = [c for c in calls if c.status == CallStatus.UNKNOWN]
    bill = httpx.get(f"{own_fake}/_bill").json()["calls"]
    late = [c for c in unknown if c.id in bill]
    assert late and len(unknown) > len(late), "the run must hold calls billed late and calls never answered"
    code, report = _reconcile(
        tmp_path,
        "--fetch",
        "--api-base",
        f"{own_fake}/v1",
        "--tenant",
        team[0],
        "--since",
        _today(),
        "--until",
        _today(),
    )
    assert code == 0, report["summary"]
    lines = report["lines"]
    assert [line["model"] for line in lines] == ["gpt-4o-mini"]  # the snapshot's name mapped to the catalog's
    line = lines[0]
    assert line["bill_cost_from"] == "costs export"
    assert line["bill"]["requests"] == len(bill)  # every call the provider answered, the late ones too
    assert line["verdict"] == "above" and line["explained"], line["reasons"]
    assert Decimal(line["ledger"]["cost_usd"]) >= Decimal(line["bill"]["cost_usd"])
    for field in ("requests", "input_tokens", "output_tokens"):
        assert line["ledger"][field] >= line["bill"][field]
    assert line["unknown"]["requests"] == len(unknown)
    excess = Decimal(line["difference"]["cost_usd"])
    assert Decimal(0) < excess <= Decimal(line["unknown"]["cost_usd"])
    # The answered calls alone are exactly what the provider billed for them.
    answered = Decimal(line["ledger"]["cost_usd"]) - Decimal(line["unknown"]["cost_usd"])
    assert answered <= Decimal(line["bill"]["cost_usd"])

    # The same exports as files give the same verdict.
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    start = int(datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
    query = {"start_time": start, "bucket_width": "1d", "limit": 1}
    usage = httpx.get(
        f"{own_fake}/v1/organization/usage/completions", params={**query, "group_by": "model"}, headers=headers
    )
    costs = httpx.get(f"{own_fake}/v1/organization/costs", params={**query, "group_by": "line_item"}, headers=headers)
    (tmp_path / "usage.json").write_text(usage.text)
    (tmp_path / "costs.json").write_text(costs.text)
    code, from_files = _reconcile(
        tmp_path, "--usage", str(tmp_path / "usage.json"), "--costs", str(tmp_path / "costs.json"),
        "--tenant", team[0], "--since", _today(), "--until", _today(),
    )  # fmt: skip
    assert code == 0 and from_files["lines"] == lines

    # Without the costs export, the bill's tokens are priced at the ledger's recorded prices: the same cost.
    code, priced = _reconcile(
        tmp_path, "--usage", str(tmp_path / "usage.json"), "--tenant", team[0], "--since", _today(), "--until", _today()
    )
    assert code == 0
    assert priced["lines"][0]["bill_cost_from"] == "usage x ledger prices"
    assert Decimal(priced["lines"][0]["bill"]["cost_usd"]) == Decimal(line["bill"]["cost_usd"])


def test_calls_billed_after_a_timeout_but_ledgered_at_0_are_a_leak_and_exit_5(
    ran: tuple[Settings, Catalog, str, Path], reconcile_env: Path, own_fake: str, team: tuple[str, str], tmp_path: Path
) -> None:
    settings, _, job_id, _ = ran
    bill = httpx.get(f"{own_fake}/_bill").json()["calls"]
    with session_scope(settings) as session:
        # The ledger as it was before calls sent but unanswered were charged: errors at $0, though the
        # provider answered and billed some of them after the client gave up.
        session.execute(
            update(Call)
            .where(Call.job_id == job_id, Call.status == CallStatus.UNKNOWN)  # type: ignore[arg-type]
            .values(status=CallStatus.ERROR, input_tokens=0, output_tokens=0, cost_usd=Decimal(0))
        )
    late = [c for c in ledger(settings, job_id)[0] if c.status == CallStatus.ERROR and c.id in bill]
    assert late
    args = ("--fetch", "--api-base", f"{own_fake}/v1", "--tenant", team[0], "--since", _today(), "--until", _today())
    code, report = _reconcile(tmp_path, *args)
    assert code == ends.BELOW_BILL == report["exit_code"]
    line = report["lines"][0]
    assert line["verdict"] == "below"
    assert line["bill"]["requests"] - line["ledger"]["requests"] == len(late)
    assert "LEDGER BELOW THE BILL" in line["reasons"][0] and f"({len(late)} short)" in line["reasons"][0]
    assert Decimal(line["difference"]["cost_usd"]) < 0
    assert "MONEY LEAK" in report["summary"]
    code, text = run_cli("reconcile", *args)  # the table says so too, and exits 5
    assert code == ends.BELOW_BILL and "LEDGER BELOW THE BILL" in text
