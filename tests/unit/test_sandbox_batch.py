"""The sandbox's batch API (simulated): answers as the sandbox's sync calls do, with its knobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router.catalog import load_catalog
from router.providers.base import ChatRequest
from router.providers.batch_api import CANCELED, ENDED, ERRORED, EXPIRED, RUNNING, SUCCEEDED, BatchLine
from router.providers.registry import BATCH_API_CLASSES, get_batch_api, has_batch_api
from router.providers.sandbox import SandboxBatchAPI, SandboxBatchKnobs, SandboxProvider
from router.settings import Settings

SYSTEM = "Classify the ticket. Labels: A) billing B) bug"


def _lines(n: int) -> list[BatchLine]:
    return [
        BatchLine(
            f"call{i:05d}",
            ChatRequest(model="gpt-4o-mini", system=SYSTEM, prompt=f"my invoice {i}", max_output_tokens=8),
        )
        for i in range(n)
    ]


async def _all(api: SandboxBatchAPI, batch_id: str) -> list:
    return [line async for line in api.results(batch_id)]


def test_a_batch_answers_every_line_as_the_sync_sandbox_does(tmp_path: Path) -> None:
    api = SandboxBatchAPI(knobs=SandboxBatchKnobs(out_of_order=True), directory=tmp_path)
    lines = _lines(50)
    state = asyncio.run(api.create(lines, model="gpt-4o-mini", tag="t1"))
    assert state.state == ENDED and state.total == 50 and "SIMULATED" in state.vendor_status
    results = asyncio.run(_all(api, state.batch_id))
    assert sorted(r.custom_id for r in results) == [line.custom_id for line in lines]
    assert [r.custom_id for r in results] != [line.custom_id for line in lines]  # out of order
    sync = SandboxProvider()
    for r in results:
        assert r.outcome == SUCCEEDED and r.completion is not None
        line = next(line for line in lines if line.custom_id == r.custom_id)
        assert r.completion == asyncio.run(sync.complete(line.request))
    assert asyncio.run(api.find("t1")) is not None and asyncio.run(api.find("nope")) is None


def test_errors_expiry_billing_and_delay(tmp_path: Path) -> None:
    knobs = SandboxBatchKnobs(errors=0.2, expired=0.1, bill_expired=True, delay_s=0.3)
    api = SandboxBatchAPI(knobs=knobs, directory=tmp_path)
    state = asyncio.run(api.create(_lines(2000), model="gpt-4o-mini", tag="t2"))
    assert state.state == RUNNING
    asyncio.run(asyncio.sleep(0.35))
    assert asyncio.run(api.get(state.batch_id)).state == ENDED
    results = asyncio.run(_all(api, state.batch_id))
    counts = {o: sum(1 for r in results if r.outcome == o) for o in (SUCCEEDED, ERRORED, EXPIRED)}
    assert 300 < counts[ERRORED] < 500 and 130 < counts[EXPIRED] < 270
    assert all(r.usage is not None for r in results if r.outcome == EXPIRED)  # billed though expired
    billed = asyncio.run(api.billed(state.batch_id))
    assert set(billed) == {r.custom_id for r in results if r.outcome in (SUCCEEDED, EXPIRED)}
    # A second read gives the same answers.
    assert sorted((r.custom_id, r.outcome) for r in asyncio.run(_all(api, state.batch_id))) == sorted(
        (r.custom_id, r.outcome) for r in results
    )


def test_cancel_keeps_the_lines_done(tmp_path: Path) -> None:
    api = SandboxBatchAPI(knobs=SandboxBatchKnobs(delay_s=2.0), directory=tmp_path)
    state = asyncio.run(api.create(_lines(400), model="gpt-4o-mini", tag="t3"))
    asyncio.run(asyncio.sleep(0.5))
    assert asyncio.run(api.cancel(state.batch_id)).state == ENDED
    outcomes = [r.outcome for r in asyncio.run(_all(api, state.batch_id))]
    assert 0 < outcomes.count(SUCCEEDED) < 400 and outcomes.count(CANCELED) == 400 - outcomes.count(SUCCEEDED)


@pytest.mark.parametrize("text", ["errors=2", "nope=1", "bill_expired=maybe", "errors=0.6,expired=0.6"])
def test_bad_knobs_are_named(text: str) -> None:
    with pytest.raises(ValueError, match="sandbox_batch"):
        SandboxBatchKnobs.parse(text)


def test_the_registry_gives_the_sandbox_when_simulated_and_none_without_a_class(tmp_path: Path) -> None:
    catalog = load_catalog()
    settings = Settings(sandbox_batch="delay_s=1", sandbox_batch_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    api = get_batch_api(catalog, settings, "openai", simulated=True)
    assert isinstance(api, SandboxBatchAPI) and api.simulated and api.knobs.delay_s == 1
    assert BATCH_API_CLASSES == {} or "openai" in BATCH_API_CLASSES
    if "openai" not in BATCH_API_CLASSES:
        assert get_batch_api(catalog, settings, "openai", simulated=False) is None
    assert has_batch_api(catalog, "openai", simulated=True)
    assert not has_batch_api(catalog, "local", simulated=True)  # no batch_multiplier in the catalog


def test_bad_knobs_in_settings_are_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    from router.errors import ConfigError

    settings = Settings(sandbox_batch="errors=lots", sandbox_batch_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="PENNYROUTE_SANDBOX_BATCH"):
        get_batch_api(load_catalog(), settings, "openai", simulated=True)
