"""Chat jobs (`--task chat`, and the /v1 lines that name a catalog model): each item's conversation
reaches the provider as written, synchronously and through each vendor's batch API, its answer is
kept as the model gave it (a cut one too, marked), and every call is ledgered at its usage x price."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.catalog import Catalog
from router.engine import runtime
from router.errors import InputError
from router.jobs import lifecycle
from router.jobs.intake import JobRequest
from router.jobs.results import result_records
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import JobStatus
from router.providers.registry import close_all
from router.settings import Settings
from tests.fakes.batches import set_knobs
from tests.helpers import VENDOR_MODELS, ledger, priced, with_vendor_keys, write_jsonl

VENDORS = VENDOR_MODELS


@pytest.fixture
def chat_settings(live_settings: Settings, fake_provider: str) -> Settings:
    httpx.post(f"{fake_provider}/_reset").raise_for_status()
    return with_vendor_keys(live_settings)


def conversation(k: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"You are agent {k}. Answer briefly."},
        {"role": "user", "content": f"My order {k} has not arrived."},
        {"role": "assistant", "content": "Sorry to hear that. Which address?"},
        {"role": "user", "content": f"{k} Main Street, please check again"},
    ]


def turns_sent(body: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation a provider was sent, read back from its own wire format."""
    if "contents" in body:  # Gemini
        system = [{"role": "system", "content": p["text"]} for p in body.get("systemInstruction", {}).get("parts", [])]
        return system + [
            {"role": "assistant" if c["role"] == "model" else "user", "content": c["parts"][0]["text"]}
            for c in body["contents"]
        ]
    if "system" in body:  # Anthropic
        return [{"role": "system", "content": body["system"]}, *body["messages"]]
    return list(body["messages"])


def run(settings: Settings, catalog: Catalog, request: JobRequest) -> str:
    submitted = submit_job(settings, catalog, request)
    try:
        lifecycle.start(settings, job_id=submitted.job_id, dispatcher=lifecycle.InlineDispatcher(settings, catalog))
    finally:
        runtime.run(close_all())
    return submitted.job_id


@pytest.mark.parametrize("mode", ["sync", "batch"])
@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_each_conversation_reaches_the_provider_as_written(
    vendor: str,
    mode: str,
    chat_settings: Settings,
    catalog: Catalog,
    fake_provider: str,
    tmp_path: Path,
    team: tuple[str, str],
) -> None:
    set_knobs(fake_provider, reset=True)
    n = 12
    rows = [{"id": f"c{k}", "messages": conversation(k), "max_tokens": 30 + k, "stop": ["END"]} for k in range(n)]
    rows[0]["max_tokens"] = 1  # cut by its cap: kept, and marked
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    job_id = run(
        chat_settings,
        catalog,
        JobRequest(
            path=path,
            team=team[1],
            tenant=team[0],
            task="chat",
            min_quality=0.0,
            models=frozenset({VENDORS[vendor]}),
            deadline="24h" if mode == "batch" else None,
            mode=mode,
            max_output_tokens=100,
        ),
    )
    with session_scope(chat_settings) as session:
        job = repo.get_job(session, job_id)
    assert job.status == JobStatus.DONE and job.n_done == n, (job.status, job.n_failed)
    calls, _ = ledger(chat_settings, job_id)
    assert {c.mode for c in calls} == {mode}
    assert all(c.cost_usd == priced(catalog, c) > 0 for c in calls)

    asked = httpx.get(f"{fake_provider}/_asked").json()
    sent = {json.dumps(turns_sent(a["body"])): a for a in asked}
    for k in range(n):
        call = sent[json.dumps(conversation(k))]  # every turn, in order, roles as written
        assert call["cap"] == (1 if k == 0 else 30 + k)
        stops = call["body"].get("stop") or call["body"].get("stop_sequences")
        stops = stops or call["body"].get("generationConfig", {}).get("stopSequences")
        assert stops == ["END"]
    records = {r["id"]: r for r in result_records(chat_settings, job_id)}
    assert all(r["status"] == "done" and r["output"] for r in records.values())
    assert records["c0"].get("finish") == "cut" and "finish" not in records["c1"]


def test_chat_lines_are_checked_and_named(
    chat_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str]
) -> None:
    rows: list[Any] = [
        {"id": "ok", "messages": [{"role": "user", "content": "hi"}]},
        {"id": "tool", "messages": [{"role": "tool", "content": "x"}]},
        {"id": "image", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"id": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000},
        {"id": "tools", "messages": [{"role": "user", "content": "hi"}], "tools": []},
        {"id": "text", "text": "hi"},
        {"id": "nouser", "messages": [{"role": "system", "content": "hi"}]},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task="chat", min_quality=0.0, models=frozenset({"gpt-4o-mini"})
    )
    submitted = submit_job(chat_settings, catalog, request)
    with session_scope(chat_settings) as session:
        job = repo.get_job(session, submitted.job_id)
        lifecycle.cancel(chat_settings, catalog, job_id=job.id)
    said = {r["line"]: (r["field"], r["reason"]) for r in job.rejected or []}
    assert job.n_items == 1 and job.n_rejected == 6
    assert said[2] == ("messages[0].role", "'tool' messages are not supported (no tools)")
    assert said[3][0] == "messages[0].content[0]" and "only text parts" in said[3][1]
    assert said[4][0] == "max_tokens" and "above the job's cap of 4,096" in said[4][1]
    assert said[5][0] == "tools"
    assert said[6][0] == "text"
    assert said[7] == ("messages", "needs a user message")
    with pytest.raises(InputError, match="no quality bar"):
        submit_job(
            chat_settings, catalog, JobRequest(path=path, team=team[1], tenant=team[0], task="chat", min_quality=0.9)
        )
