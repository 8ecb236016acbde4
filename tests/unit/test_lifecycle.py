"""The job lifecycle (router/jobs/lifecycle.py) on the embedded default: a SQLite file, the sandbox,
no broker. Every shell gets these rules from here, so they are tested here, once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from router.catalog import Catalog, load_catalog
from router.cli.demo import DEMO_LABELS, write_demo_tickets
from router.engine.chunk import chunk_ranges
from router.jobs import lifecycle
from router.jobs.dispatch import CeleryDispatcher
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import budgets, repo
from router.ledger.db import ensure_schema, session_scope
from router.settings import Settings


class Recorder:
    """A Dispatcher that only notes what it was handed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def calibrate(self, job_id: str) -> None:
        self.calls.append(("calibrate", job_id))

    def run(self, job_id: str, ranges: list[tuple[int, int]]) -> None:
        self.calls.append(("run", (job_id, ranges)))


class Notes:
    """A Watcher that notes what an inline run showed, in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.advanced = 0

    @contextmanager
    def calibrating(self) -> Iterator[None]:
        self.seen.append("calibrating")
        yield

    def calibrated(self, job_id: str, summary: dict[str, Any]) -> None:
        self.seen.append(f"calibrated:{summary.get('outcome')}")

    @contextmanager
    def running(self, *, total: int, finished: int) -> Iterator[Callable[[int], None]]:
        self.seen.append(f"running:{total}:{finished}")

        def show(finished: int) -> None:
            assert finished >= self.advanced  # the job's finished count, as it grows
            self.advanced = finished

        yield show


@pytest.fixture
def embedded(tmp_path: Path) -> tuple[Settings, Catalog]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}", sandbox="on", _env_file=None)  # type: ignore[call-arg]
    return settings, load_catalog(None)


def _submit(
    settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    *,
    n: int,
    labelled: int,
    on_budget: str = "reject",
    quality: str = "auto",
) -> str:
    path = tmp_path / f"tickets-{n}-{labelled}.jsonl"
    write_demo_tickets(path, n=n, labelled=labelled)
    request = JobRequest(
        path=path,
        team="support",
        tenant="acme",
        task="classify",
        labels=DEMO_LABELS,
        min_quality=0.8,
        on_budget=on_budget,
        quality=quality,
    )
    ensure_schema(settings)
    with session_scope(settings) as session:
        repo.ensure_team(session, tenant="acme", team="support")
    return submit_job(settings, catalog, request).job_id


def test_start_hands_a_calibrating_job_to_calibration_and_a_running_one_to_its_chunks(
    embedded: tuple[Settings, Catalog], tmp_path: Path
) -> None:
    settings, catalog = embedded
    calibrating = _submit(settings, catalog, tmp_path, n=300, labelled=100)
    running = _submit(settings, catalog, tmp_path, n=250, labelled=0, quality="prior")
    recorder = Recorder()
    assert lifecycle.start(settings, job_id=calibrating, dispatcher=recorder) == 0
    assert lifecycle.start(settings, job_id=running, dispatcher=recorder) == 3
    assert recorder.calls == [("calibrate", calibrating), ("run", (running, [(0, 100), (100, 200), (200, 250)]))]


def test_inline_calibration_then_runs_the_bulk_and_shows_each_step(
    embedded: tuple[Settings, Catalog], tmp_path: Path
) -> None:
    settings, catalog = embedded
    job_id = _submit(settings, catalog, tmp_path, n=400, labelled=200)
    notes = Notes()
    lifecycle.start(settings, job_id=job_id, dispatcher=lifecycle.InlineDispatcher(settings, catalog, notes))
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
    assert job.status == "done" and job.n_done + job.n_failed == 400
    kept = job.calibration["kept_answers"]
    assert notes.seen == ["calibrating", "calibrated:chosen", f"running:400:{kept}"]
    assert notes.advanced == 400  # the last figure shown: every item (labelled ones answered during calibration kept)
    assert kept > 0


def test_a_job_that_ended_is_not_started_or_cancelled_again(embedded: tuple[Settings, Catalog], tmp_path: Path) -> None:
    settings, catalog = embedded
    job_id = _submit(settings, catalog, tmp_path, n=120, labelled=0, quality="prior")
    first = lifecycle.cancel(settings, catalog, job_id=job_id)
    assert first["status"] == "cancelled" and first["cancelled"] == 120
    assert lifecycle.cancel(settings, catalog, job_id=job_id) == {
        "status": "cancelled",
        "cancelled": 0,
        "lost_calls_usd": "0",
        "in_flight": 0,
        "released": "0",
    }
    recorder = Recorder()
    assert lifecycle.start(settings, job_id=job_id, dispatcher=recorder) == 0 and recorder.calls == []
    assert lifecycle.resume(settings, job_id=job_id, dispatcher=recorder).status == "cancelled" and recorder.calls == []


def test_raising_a_budget_resumes_the_teams_paused_jobs_after_saying_so(
    embedded: tuple[Settings, Catalog], tmp_path: Path
) -> None:
    settings, catalog = embedded
    job_id = _submit(settings, catalog, tmp_path, n=150, labelled=0, on_budget="pause", quality="prior")
    with session_scope(settings) as session:
        repo.pause_job(session, job_id)
    said: list[str] = []
    recorder = Recorder()
    period = lifecycle.set_budget(
        settings,
        team="support",
        tenant="acme",
        monthly="50",
        currency="USD",
        soft="80%",
        dispatcher=recorder,
        on_set=lambda p: said.append(f"set {p.limit_amount.normalize():f}"),
        on_resumed=lambda job: said.append(f"resumed {job.id}"),
    )
    assert period.limit_amount == Decimal(50) and said == ["set 50", f"resumed {job_id}"]
    assert recorder.calls == [("run", (job_id, chunk_ranges(150, settings.chunk_size)))]
    with session_scope(settings) as session:
        assert repo.get_job(session, job_id).status == "running"
        assert budgets.current_period(session, team_id=repo.get_job(session, job_id).team_id) is not None


def test_the_dispatcher_is_chosen_once_from_settings(embedded: tuple[Settings, Catalog]) -> None:
    settings, catalog = embedded
    assert isinstance(lifecycle.dispatcher_for(settings, catalog), lifecycle.InlineDispatcher)
    brokered = settings.model_copy(update={"broker_url": "redis://127.0.0.1:6379/15"})
    assert isinstance(lifecycle.dispatcher_for(brokered, catalog), CeleryDispatcher)
