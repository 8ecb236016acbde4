"""Team budgets on real Postgres: atomic reservations, settlement, periods in the tenant's time zone,
soft-limit alerts, and the concurrency guarantee with 8 worker processes."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from router.catalog import Catalog
from router.engine import alerts
from router.errors import BudgetError
from router.jobs import lifecycle
from router.jobs.dispatch import CeleryDispatcher
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import budgets, repo
from router.ledger.db import session_scope
from router.ledger.rollup import local_day
from router.ledger.tables import BudgetEvent, BudgetPeriod, Call, Job, Team, Tenant
from router.settings import Settings
from tests.helpers import start_workers, stop_workers, tickets, worker_env, write_jsonl

LABELS = ("billing", "bug", "other")


def _team(settings: Settings, timezone: str = "UTC") -> Team:
    with session_scope(settings) as session:
        tenant = repo.create_tenant(session, name=f"acme-{uuid.uuid4().hex[:8]}", timezone=timezone)
        return repo.create_team(session, tenant=tenant.name, name="growth")


def _job(session: Session, team: Team) -> Job:
    """A bare job row for reservations to point at."""
    job = Job(id=uuid.uuid4().hex[:12], tenant_id=team.tenant_id, team_id=team.id, task="classify", min_quality=0.9)  # type: ignore[arg-type]
    session.add(job)
    session.flush()
    return job


@pytest.mark.parametrize(
    ("moment", "timezone", "expected"),
    [
        (datetime(2026, 11, 1, 3, 59, 59, tzinfo=UTC), "America/New_York", date(2026, 10, 1)),  # Oct 31 23:59:59 EDT
        (datetime(2026, 11, 1, 4, 0, 0, tzinfo=UTC), "America/New_York", date(2026, 11, 1)),
        (datetime(2026, 10, 31, 23, 30, tzinfo=UTC), "Europe/Paris", date(2026, 11, 1)),  # already Nov 1 in Paris
        (datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), "UTC", date(2026, 10, 1)),
        (datetime(2026, 12, 31, 23, 0, tzinfo=UTC), "Asia/Tokyo", date(2027, 1, 1)),
    ],
)
def test_periods_are_calendar_months_in_the_tenant_zone(moment: datetime, timezone: str, expected: date) -> None:
    assert budgets.period_start(moment, timezone) == expected
    assert local_day(moment, timezone).replace(day=1) == expected  # reports use the same day


def test_periods_roll_over_without_a_cron_and_keep_history(live_settings: Settings) -> None:
    team = _team(live_settings, "America/New_York")  # dates far from the months other tests report on
    with session_scope(live_settings) as session:
        budgets.set_budget(
            session,
            team=team,
            monthly=Decimal("10"),
            currency="USD",
            soft_pct=None,
            settings=live_settings,
            now=datetime(2030, 10, 15, tzinfo=UTC),
        )
        october = budgets.current_period(session, team_id=team.id, now=datetime(2030, 11, 1, 3, 59, 59, tzinfo=UTC))  # type: ignore[arg-type]
        november = budgets.current_period(session, team_id=team.id, now=datetime(2030, 11, 1, 4, 0, 0, tzinfo=UTC))  # type: ignore[arg-type]
        assert october is not None and november is not None
        assert (october.period_start, november.period_start) == (date(2030, 10, 1), date(2030, 11, 1))
        assert october.id != november.id and november.limit_amount == Decimal("10") and november.settled == 0
        count = session.execute(
            select(func.count()).select_from(BudgetPeriod).where(BudgetPeriod.team_id == team.id)
        ).scalar_one()  # type: ignore[arg-type]
        assert count == 2


def test_reservations_are_atomic_and_settle_to_actual(live_settings: Settings) -> None:
    team = _team(live_settings)
    now = datetime.now(UTC)
    with session_scope(live_settings) as session:
        period = budgets.set_budget(
            session, team=team, monthly=Decimal("1"), currency="USD", soft_pct=50.0, settings=live_settings
        )
        job = _job(session, team)
        first = budgets.reserve(
            session, period=period, amount_usd=Decimal("0.7"), job_id=job.id, settings=live_settings, now=now
        )
        assert first is not None
        assert (
            budgets.reserve(
                session, period=period, amount_usd=Decimal("0.31"), job_id=job.id, settings=live_settings, now=now
            )
            is None
        )
        second = budgets.reserve(
            session, period=period, amount_usd=Decimal("0.3"), job_id=job.id, settings=live_settings, now=now
        )
        assert second is not None
        alert = budgets.settle(session, reservation_id=first.id, actual_usd=Decimal("0.5500000001"), now=now)
        session.refresh(period)
        assert (period.settled, period.reserved) == (Decimal("0.5500000001"), Decimal("0.3"))
        assert alert is not None and alert["soft_pct"] == 50.0  # crossed 50% once
        assert (
            budgets.settle(session, reservation_id=second.id, actual_usd=Decimal("0.1"), now=now) is None
        )  # not twice
        assert (
            budgets.settle(session, reservation_id=second.id, actual_usd=Decimal("0.1"), now=now) is None
        )  # settling twice is a no-op
        session.refresh(period)
        assert (period.settled, period.reserved) == (Decimal("0.6500000001"), Decimal("0"))
        kinds = [e.kind for e in session.execute(select(BudgetEvent).where(BudgetEvent.team_id == team.id)).scalars()]  # type: ignore[arg-type]
        assert kinds.count("soft_limit") == 1


def test_a_crashed_workers_reservation_expires(live_settings: Settings) -> None:
    team = _team(live_settings)
    now = datetime.now(UTC)
    with session_scope(live_settings) as session:
        period = budgets.set_budget(
            session, team=team, monthly=Decimal("1"), currency="USD", soft_pct=None, settings=live_settings
        )
        job = _job(session, team)
        assert budgets.reserve(
            session, period=period, amount_usd=Decimal("0.9"), job_id=job.id, settings=live_settings, now=now
        )
        # Held through one lease (the dead worker's items are taken over then, and its lost calls
        # settled out of this reservation), given back after two.
        one_lease = datetime.fromtimestamp(now.timestamp() + live_settings.lease_s + 1, UTC)
        budgets.release_expired(session, period_id=period.id, now=one_lease)  # type: ignore[arg-type]
        session.refresh(period)
        assert period.reserved == Decimal("0.9")
        two_leases = datetime.fromtimestamp(now.timestamp() + 2 * live_settings.lease_s + 1, UTC)
        budgets.release_expired(session, period_id=period.id, now=two_leases)  # type: ignore[arg-type]
        session.refresh(period)
        assert period.reserved == 0


def test_eur_budget_records_the_exchange_rate(live_settings: Settings) -> None:
    settings = live_settings.model_copy(update={"usd_per_eur": Decimal("1.25")})
    team = _team(settings)
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        period = budgets.set_budget(
            session, team=team, monthly=Decimal("10"), currency="EUR", soft_pct=None, settings=settings
        )
        job = _job(session, team)
        held = budgets.reserve(
            session, period=period, amount_usd=Decimal("2.5"), job_id=job.id, settings=settings, now=now
        )
        assert held is not None and held.amount == Decimal("2") and held.usd_per_unit == Decimal("1.25")
        budgets.settle(session, reservation_id=held.id, actual_usd=Decimal("1.25"), now=now)
        session.refresh(period)
        assert period.settled == Decimal("1") and period.currency == "EUR"


def test_reject_at_submit_names_the_numbers_and_writes_nothing(
    live_settings: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    team = _team(live_settings)
    with session_scope(live_settings) as session:
        tenant = session.get(Tenant, team.tenant_id)
        budgets.set_budget(
            session, team=team, monthly=Decimal("0.0001"), currency="USD", soft_pct=None, settings=live_settings
        )
    path = write_jsonl(tmp_path / "in.jsonl", tickets(500))
    request = JobRequest(
        path=path,
        team="growth",
        tenant=tenant.name,
        task="classify",
        labels=LABELS,
        min_quality=0.9,  # type: ignore[union-attr]
        providers=frozenset({"openai"}),
    )
    with pytest.raises(BudgetError, match=r"exceeds team growth's remaining budget \$0\.000100"):
        submit_job(live_settings, catalog, request)
    with session_scope(live_settings) as session:
        assert session.execute(select(func.count()).select_from(Job).where(Job.team_id == team.id)).scalar_one() == 0  # type: ignore[arg-type]


def test_budget_holds_under_eight_concurrent_workers(
    pg_url: str,
    broker_url: str,
    catalog_file: Path,
    catalog: Catalog,
    fake_provider: str,
    live_settings: Settings,
    tmp_path: Path,
) -> None:
    """Jobs needing 3x the budget, 8 worker processes: overshoot exactly 0, at least 95% spent."""
    httpx.post(f"{fake_provider}/_reset")
    settings = live_settings.model_copy(update={"broker_url": broker_url})
    team = _team(settings)
    limit = Decimal("0.01")  # about 900 items on gpt-4o-mini at ~1.1e-5 USD each
    with session_scope(settings) as session:
        tenant = session.get(Tenant, team.tenant_id)
        budgets.set_budget(session, team=team, monthly=limit, currency="USD", soft_pct=80.0, settings=settings)
    jobs = []
    for n in range(3):  # 3 x 1,000 items: about 3x the budget
        path = write_jsonl(tmp_path / f"job{n}.jsonl", tickets(1000, start=n * 1000))
        request = JobRequest(
            path=path,
            team="growth",
            tenant=tenant.name,
            task="classify",
            labels=LABELS,
            min_quality=0.9,  # type: ignore[union-attr]
            providers=frozenset({"openai"}),
            on_budget="pause",
        )
        jobs.append(submit_job(settings, catalog, request))
    samples: list[tuple[Decimal, Decimal]] = []
    stop = threading.Event()

    def watch() -> None:  # the invariant at every instant we can observe, not just at the end
        while not stop.is_set():
            samples.append(_settled_reserved(settings, team))
            time.sleep(0.02)

    procs = start_workers(
        8, worker_env(pg_url=pg_url, broker_url=broker_url, catalog_file=catalog_file), tmp_path, threads=2
    )
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for submitted in jobs:
            lifecycle.start(settings, job_id=submitted.job_id, dispatcher=CeleryDispatcher(settings))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with session_scope(settings) as session:
                statuses = [repo.get_job(session, j.job_id).status for j in jobs]
            if all(s in ("paused", "done") for s in statuses) and _settled_reserved(settings, team)[1] == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"jobs did not finish or pause: {statuses}")
    finally:
        stop.set()
        watcher.join()
        stop_workers(procs)
    settled, reserved = _settled_reserved(settings, team)
    with session_scope(settings) as session:
        ledger_usd = sum(
            (c for (c,) in session.execute(select(Call.cost_usd).where(Call.team_id == team.id))), Decimal(0)
        )  # type: ignore[arg-type]
    print(
        f"\n8 workers: settled {settled} of {limit} ({settled / limit:.2%}), {len(samples)} samples, peak settled+reserved {max(s + r for s, r in samples)}"
    )
    assert len(samples) > 20 and all(s + r <= limit for s, r in samples), max(s + r for s, r in samples)
    assert reserved == 0
    assert ledger_usd == settled  # every cent settled is a cent in the ledger, exactly
    assert settled <= limit  # overshoot exactly 0
    assert settled >= limit * Decimal("0.95"), f"only {settled / limit:.1%} of the budget spent"
    assert "paused" in statuses  # 3x the budget cannot all run


def _settled_reserved(settings: Settings, team: Team) -> tuple[Decimal, Decimal]:
    with session_scope(settings) as session:
        period = budgets.current_period(session, team_id=team.id)  # type: ignore[arg-type]
        assert period is not None
        return period.settled, period.reserved


def test_paused_job_resumes_when_a_new_month_begins(live_settings: Settings, catalog: Catalog, tmp_path: Path) -> None:
    team = _team(live_settings, "Europe/Paris")
    with session_scope(live_settings) as session:
        tenant = session.get(Tenant, team.tenant_id)
        budgets.set_budget(
            session, team=team, monthly=Decimal("0.0002"), currency="USD", soft_pct=None, settings=live_settings
        )
    path = write_jsonl(tmp_path / "in.jsonl", tickets(50))
    submitted = submit_job(
        live_settings,
        catalog,
        JobRequest(
            path=path,
            team="growth",
            tenant=tenant.name,
            task="classify",
            labels=LABELS,
            min_quality=0.9,  # type: ignore[union-attr]
            providers=frozenset({"openai"}),
            on_budget="pause",
        ),
    )
    with session_scope(live_settings) as session:  # spend the month, as a finished chunk would, and pause
        period = budgets.current_period(session, team_id=team.id)  # type: ignore[arg-type]
        assert period is not None
        period.settled = period.limit_amount
        session.add(period)
        repo.pause_job(session, submitted.job_id)
    assert submitted.job_id not in lifecycle.resumable(live_settings)  # still no room this month
    next_month = datetime(2031, 1, 1, 0, 30, tzinfo=UTC)  # any later month: a new period, untouched
    assert submitted.job_id in lifecycle.resumable(live_settings, now=next_month)
    with session_scope(live_settings) as session:
        assert repo.get_job(session, submitted.job_id).status == "running"


def test_soft_limit_alert_posts_to_the_webhook(live_settings: Settings) -> None:
    import json as jsonlib
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict[str, object]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            received.append(jsonlib.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.handle_request, daemon=True).start()
    settings = live_settings.model_copy(update={"alert_webhook": f"http://127.0.0.1:{server.server_port}/hook"})
    team = _team(settings)
    with session_scope(settings) as session:
        period = budgets.set_budget(
            session, team=team, monthly=Decimal("1"), currency="USD", soft_pct=80.0, settings=settings
        )
        held = budgets.reserve(
            session,
            period=period,
            amount_usd=Decimal("0.9"),
            job_id=_job(session, team).id,
            settings=settings,
            now=datetime.now(UTC),
        )
        assert held is not None
        alert = budgets.settle(session, reservation_id=held.id, actual_usd=Decimal("0.85"), now=datetime.now(UTC))
    assert alert is not None
    alerts.send_alert(alert, settings)
    server.server_close()
    assert received and received[0]["event"] == "budget.soft_limit" and received[0]["settled"] == "0.8500000000"
