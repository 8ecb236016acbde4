"""The Celery app: `celery -A workers.app worker`. Its config derives from router settings."""

from __future__ import annotations

from celery import Celery

from router.jobs.dispatch import celery_config
from router.settings import get_settings

app = Celery("pennyroute", include=["workers.tasks"])
_settings = get_settings()
if not _settings.broker_url:
    # A worker needs a broker; say which setting, rather than silently using Celery's AMQP default.
    raise SystemExit("pennyroute worker: set BROKER_URL (e.g. redis://127.0.0.1:6379/0) to run a worker")
app.conf.update(celery_config(_settings))
