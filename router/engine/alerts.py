"""The soft-limit alert hook: a log line, and a POST to PENNYROUTE_ALERT_WEBHOOK when it is set.

Best effort: called after a batch's settlement has committed, it logs what goes wrong with the
webhook and never raises into the settle path. The POST goes through the project's one HTTP client
builder (router.providers.http.build_client), on the process's I/O loop (router.engine.runtime).
"""

from __future__ import annotations

import logging
from typing import Any

from router.engine import runtime
from router.providers.http import build_client
from router.settings import Settings

log = logging.getLogger("pennyroute.budget")

# A webhook that does not answer in 5 s must not hold up the worker's next chunk.
WEBHOOK_TIMEOUT_S = 5.0


def send_alert(detail: dict[str, Any], settings: Settings) -> None:
    """Announce that a team crossed its soft limit (`detail` as budgets.settle returned it): a
    warning in the log, and a JSON POST (event "budget.soft_limit") to the webhook when configured."""
    log.warning(
        "budget soft limit crossed: team %s spent %s of %s %s (%s%%) in %s",
        detail["team_id"],
        detail["settled"],
        detail["limit"],
        detail["currency"],
        detail["soft_pct"],
        detail["period"],
    )
    if not settings.alert_webhook:
        return
    try:
        status = runtime.run(_post(settings.alert_webhook, {"event": "budget.soft_limit", **detail}, settings))
    except Exception as exc:  # best effort: an unreachable or broken webhook must not fail the batch
        log.error("budget alert webhook %s failed: %s", settings.alert_webhook, exc)
        return
    if not 200 <= status < 300:  # 2xx: the webhook took it
        log.error("budget alert webhook %s answered HTTP %s", settings.alert_webhook, status)


async def _post(url: str, body: dict[str, Any], settings: Settings) -> int:
    """POST `body` as JSON to `url` with a client of its own (one alert a period: nothing to pool); its status."""
    client = build_client(
        base_url="", headers={}, timeout_s=WEBHOOK_TIMEOUT_S, max_connections=1, backend=settings.http_backend
    )
    try:
        response = await client.post(url, json=body)
    finally:
        await client.aclose()
    return response.status_code
