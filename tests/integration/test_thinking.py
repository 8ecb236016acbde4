"""Thinking models: their reasoning counts inside the output cap on the wire, so the catalog says how
to bound it, the providers send it, routing and budgets count it, and the fake server refuses what
the real APIs refuse."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from policies.cheapest_qualifying import choose_model
from policies.types import Candidate, JobProfile, QualityEstimate
from router.catalog import Catalog, load_catalog
from router.engine.chunk import run_chunk
from router.errors import ConfigError, ProviderStatusError
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger.tables import CallStatus, ItemStatus
from router.providers.base import STOP, ChatRequest, Completion
from router.providers.openai import request_body as openai_body
from router.settings import Settings
from tests.helpers import FAKE_KEY, ledger, priced, tickets, write_jsonl
from tests.unit.test_providers import call

LABELS = ("billing", "bug", "other")
# A classification's cap: a label is a few tokens.
CAP = 8


def complete(fake_provider: str, vendor: str, request: ChatRequest) -> Completion:
    return call(fake_provider, vendor, "aiohttp", api_key=FAKE_KEY, timeout_s=5.0, request=request)


def ask(model: str, **kw: object) -> ChatRequest:
    return ChatRequest(
        model=model, system="Answer with one label.", prompt="I was charged twice", max_output_tokens=CAP, **kw
    )  # type: ignore[arg-type]


# -- on the wire, against the fake server playing the vendors' rules ------------------------------


def test_openai_reasoning_model_refuses_max_tokens_and_gets_max_completion_tokens(fake_provider: str) -> None:
    # The fake refuses max_tokens (and a temperature) as OpenAI does...
    refused = httpx.post(
        f"{fake_provider}/v1/chat/completions",
        headers={"Authorization": f"Bearer {FAKE_KEY}"},
        json={"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": CAP},
    )
    assert refused.status_code == 400 and "max_completion_tokens" in refused.json()["error"]["message"]
    # ...and a reasoning model gets max_completion_tokens and no temperature, with or without `thinking`.
    assert "max_tokens" not in openai_body(ask("gpt-5-mini")) and "temperature" not in openai_body(ask("gpt-5-mini"))
    assert openai_body(ask("openai/o4-mini"))["max_completion_tokens"] == CAP
    bare = complete(fake_provider, "openai", ask("gpt-5-mini", reasoning_effort="minimal"))
    assert bare.text and bare.finish == STOP and bare.usage.reasoning_tokens == 0  # "minimal": no reasoning
    done = complete(fake_provider, "openai", ask("gpt-5-mini", thinking_tokens=256, reasoning_effort="low"))
    assert done.text and done.usage.reasoning_tokens == 64  # the fake's "low" effort
    assert (
        done.usage.output_tokens > done.usage.reasoning_tokens
    )  # an answer besides the reasoning, all billed as output


def test_openai_reasoning_without_room_answers_empty_but_is_billed(fake_provider: str) -> None:
    done = complete(fake_provider, "openai", ask("o4-mini", thinking_tokens=0))  # medium effort: 192 tokens, cap 8
    assert done.text == "" and done.usage.output_tokens == CAP == done.usage.reasoning_tokens


def test_openai_chat_models_keep_max_tokens(fake_provider: str) -> None:
    done = complete(fake_provider, "openai", ask("gpt-4o-mini"))
    assert done.text and done.usage.reasoning_tokens == 0


def test_gemini_flash_thinks_the_cap_away_unless_switched_off(fake_provider: str) -> None:
    unbounded = complete(fake_provider, "gemini", ask("gemini-2.5-flash"))
    assert unbounded.text == "" and unbounded.usage.output_tokens == CAP  # billed for thoughts, no answer
    off = complete(fake_provider, "gemini", ask("gemini-2.5-flash", thinking_tokens=0))
    assert off.text and off.usage.reasoning_tokens == 0


def test_gemini_pro_cannot_stop_thinking_and_gets_room_for_it(fake_provider: str) -> None:
    with pytest.raises(ProviderStatusError) as refused:
        complete(fake_provider, "gemini", ask("gemini-2.5-pro", thinking_tokens=0))
    assert refused.value.status_code == 400 and "only works in thinking mode" in str(refused.value)
    done = complete(fake_provider, "gemini", ask("gemini-2.5-pro", thinking_tokens=128))
    assert done.text and done.usage.reasoning_tokens == 128
    assert done.usage.output_tokens <= CAP + 128


# -- catalog ------------------------------------------------------------------------------------


def test_default_catalog_bounds_gemini_thinking() -> None:
    catalog = load_catalog()
    assert catalog.model("gemini-2.5-flash").thinking == 0
    assert (
        catalog.model("gemini-2.5-pro").thinking == 128 and catalog.model("gemini-2.5-pro").output_cap(CAP) == CAP + 128
    )
    assert catalog.model("gpt-4o").thinking is None and catalog.model("gpt-4o").output_cap(CAP) == CAP


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'id = "gpt-5-mini"\nprovider = "openai"\nthinking = -1',
            "thinking must be 0 (off) or the most thinking tokens",
        ),
        ('id = "gpt-5-mini"\nprovider = "openai"\nthinking = "lots"', "thinking must be 0 (off)"),
        ('id = "claude-haiku-4-5"\nprovider = "anthropic"\nthinking = 1024', "thinking applies to openai and gemini"),
        ('id = "gpt-4o"\nprovider = "openai"\nreasoning_effort = "low"', "is for OpenAI reasoning models"),
        (
            'id = "gpt-5-mini"\nprovider = "openai"\nthinking = 64\nreasoning_effort = "ultra"',
            "reasoning_effort must be one of none, minimal, low, medium, high, xhigh, max",
        ),
        (
            'id = "gpt-5-mini"\nprovider = "openai"\nthinking = 64\nreasoning_effort = "max"',
            "reasoning_effort 'max' is refused by gpt-5-mini, which takes minimal, low, medium, high",
        ),
    ],
)
def test_bad_thinking_settings_are_refused_at_load(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(f"[[models]]\n{entry}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_catalog(path)


# -- routing counts thinking as output --------------------------------------------------------------


def test_thinking_is_counted_in_expected_cost_and_context() -> None:
    plain = Candidate(
        model_id="plain",
        provider="p",
        input_usd_per_mtok=Decimal(1),
        output_usd_per_mtok=Decimal(10),
        context_window=1_000,
        region="us",
        open_weight=False,
        quality=QualityEstimate(0.9, None, "prior"),
    )
    thinker = replace(plain, model_id="thinker", input_usd_per_mtok=Decimal("0.5"), thinking_tokens_per_item=128)
    profile = JobProfile(
        task="classify",
        min_quality=0.0,
        n_items=1_000,
        total_input_tokens=100_000,
        max_input_tokens=800,
        output_tokens_per_item=8,
    )
    decision = choose_model(profile, [plain, thinker])
    costs = {v.model_id: v.expected_cost_usd for v in decision.verdicts}
    # 100k input + 1,000 x 8 output, and the thinker 1,000 x 136 output: cheaper input, dearer in all.
    assert costs == {"plain": Decimal("0.18"), "thinker": Decimal("1.41")} and decision.model_id == "plain"
    too_long = replace(profile, max_input_tokens=900)  # 900 + 8 fits 1,000; 900 + 136 does not
    verdicts = {v.model_id: v for v in choose_model(too_long, [plain, thinker]).verdicts}
    assert verdicts["plain"].meets_constraints and not verdicts["thinker"].meets_constraints
    assert any("128 of it thinking" in r for r in verdicts["thinker"].reasons)


# -- a job on thinking models, end to end through the engine ---------------------------------------


@pytest.fixture
def gemini_settings(live_settings: Settings) -> Settings:
    return Settings(
        database_url=live_settings.database_url,
        catalog=live_settings.catalog,
        sandbox="off",
        api_keys={"GEMINI_API_KEY": FAKE_KEY},
        _env_file=None,
    )  # type: ignore[dict-item, call-arg]


@pytest.mark.parametrize(("model_id", "thinking"), [("gemini-2.5-flash", 0), ("gemini-2.5-pro", 128)])
def test_a_job_on_a_default_gemini_model_gets_its_labels(
    gemini_settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake_provider: str,
    model_id: str,
    thinking: int,
) -> None:
    httpx.post(f"{fake_provider}/_reset")
    path = write_jsonl(tmp_path / "items.jsonl", tickets(12))
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="classify",
        labels=LABELS,
        min_quality=0.5,
        models=frozenset({model_id}),
    )
    job_id = submit_job(gemini_settings, catalog, request).job_id
    outcome = run_chunk(gemini_settings, catalog, job_id=job_id, lo=0, hi=12)
    assert outcome.done == 12
    calls, items = ledger(gemini_settings, job_id)
    assert all(i.status == ItemStatus.DONE and i.output in LABELS for i in items)
    assert all(c.status == CallStatus.OK and c.model_id == model_id for c in calls)
    assert [(c.reasoning_tokens, c.output_tokens > thinking) for c in calls] == [(thinking, True)] * len(calls)
    assert all(c.cost_usd == priced(catalog, c) for c in calls)  # thoughts billed at the output price


def test_the_sandbox_bills_thinking_as_output() -> None:
    from router.providers.sandbox import SandboxProvider

    sandbox = SandboxProvider()
    plain = asyncio.run(sandbox.complete(ask("gemini-2.5-flash", thinking_tokens=0)))
    pro = asyncio.run(sandbox.complete(ask("gemini-2.5-pro", thinking_tokens=128)))
    assert plain.usage.reasoning_tokens == 0 and pro.usage.reasoning_tokens == 128
    unbounded = asyncio.run(sandbox.complete(ask("gemini-2.5-pro")))  # the same answer, without thinking
    assert (pro.text, pro.usage.output_tokens) == (unbounded.text, unbounded.usage.output_tokens + 128)


def test_a_thinking_baseline_is_priced_with_its_thinking() -> None:
    from datetime import UTC, datetime

    from router.ledger.rollup import BaselineRates, CallFacts, rollup_rows

    at = datetime(2026, 11, 2, 12, tzinfo=UTC)
    calls = [
        CallFacts(at, False, 1_000, 0, 10, Decimal("0.0001"), reasoning_tokens=4),  # 6 answer tokens + 4 thinking
        CallFacts(at, True, 0, 0, 0, Decimal(0)),
    ]  # failed unanswered: no baseline thinking either
    rows = rollup_rows(
        calls,
        tenant_id=1,
        team_id=1,
        job_id="j",
        model_id="m",
        provider="p",
        task="classify",
        purpose="run",
        timezone="UTC",
        baseline_rates=BaselineRates(Decimal("1.25"), Decimal("10"), 128),
    )
    # Baseline: the same 1,000 input and 6-token answer, plus its own 128 thinking tokens: (1250 + 1340) / 1M.
    assert rows[0]["baseline_cost_usd"] == Decimal("0.00259")


def test_budgets_reserve_a_thinking_models_thinking(
    gemini_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str]
) -> None:
    from router.engine.batch import ChunkContext
    from router.ledger import repo
    from router.ledger.db import session_scope
    from router.ledger.tables import utcnow
    from router.prompts import MESSAGE_OVERHEAD_TOKENS
    from router.usage import TokenUsage

    path = write_jsonl(tmp_path / "items.jsonl", tickets(3))
    request = JobRequest(
        path=path,
        team=team[1],
        tenant=team[0],
        task="classify",
        labels=LABELS,
        min_quality=0.5,
        models=frozenset({"gemini-2.5-pro"}),
    )
    job_id = submit_job(gemini_settings, catalog, request).job_id
    with session_scope(gemini_settings) as session:
        chunk = ChunkContext.build(catalog, repo.job_for_chunk(session, job_id))
    now, text = utcnow(), "I was charged twice"
    worst_input = len(chunk.spec.system.encode()) + len(text.encode()) + MESSAGE_OVERHEAD_TOKENS
    bound = catalog.price("gemini-2.5-pro", now).cost_usd(TokenUsage(worst_input, chunk.spec.max_output_tokens + 128))
    assert chunk.worst_case_usd(catalog, "gemini-2.5-pro", text, now) == bound
