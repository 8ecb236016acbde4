"""Limits nobody configured: a rate limit learned from the provider's 429s, and a provider's calls in
flight capped by the catalog's `max_in_flight` (router/providers/limits.py, policies/rate_adapt.py,
policies/in_flight.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from policies.in_flight import Window, after_answer, after_overload
from policies.rate_adapt import CUT_GAP_S, LEARN_CUT, after_learned_429, after_learned_hold, first_429, seed_learned
from router.catalog import Catalog, load_catalog
from router.settings import Settings
from tests.helpers import ledger, tickets, write_catalog, write_jsonl

# The fake's limit: 600 rpm, 10 calls a second, so 150 items take about 15 s once the limit is found.
LIMIT_RPM = 600
ITEMS = 150


def test_a_learned_rate_is_seeded_cut_once_per_signal_and_grows_back() -> None:
    pending = first_429(now=100.0)
    assert pending.rps == 0
    seeded, why = seed_learned(pending, answered_rps=20.0, now=101.0)
    assert seeded.rps == 20.0 and seeded.probing and "1200 rpm" in why
    cut, _ = after_learned_429(seeded, now=104.0)
    assert cut.rps == pytest.approx(20.0 * LEARN_CUT) and not cut.probing
    assert after_learned_429(cut, now=104.0 + CUT_GAP_S / 2)[0] == cut  # the same signal: no second cut
    grown = after_learned_hold(cut, now=105.0)
    assert grown.rps == pytest.approx(cut.rps * 1.01)
    assert after_learned_hold(seeded, now=102.0).rps == pytest.approx(22.0)  # probing grows 10% a second


def test_the_in_flight_window_narrows_on_overload_and_widens_with_answers() -> None:
    window = Window(8.0, 8)
    narrow, _ = after_overload(window, now=10.0)
    assert narrow.slots == 5 and after_overload(narrow, now=11.0)[0].width == narrow.width  # the same signal
    for _ in range(20):
        narrow = after_answer(narrow)
    assert narrow.slots == 8 and narrow.width == 8.0


def _run(settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], n: int) -> str:
    from router.engine.chunk import chunk_ranges, run_job_inline
    from router.jobs.intake import JobRequest
    from router.jobs.submit import submit_job

    path = write_jsonl(tmp_path / "items.jsonl", tickets(n))
    job_id = submit_job(
        settings,
        catalog,
        JobRequest(  # type: ignore[arg-type]
            path=path,
            team=team[1],
            tenant=team[0],
            task="classify",
            labels=("billing", "bug", "other"),
            min_quality=0.5,
            providers=frozenset({"openai"}),
        ),
    ).job_id
    run_job_inline(settings, catalog, job_id=job_id, ranges=chunk_ranges(n, settings.chunk_size))
    return job_id


def test_a_rate_limit_nobody_configured_is_learned_and_every_item_is_done(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    from router.engine import runtime
    from router.providers.registry import close_all

    assert all(not m.rpm and not m.tpm for m in catalog.models.values() if m.provider == "openai")
    runtime.run(close_all())  # fresh limits for this process
    httpx.post(f"{fake_provider}/_reset")
    httpx.post(f"{fake_provider}/_faults", json={"rates": {}, "latency_ms": [20, 60], "rpm": {"limit": LIMIT_RPM}})
    try:
        job_id = _run(live_settings, catalog, tmp_path, team, ITEMS)
        served = httpx.get(f"{fake_provider}/_bill").json()["faults_served"]
    finally:
        httpx.post(f"{fake_provider}/_reset")
        runtime.run(close_all())
    calls, items = ledger(live_settings, job_id)
    assert all(i.status == "done" for i in items) and len(items) == ITEMS
    refused = served.get("429", 0)
    # Unthrottled, the first burst is refused almost whole (150 calls at a bucket of 10): 429s are
    # bounded by that burst and a few cuts, not by the items.
    assert refused < ITEMS * 1.5, served
    assert sum(c.status == "ok" for c in calls) == ITEMS


def test_max_in_flight_caps_the_calls_a_provider_holds(
    live_settings: Settings, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    from router.engine import runtime
    from router.providers.registry import close_all

    catalog_file = write_catalog(tmp_path / "catalog.toml", fake_provider)
    text = catalog_file.read_text().replace(
        f'[providers.openai]\nbase_url = "{fake_provider}/v1"\n',
        f'[providers.openai]\nbase_url = "{fake_provider}/v1"\nmax_in_flight = 4\n',
    )
    catalog_file.write_text(text)
    capped = load_catalog(catalog_file)
    assert capped.providers["openai"].max_in_flight == 4
    settings = live_settings.model_copy(update={"catalog": catalog_file})
    runtime.run(close_all())
    httpx.post(f"{fake_provider}/_reset")
    httpx.post(f"{fake_provider}/_faults", json={"rates": {}, "latency_ms": [30, 30]})
    try:
        job_id = _run(settings, capped, tmp_path, team, 60)
        seen = httpx.get(f"{fake_provider}/_stats").json()["in_flight_max"]
    finally:
        httpx.post(f"{fake_provider}/_reset")
        runtime.run(close_all())
    _, items = ledger(settings, job_id)
    assert all(i.status == "done" for i in items)
    assert 1 <= seen <= 4
