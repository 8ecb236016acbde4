"""The one seam between deciding what runs and running it: a Dispatcher hands a job's work over.

    Dispatcher           what every runner takes: calibrate a job, run ranges of its items
    ├── CeleryDispatcher sends queue messages; workers on any machine do the work (a broker is set)
    └── InlineDispatcher does the work in this process (the embedded default; jobs/lifecycle.py)

Which one is chosen once per process, from settings (`lifecycle.dispatcher_for`), and nothing
branches on it afterwards. A queue message is a hint: it names a job and a seq range, no more;
the database says what is left. router never imports workers/: messages go by task name, and
workers/ builds its Celery app from the same constants and `celery_config`.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery

from router.settings import Settings

RUN_CHUNK_TASK = "pennyroute.run_chunk"
CALIBRATE_TASK = "pennyroute.calibrate_job"
RESUME_PAUSED_TASK = "pennyroute.resume_paused_jobs"
SWEEP_TASK = "pennyroute.sweep"
# Beat polls the providers' open batches with this short task every Settings.batch_poll_every_s: a
# batch may take 24 h, far past the broker's visibility timeout, so it is never a long ETA task.
POLL_BATCHES_TASK = "pennyroute.poll_batches"
# How often beat looks for paused jobs whose budget has room again: a paused job waits at most
# this long after the 1st of the month (or after a limit is raised outside `budget set`).
RESUME_EVERY_S = 300
QUEUE = "pennyroute"
# The broker re-delivers an unacknowledged message after this long (Redis transport). It must
# exceed the longest chunk, or a slow chunk would be handed to a second worker while still running
# (harmless for money, since items are claimed in the DB, but wasted work).
VISIBILITY_TIMEOUT_S = 3600


class Dispatcher(Protocol):
    """Hands a committed job's work to whoever runs it. Call only after the job's rows are committed."""

    def calibrate(self, job_id: str) -> None:
        """Calibrate the job (status calibrating), then run its chunks if a route was chosen."""
        ...

    def run(self, job_id: str, ranges: list[tuple[int, int]]) -> None:
        """Run the job's items with seq in each [lo, hi) range that nobody holds."""
        ...


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from pennyroute settings, shared by the sender and the workers."""
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "broker_connection_retry_on_startup": True,
        "task_default_queue": QUEUE,
        "task_acks_late": True,  # a chunk is acknowledged after it ran, so a killed worker's chunk comes back
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # a worker takes what it can run now, leaving the rest to others (2 measured no faster)
        "task_ignore_result": True,  # results live in the ledger, not in a result backend
        "worker_pool": "threads",  # chunks wait on the shared I/O loop; threads are enough, forks are not needed
        "worker_concurrency": settings.worker_threads,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "resume-paused-jobs": {"task": RESUME_PAUSED_TASK, "schedule": RESUME_EVERY_S},
            "sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_every_s},
            "poll-batches": {"task": POLL_BATCHES_TASK, "schedule": settings.batch_poll_every_s},
        },
    }


class CeleryDispatcher:
    """Sends calibration and chunk messages to the broker, by task name."""

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("pennyroute-client")
        self._app.conf.update(celery_config(settings))

    def calibrate(self, job_id: str) -> None:
        self._app.send_task(CALIBRATE_TASK, args=[job_id], queue=QUEUE)

    def run(self, job_id: str, ranges: list[tuple[int, int]]) -> None:
        with self._app.producer_or_acquire() as producer:
            for lo, hi in ranges:
                self._app.send_task(RUN_CHUNK_TASK, args=[job_id, lo, hi], queue=QUEUE, producer=producer)
