"""Starting work from a request, as the CLI does, without making the request wait for it.

With a broker, `lifecycle.start` sends the job's messages and returns. Without one (the embedded
default), the job runs in this process, as `submit` runs it, on a background thread: the request
answers at once and the job's state is read with GET /jobs/{id}. Both choices are made once, by
`lifecycle.dispatcher_for`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from fastapi import Request

from router.catalog import Catalog
from router.errors import PennyrouteError
from router.jobs import lifecycle
from router.jobs.dispatch import Dispatcher
from router.ledger.tables import BudgetPeriod, Job
from router.settings import Settings

log = logging.getLogger("pennyroute.api")


def catalog_of(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def in_background(request: Request, name: str, work: Callable[[], Any]) -> None:
    """Run `work` on a thread of its own (kept on app.state.threads, so a test can wait for it)."""

    def run() -> None:
        try:
            work()
        except Exception:  # the job's state says what happened; the server goes on
            log.exception("background work %s failed", name)

    thread = threading.Thread(target=run, name=name, daemon=True)
    request.app.state.threads.append(thread)
    thread.start()


class Backgrounded:
    """A Dispatcher that hands the in-process dispatcher's work to a background thread."""

    def __init__(self, request: Request, inline: Dispatcher) -> None:
        self._request, self._inline = request, inline

    def calibrate(self, job_id: str) -> None:
        in_background(self._request, f"calibrate-{job_id}", lambda: self._inline.calibrate(job_id))

    def run(self, job_id: str, ranges: list[tuple[int, int]]) -> None:
        in_background(self._request, f"run-{job_id}", lambda: self._inline.run(job_id, ranges))


def dispatcher(request: Request) -> Dispatcher:
    """The broker's workers with a broker; else this process, in the background."""
    settings, catalog = _settings(request), catalog_of(request)
    chosen = lifecycle.dispatcher_for(settings, catalog)
    return Backgrounded(request, chosen) if settings.embedded else chosen


def start_job(request: Request, job_id: str) -> None:
    """Hand a committed job to its runner (an error with a broker down says the job is saved, in
    the CLI's words)."""
    try:
        lifecycle.start(_settings(request), job_id=job_id, dispatcher=dispatcher(request))
    except Exception as exc:  # the broker is down: the job is safe in the ledger
        raise PennyrouteError(
            f"job {job_id} is saved, but the broker did not take it ({exc}). It runs once the broker is "
            f"back: `pennyroute jobs resume {job_id}` sends it again"
        ) from None


def run_resume(request: Request, job_id: str) -> Job:
    """`jobs resume`: marked running now, its work handed over."""
    settings = _settings(request)
    return lifecycle.resume(settings, job_id=job_id, dispatcher=dispatcher(request), catalog=catalog_of(request))


def set_team_budget(
    request: Request, *, team: str, tenant: str, monthly: str, currency: str, soft: str | None
) -> BudgetPeriod:
    """`budget set`: the budget now, then the team's paused jobs resumed."""
    return lifecycle.set_budget(
        _settings(request),
        team=team,
        tenant=tenant,
        monthly=monthly,
        currency=currency,
        soft=soft,
        dispatcher=dispatcher(request),
    )
