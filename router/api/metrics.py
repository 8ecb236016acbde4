"""GET /metrics: Prometheus's text format, for a scraper holding PENNYROUTE_METRICS_TOKEN.

From the ledger at scrape time (every worker's work, exactly):

    pennyroute_cost_usd_total{provider, model, mode, tenant}          spend, every call; mode: sync or
                                                                      batch (a provider batch API's lines)
    pennyroute_batch_calls_total{provider, model, tenant}             calls made as batch lines
    pennyroute_failed_cost_usd_total{provider, model, mode, tenant}   spend on calls with no usable answer
    pennyroute_tokens_total{provider, model, mode, tenant, kind}      kind: input, cached_input, output
    pennyroute_calls_total{provider, model, mode, tenant, outcome}    outcome: ok, failed, refused,
                                                                      filtered, blocked, cut_off
    (the rollups split spend by mode, not tokens or outcomes: those carry mode="all")
    pennyroute_budget_remaining{tenant, team, currency}               this period's limit - settled - reserved
    pennyroute_items_open{state}                                      items not yet done or failed, by job state

From the processes (router/metrics.py, multiprocess mode): pennyroute_batch_lines_total,
pennyroute_api_requests_total, pennyroute_api_request_seconds.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.api.errors import ApiError
from router.ledger import figures, repo
from router.ledger.db import session_scope
from router.settings import Settings

router = APIRouter()
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The rollups keep spend and calls by mode (sync, batch), not tokens or outcomes: those are for all modes.
ALL_MODES = "all"


class LedgerCollector(Collector):
    """The ledger's sums as metric families, read once per scrape."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        labels = ["provider", "model", "mode", "tenant"]
        cost = CounterMetricFamily("pennyroute_cost_usd", "Spend in USD, every call.", labels=labels)
        failed = CounterMetricFamily(
            "pennyroute_failed_cost_usd", "Spend in USD on calls with no usable answer.", labels=labels
        )
        batch_calls = CounterMetricFamily(
            "pennyroute_batch_calls",
            "Calls made as lines of a provider's batch.",
            labels=["provider", "model", "tenant"],
        )
        tokens = CounterMetricFamily("pennyroute_tokens", "Tokens billed.", labels=[*labels, "kind"])
        calls = CounterMetricFamily("pennyroute_calls", "Calls by outcome.", labels=[*labels, "outcome"])
        remaining = GaugeMetricFamily(
            "pennyroute_budget_remaining",
            "This period's budget left (limit - settled - reserved), in its currency.",
            labels=["tenant", "team", "currency"],
        )
        open_items = GaugeMetricFamily("pennyroute_items_open", "Items not yet done or failed.", labels=["state"])
        with session_scope(self._settings) as session:
            spend = figures.spend_by_model(session)
            budgets = repo.budget_rows(session, month=None)
            states = figures.open_items_by_state(session)
        for row in spend:
            batch_cost = row.batch_cost_usd or 0
            cost.add_metric([row.provider, row.model_id, "sync", row.tenant], float((row.cost_usd or 0) - batch_cost))
            cost.add_metric([row.provider, row.model_id, "batch", row.tenant], float(batch_cost))
            batch_calls.add_metric([row.provider, row.model_id, row.tenant], float(row.batch_calls or 0))
            key = [row.provider, row.model_id, ALL_MODES, row.tenant]
            failed.add_metric(key, float(row.failed_cost_usd or 0))
            for kind in ("input_tokens", "cached_input_tokens", "output_tokens"):
                tokens.add_metric([*key, kind.removesuffix("_tokens")], float(getattr(row, kind) or 0))
            unused = {o: int(getattr(row, f"{o}_calls") or 0) for o in ("refused", "filtered", "blocked", "cut_off")}
            failed_calls = int(row.failed_calls or 0)
            calls.add_metric([*key, "ok"], float(int(row.calls or 0) - failed_calls))
            calls.add_metric([*key, "failed"], float(failed_calls - sum(unused.values())))
            for outcome, n in unused.items():
                calls.add_metric([*key, outcome], float(n))
        for b in budgets:
            remaining.add_metric([b.tenant, b.team, b.currency], float(b.limit_amount - b.settled - b.reserved))
        for state, n in states:
            open_items.add_metric([state], float(n))
        yield from (cost, batch_calls, failed, tokens, calls, remaining, open_items)


def exposition(settings: Settings) -> bytes:
    """Every figure, as Prometheus text: the processes' (merged across processes in multiprocess
    mode), then the ledger's."""
    if settings.prometheus_multiproc_dir is not None:
        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes, path=str(settings.prometheus_multiproc_dir))
    else:
        processes = REGISTRY
    ledger = CollectorRegistry()
    ledger.register(LedgerCollector(settings))
    return generate_latest(processes) + generate_latest(ledger)


@router.get("/metrics", tags=["metrics"], summary="Prometheus metrics (bearer PENNYROUTE_METRICS_TOKEN)")
def metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    token = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else ""
    if not token:
        raise ApiError(
            403,
            "/metrics is off: set PENNYROUTE_METRICS_TOKEN and send it as a bearer token",
            kind="permission_error",
            code="metrics_off",
        )
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "/metrics needs `Authorization: Bearer <PENNYROUTE_METRICS_TOKEN>`", code="invalid_token")
    return Response(exposition(settings), media_type=CONTENT_TYPE)
