"""How a job ended, in words and as an exit code, the same for `submit`, `status --wait` and `jobs resume`.

Exit codes (README "Exit codes"):

    0  the job is done and every item is done (or it was handed to workers and not waited for)
    1  the job is done, but some items failed
    2  the command itself failed: bad input, a bad setting, an unknown job, a broker that is down
    3  the job is paused: its budget is spent, a provider refused it, or it was interrupted (Ctrl-C); `jobs resume` goes on
    4  the job stopped before its end: no route was proven at calibration, or it was cancelled
    5  `reconcile`: the ledger is BELOW the provider's bill on some day and model (a money leak)
"""

from __future__ import annotations

from typing import Any

from router.ledger.tables import JobStatus

DONE, FAILED_ITEMS, PAUSED, STOPPED, BELOW_BILL = 0, 1, 3, 4, 5


def outcome(job: Any) -> tuple[str, int]:
    """One line saying how the job stands (counts, and the reason when it waits or stopped), and the exit code."""
    open_items = job.n_items - job.n_done - job.n_failed
    counts = f"{job.n_done:,} done, {job.n_failed:,} failed" + (f", {open_items:,} not run" if open_items else "")
    if (job.calibration or {}).get("unproven") and job.status != JobStatus.NO_MODEL:
        counts += " (UNPROVEN route: see `status --quality`)"
    if job.status == JobStatus.PAUSED:
        return f"[yellow]job {job.id} is paused[/]: {counts}; {pause_reason(job)}", PAUSED
    if job.status == JobStatus.NO_MODEL:
        why = (job.calibration or {}).get("message") or "no model meets the bar and constraints"
        return f"[red]job {job.id} stopped before its end[/]: {counts}; {why}", STOPPED
    if job.status == JobStatus.CANCELLED:
        return f"[red]job {job.id} was cancelled[/]: {counts}", STOPPED
    if job.status == JobStatus.DONE:
        if job.n_failed:
            return f"[red]job {job.id} is done with failures[/]: {counts} (`pennyroute results` gives each error)", (
                FAILED_ITEMS
            )
        return f"[green]job {job.id} is done[/]: {counts}", DONE
    return f"job {job.id} is {job.status}: {counts}", DONE  # still running on workers: not an end


def pause_reason(job: Any) -> str:
    """Why a paused job waits, and what resumes it."""
    if job.pause_reason == "interrupted":
        return f"interrupted (Ctrl-C): `pennyroute jobs resume {job.id}` goes on"
    stopped = job.stopped_providers or {}
    if job.pause_reason == "provider" or (stopped and job.pause_reason != "budget"):
        which = "; ".join(f"{provider}: {why}" for provider, why in stopped.items()) or "a provider refused the job"
        return f"waiting for a provider ({which}); fix it, then `pennyroute jobs resume {job.id}`"
    return "its team's budget is spent: `pennyroute budget set` raises it and resumes the job"
