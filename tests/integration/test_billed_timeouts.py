"""A call that may have been billed is charged: the request left, the client gave up, the provider
answered (and billed) anyway. The ledger then holds it at its worst case: never short of the bill."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import httpx
import pytest

from router.catalog import Catalog
from router.engine import runtime
from router.engine.chunk import run_chunk
from router.errors import ProviderConnectionError
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import CallStatus
from router.providers.http import unsent
from router.providers.registry import close_all
from router.settings import Settings
from router.usage import TokenUsage
from tests.helpers import ledger, tickets, write_jsonl


@pytest.fixture(autouse=True)
def _reset_fake(fake_provider: str) -> None:
    httpx.post(f"{fake_provider}/_reset")
    # The process caches providers by name, not by settings: one built by an earlier test (with its
    # own, longer timeout) would outlast this test's 0.3 s and see no timeout at all.
    runtime.run(close_all())


def test_a_timed_out_call_the_provider_billed_is_charged_at_its_worst_case(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    settings = live_settings.model_copy(update={"request_timeout_s": 0.3})
    path = write_jsonl(tmp_path / "t.jsonl", tickets(6))
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task="classify", labels=("billing", "bug", "other"),
        min_quality=0.5, models=frozenset({"gpt-4o-mini"}), quality="prior",
    )  # fmt: skip
    job_id = submit_job(settings, catalog, request).job_id
    # The first 6 calls are answered (and billed) after 1 s: long after the client gave up at 0.3 s.
    httpx.post(f"{fake_provider}/_fail", json={"hang_s": 1.0, "count": 6}).raise_for_status()
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=6)
    time.sleep(1.2)  # the fake finishes answering the hung calls, and bills them
    calls, _ = ledger(settings, job_id)
    bill = httpx.get(f"{fake_provider}/_bill").json()["calls"]
    unknown = [c for c in calls if c.status == CallStatus.UNKNOWN]
    assert len(unknown) == 6, [(c.status, c.error) for c in calls]
    assert all("may have been billed" in (c.error or "") and c.usage_estimated for c in unknown)
    billed_unknown = [c for c in unknown if c.id in bill]
    assert billed_unknown  # the provider answered (and billed) calls our client had given up on
    for call in unknown:  # billed or not, each is charged: we cannot know which
        assert call.cost_usd > 0
        if call.id in bill:
            billed = catalog.price(call.model_id, call.started_at).cost_usd(
                TokenUsage(bill[call.id]["input_tokens"], bill[call.id]["output_tokens"])
            )
            assert call.cost_usd >= billed  # never short of the bill
    billed_total = sum(
        (
            catalog.price(c.model_id, c.started_at).cost_usd(
                TokenUsage(bill[c.id]["input_tokens"], bill[c.id]["output_tokens"])
            )
            for c in calls
            if c.id in bill
        ),
        Decimal(0),
    )
    with session_scope(settings) as session:
        assert repo.job_spend(session, job_id) >= billed_total


def test_a_connection_never_made_is_not_charged() -> None:
    """Refused before sending: nothing can have been billed, so such a call stays an error at $0."""
    refused = httpx.ConnectTimeout("connect failed")
    refused.__cause__ = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None), ConnectionRefusedError(111, "no")
    )
    assert unsent(refused)
    reset = httpx.ConnectTimeout("reset")  # httpx_aiohttp's name for every aiohttp connection error
    reset.__cause__ = aiohttp.ServerDisconnectedError()
    assert not unsent(reset)
    assert ProviderConnectionError("x", provider="p", sent=False).maybe_billed is False
    assert ProviderConnectionError("x", provider="p").maybe_billed is True
