"""Interrupts and recovery in-process (issue 12 point 6): a real SIGINT to `pennyroute submit` running
against a slow fake provider; a killed run taken back by `jobs resume` and `jobs cancel`; a no_model
job cancelled and resumed; a submit whose broker is down, picked up by the sweeper.

Every case ends with the ledger against the fake's bill: each billed call is in the ledger at no
less than its bill (exactly its bill when it was answered), nothing left in flight, no item running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis

from router.catalog import Catalog, load_catalog
from router.jobs.dispatch import QUEUE, CeleryDispatcher
from router.jobs.sweeper import sweep
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import CallStatus, ItemStatus, Job, JobStatus
from router.settings import Settings
from router.usage import TokenUsage
from tests.fakes.server import start_in_thread
from tests.helpers import FAKE_KEY, ledger, tickets, write_catalog, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
# Each answer takes this long, so a Ctrl-C finds calls in flight and calls not yet sent.
LATENCY_MS = 1500
LABELS = "billing,bug,other"


@pytest.fixture(scope="module")
def slow_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A fake provider answering after LATENCY_MS, and a catalog pointing at it."""
    url, stop = start_in_thread(latency_ms=LATENCY_MS, api_key=FAKE_KEY)
    path = write_catalog(tmp_path_factory.mktemp("slow") / "catalog.toml", url)
    yield url, path
    stop()


@pytest.fixture
def setup(pg_url: str, slow_fake: tuple[str, Path]) -> Iterator[tuple[Settings, Catalog, dict[str, str], str]]:
    """(settings, catalog, the CLI's environment, team) against the slow fake, in-process (no broker)."""
    url, catalog_file = slow_fake
    httpx.post(f"{url}/_reset")
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.endswith("_API_KEY") or k.startswith("PENNYROUTE_") or k.endswith("BROKER_URL"))
    }
    env.update(
        DATABASE_URL=pg_url,
        PENNYROUTE_CATALOG=str(catalog_file),
        PENNYROUTE_SANDBOX="off",
        OPENAI_API_KEY=FAKE_KEY,
        PENNYROUTE_CHUNK_SIZE="10",  # 8 chunks of 80 items at once ...
        PENNYROUTE_CALLS_IN_FLIGHT="12",  # ... of which 12 calls in flight: the rest wait at the gate
        PENNYROUTE_WORKER_THREADS="8",
    )
    settings = Settings(
        database_url=pg_url,
        catalog=catalog_file,
        sandbox="off",
        api_keys={"OPENAI_API_KEY": FAKE_KEY},  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    team = f"int-{uuid.uuid4().hex[:6]}"
    with session_scope(settings) as session:
        repo.ensure_team(session, tenant=f"acme-{team}", team=team)
    yield settings, load_catalog(catalog_file), env, team


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "router.cli.app", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _submit(env: dict[str, str], team: str, path: Path, *more: str) -> subprocess.Popen[str]:
    return _cli(
        env,
        "submit", str(path), "--task", "classify", "--labels", LABELS, "--team", team,
        "--min-quality", "0.5", "--models", "gpt-4o-mini", "--quality", "prior", *more,
    )  # fmt: skip


def _job_of_team(settings: Settings, team: str, *, timeout_s: float = 30) -> str:
    """The team's job, once submit has committed it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope(settings) as session:
            found = repo.list_jobs(session, tenant=None, team=team, status=None, since=None, until=None, limit=1)
        if found:
            return str(found[0].id)
        time.sleep(0.1)
    raise AssertionError("no job was submitted")


def _wait_for_calls(settings: Settings, job_id: str, *, at_least: int = 1, timeout_s: float = 30) -> None:
    """Until the run has recorded calls (and so sent some): then a Ctrl-C finds calls in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        calls, _ = ledger(settings, job_id)
        if len(calls) >= at_least:
            time.sleep(LATENCY_MS / 3000)  # they are on the wire now, half-way to their answer
            return
        time.sleep(0.05)
    raise AssertionError("the run recorded no call")


def _finish(proc: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, " ".join((out + err).split())


def _job(settings: Settings, job_id: str) -> Job:
    with session_scope(settings) as session:
        return repo.get_job(session, job_id)


def _nothing_left_open(settings: Settings, job_id: str) -> None:
    calls, items = ledger(settings, job_id)
    assert not [c.id for c in calls if c.status == CallStatus.IN_FLIGHT], "a call is left in flight"
    assert not [i.id for i in items if i.status == ItemStatus.RUNNING], "an item is left running"


def _ledger_covers_the_bill(settings: Settings, catalog: Catalog, url: str, job_id: str) -> None:
    """Each call the fake billed is in the ledger: answered ones at exactly their bill, unknown ones at
    no less (their worst case); calls never sent are errors at $0."""
    bill = httpx.get(f"{url}/_bill").json()["calls"]
    calls, _ = ledger(settings, job_id)
    by_id = {c.id: c for c in calls}
    assert set(bill) <= set(by_id), "a billed call is missing from the ledger"
    for call_id, billed in bill.items():
        call = by_id[call_id]
        cost = catalog.price(call.model_id, call.started_at).cost_usd(
            TokenUsage(billed["input_tokens"], billed["output_tokens"])
        )
        if call.status == CallStatus.OK:
            assert call.cost_usd == cost
        else:
            assert call.status == CallStatus.UNKNOWN and call.cost_usd >= cost, (call.status, call.error)
    for call in calls:
        if call.id not in bill and call.status == CallStatus.ERROR:
            assert call.cost_usd == 0
    with session_scope(settings) as session:
        spent = repo.job_spend(session, job_id)
    assert spent == sum((c.cost_usd for c in calls), Decimal(0))


def test_a_first_ctrl_c_pauses_the_job_and_resume_finishes_it(
    setup: tuple[Settings, Catalog, dict[str, str], str], slow_fake: tuple[str, Path], tmp_path: Path
) -> None:
    settings, catalog, env, team = setup
    proc = _submit(env, team, write_jsonl(tmp_path / "t.jsonl", tickets(80)))
    job_id = _job_of_team(settings, team)
    _wait_for_calls(settings, job_id)
    proc.send_signal(signal.SIGINT)
    code, out = _finish(proc)
    assert code == 3, out
    assert "interrupted" in out and f"pennyroute jobs resume {job_id}" in out, out
    job = _job(settings, job_id)
    assert job.status == JobStatus.PAUSED and job.pause_reason == "interrupted"
    _nothing_left_open(settings, job_id)
    calls, items = ledger(settings, job_id)
    assert 0 < job.n_done < 80, "the calls in flight finished and were recorded; the rest were not sent"
    assert [i for i in items if i.status == ItemStatus.PENDING], "items not run went back to pending"
    assert not [i for i in items if i.status == ItemStatus.FAILED], "an interrupt fails no item"
    assert [c for c in calls if c.error and "not sent" in c.error], "calls that never left are recorded as such"
    _ledger_covers_the_bill(settings, catalog, slow_fake[0], job_id)
    with session_scope(settings) as session:  # beat's budget resumer leaves it to its owner
        assert job_id not in {found for found, _ in repo.budget_paused_jobs(session)}

    code, out = _finish(_cli(env, "jobs", "resume", job_id))
    assert code == 0 and "is done: 80 done, 0 failed" in out, out
    assert _job(settings, job_id).status == JobStatus.DONE
    _nothing_left_open(settings, job_id)
    _ledger_covers_the_bill(settings, catalog, slow_fake[0], job_id)


def test_a_second_ctrl_c_stops_at_once_and_charges_the_calls_in_flight(
    setup: tuple[Settings, Catalog, dict[str, str], str], slow_fake: tuple[str, Path], tmp_path: Path
) -> None:
    settings, catalog, env, team = setup
    proc = _submit(env, team, write_jsonl(tmp_path / "t.jsonl", tickets(80)))
    job_id = _job_of_team(settings, team)
    _wait_for_calls(settings, job_id)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    code, out = _finish(proc)
    assert code == 3, out
    assert time.monotonic() - started < LATENCY_MS / 1000, "a second Ctrl-C does not wait for the calls in flight"
    assert "stopping now" in out and f"pennyroute jobs resume {job_id}" in out, out
    assert _job(settings, job_id).status == JobStatus.PAUSED
    _nothing_left_open(settings, job_id)
    calls, _ = ledger(settings, job_id)
    unknown = [c for c in calls if c.status == CallStatus.UNKNOWN]
    assert unknown and all(c.cost_usd > 0 and c.usage_estimated for c in unknown)
    time.sleep(LATENCY_MS / 1000 + 0.3)  # the fake answers (and bills) the calls the process left
    _ledger_covers_the_bill(settings, catalog, slow_fake[0], job_id)

    code, out = _finish(_cli(env, "jobs", "resume", job_id))
    assert code == 0 and "is done: 80 done, 0 failed" in out, out
    _nothing_left_open(settings, job_id)
    _ledger_covers_the_bill(settings, catalog, slow_fake[0], job_id)


@pytest.mark.parametrize("then", ["resume", "cancel"])
def test_a_killed_run_is_taken_back_by_resume_and_cancel(
    then: str, setup: tuple[Settings, Catalog, dict[str, str], str], slow_fake: tuple[str, Path], tmp_path: Path
) -> None:
    settings, catalog, env, team = setup
    proc = _submit(env, team, write_jsonl(tmp_path / "t.jsonl", tickets(40)))
    job_id = _job_of_team(settings, team)
    _wait_for_calls(settings, job_id)
    proc.kill()
    proc.communicate(timeout=30)
    calls, items = ledger(settings, job_id)
    assert [c for c in calls if c.status == CallStatus.IN_FLIGHT] and [i for i in items if i.status == "running"]
    time.sleep(LATENCY_MS / 1000 + 0.3)  # the fake bills the calls the dead run left

    code, out = _finish(_cli(env, "jobs", then, job_id))
    job = _job(settings, job_id)
    if then == "resume":
        assert code == 0 and "is done: 40 done, 0 failed" in out, out
        assert job.status == JobStatus.DONE and job.n_done == 40
    else:
        assert code == 0 and "cancelled" in out, out
        assert job.status == JobStatus.CANCELLED and job.n_done + job.n_failed == 40
    _nothing_left_open(settings, job_id)
    calls, _ = ledger(settings, job_id)
    assert [c for c in calls if c.status == CallStatus.UNKNOWN], "the dead run's calls are charged as unknown"
    _ledger_covers_the_bill(settings, catalog, slow_fake[0], job_id)


def test_a_no_model_job_can_be_cancelled_and_resumed(
    setup: tuple[Settings, Catalog, dict[str, str], str], tmp_path: Path
) -> None:
    settings, _, env, team = setup
    rows = [{**row, "gold": "billing"} for row in tickets(30)]
    jobs = []
    for _ in range(2):
        with session_scope(settings) as session:
            jobs.append(_no_model_job(settings, session, team, tmp_path, rows))
    cancelled, resumed = jobs

    code, out = _finish(_cli(env, "jobs", "cancel", cancelled))
    assert code == 0 and "cancelled" in out, out
    job = _job(settings, cancelled)
    assert job.status == JobStatus.CANCELLED and job.n_failed == 30

    code, out = _finish(_cli(env, "jobs", "resume", resumed), timeout_s=120)
    assert "nothing to resume" not in out, out
    job = _job(settings, resumed)
    assert job.status != JobStatus.CALIBRATING, "calibration ran again"
    events = _events(settings, resumed)
    assert "resumed" in events and events.count("calibrated") >= 1, events
    _nothing_left_open(settings, resumed)


def _no_model_job(settings: Settings, session: object, team: str, tmp_path: Path, rows: list[dict[str, str]]) -> str:
    """A job stopped at calibration with no model (as calibrate leaves one), items pending."""
    from router.catalog import load_catalog as load
    from router.jobs.intake import JobRequest
    from router.jobs.submit import submit_job

    catalog = load(settings.catalog)
    request = JobRequest(
        path=write_jsonl(tmp_path / f"{uuid.uuid4().hex[:6]}.jsonl", rows),
        team=team, task="classify", labels=("billing", "bug", "other"), min_quality=0.5,
        models=frozenset({"gpt-4o-mini"}), quality="gold",
    )  # fmt: skip
    job_id = submit_job(settings, catalog, request).job_id
    with session_scope(settings) as own:
        repo.update_job(own, job_id, status=JobStatus.NO_MODEL, calibration={"message": "no route was proven"})
    return job_id


def _events(settings: Settings, job_id: str) -> list[str]:
    with session_scope(settings) as session:
        return [e.kind for e in repo.job_events(session, job_id)]


def test_a_submit_whose_broker_is_down_is_saved_and_the_sweeper_sends_it(
    setup: tuple[Settings, Catalog, dict[str, str], str], broker_url: str, tmp_path: Path
) -> None:
    settings, _, env, team = setup
    down = {**env, "BROKER_URL": "redis://127.0.0.1:1/0"}  # nothing listens on port 1
    code, out = _finish(_submit(down, team, write_jsonl(tmp_path / "t.jsonl", tickets(25))), timeout_s=120)
    job_id = _job_of_team(settings, team)
    assert code == 2, out
    assert f"job {job_id} is saved" in out and f"pennyroute jobs resume {job_id}" in out and "beat" in out, out
    assert _job(settings, job_id).status == JobStatus.RUNNING
    queue = redis.Redis.from_url(broker_url)
    queue.delete(QUEUE)
    live = settings.model_copy(update={"broker_url": broker_url, "sweep_idle_s": 0.01, "chunk_size": 10})
    assert sweep(live, dispatcher=CeleryDispatcher(live)) >= 3  # 25 items: 3 chunks of 10
    assert queue.llen(QUEUE) >= 3, "the sweeper sent the job's chunks"
    queue.delete(QUEUE)
