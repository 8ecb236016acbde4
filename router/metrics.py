"""The process-side Prometheus figures, in multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set
(prometheus_client reads it: every process writing there adds to one /metrics).

Spend, tokens, calls, budgets and open items are read from the ledger at scrape time
(router/ledger/figures.py, router/api/metrics.py): exact, and already the sum of every worker. What
only a process sees is counted here:

    pennyroute_batch_lines_total{provider, outcome}   provider batch lines by outcome (succeeded,
                                                      errored, expired, canceled): `count_batch_lines`,
                                                      the hook the provider-batch side calls
    pennyroute_api_requests_total{method, route, status}
    pennyroute_api_request_seconds{method, route}     (histogram)
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

BATCH_LINES = Counter("pennyroute_batch_lines", "Provider batch lines by outcome.", ["provider", "outcome"])
API_REQUESTS = Counter("pennyroute_api_requests", "HTTP API requests answered.", ["method", "route", "status"])
API_SECONDS = Histogram(
    "pennyroute_api_request_seconds",
    "HTTP API request latency.",
    ["method", "route"],
    # Status reads take a few ms; uploads seconds. 100 ms is the p99 a poller is promised.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)


def count_batch_lines(*, provider: str, outcome: str, n: int = 1) -> None:
    """Count `n` provider batch lines that ended with `outcome` (succeeded, errored, expired, canceled)."""
    BATCH_LINES.labels(provider=provider, outcome=outcome).inc(n)


def count_request(*, method: str, route: str, status: int, seconds: float) -> None:
    API_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    API_SECONDS.labels(method=method, route=route).observe(seconds)
