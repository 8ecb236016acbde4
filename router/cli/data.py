"""What the CLI shows, as JSON for scripts (`--json`): plain values, money as exact decimal strings."""

from __future__ import annotations

import json
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from rich.text import Text

from router.catalog import Catalog
from router.cli.ends import outcome
from router.reports.render import plain


def emit(value: Any) -> None:
    """Write `value` as JSON on standard output, alone (rich markup and tables go elsewhere)."""
    sys.stdout.write(json.dumps(value, default=json_default, indent=2) + "\n")


def json_default(value: Any) -> Any:
    """A value json.dumps cannot write, as the CLI writes it (its `default`; the HTTP API's too)."""
    if isinstance(value, Decimal):
        return plain(value)  # the reports' exact text: the same digits on every backend
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def job(job: Any, spent_usd: Decimal, *, batches_unpolled: str | None = None) -> dict[str, Any]:
    """A job's state: counts, route, spend, and how it stands (the line and exit code `submit` gives);
    `batches_unpolled` says why its provider batches are not moving (jobs.results.batches_unpolled)."""
    calibration = job.calibration or {}
    line, code = outcome(job)
    return {
        "job_id": job.id,
        "status": job.status,
        "task": job.task,
        "labels": job.labels,
        "min_quality": job.min_quality,
        "n_items": job.n_items,
        "n_done": job.n_done,
        "n_failed": job.n_failed,
        "n_rejected": job.n_rejected,
        "model_id": job.model_id,
        "route": job.route,
        "baseline_model_id": job.baseline_model_id,
        "spent_usd": spent_usd,
        "expected_cost_usd": job.expected_cost_usd,
        "pause_reason": job.pause_reason,
        "stopped_providers": job.stopped_providers,
        "calibration": {k: calibration.get(k) for k in ("outcome", "message", "unproven", "route_measure")}
        if calibration
        else None,
        "simulated": job.simulated,
        "exit_code": code,
        "summary": _unmarked(line),
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        # Execution mode (README: batch mode): what was asked, by when, and each stage's mode and saving.
        "mode": job.mode,
        "deadline_at": job.deadline_at,
        "execution": job.execution,
        "batches_unpolled": batches_unpolled,
    }


def jobs(rows: list[Any]) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in rows]


def models(catalog: Catalog) -> list[dict[str, Any]]:
    out = []
    for model in sorted(catalog.models.values(), key=lambda m: (m.provider, m.model_id)):
        price = catalog.price(model.model_id)
        out.append(
            {
                "model_id": model.model_id,
                "provider": model.provider,
                "region": model.region,
                "input_usd_per_mtok": price.input.base,
                "cached_input_usd_per_mtok": price.cached_input.base,
                "output_usd_per_mtok": price.output.base,
                "context_window": model.context_window,
                "open_weight": model.open_weight,
                "thinking_tokens": model.thinking,
                "quality_priors": {task: q.value for task, q in model.quality.items()},
                "price_source": price.source,
            }
        )
    return out


def estimates(rows: list[Any], fresh: dict[int, bool]) -> list[dict[str, Any]]:
    keys = ("tenant", "signature", "task", "model_id", "source", "n", "mean", "lower", "upper", "confidence")
    return [
        {**{k: getattr(r, k) for k in keys}, "measured_at": r.measured_at, "fresh": fresh.get(r.id, False)}
        for r in rows
    ]


def budgets(rows: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "tenant": r.tenant,
            "team": r.team,
            "month": f"{r.period_start:%Y-%m}",
            "limit": r.limit_amount,
            "currency": r.currency,
            "settled": r.settled,
            "reserved": r.reserved,
            "soft_pct": r.soft_pct,
            "soft_alerted_at": r.soft_alerted_at,
        }
        for r in rows
    ]


def _unmarked(text: str) -> str:
    """Rich markup out: "[green]job x is done[/]: ..." -> "job x is done: ..."."""
    return Text.from_markup(text).plain
