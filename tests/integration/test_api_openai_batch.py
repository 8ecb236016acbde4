"""The /v1 intake with the official openai SDK as the client, on a real server, jobs in-process,
providers the fake server: every custom_id answered once, usage per line, ledger = usage x prices,
budget settled; a retried create is one batch; errors in OpenAI's shape."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select

from router.catalog import Catalog
from router.jobs import lifecycle
from router.jobs import openai_batches as intake
from router.jobs.sweeper import sweep
from router.ledger import budgets, repo
from router.ledger.db import session_scope
from router.ledger.tables import ApiBatch, ApiFileChunk
from router.settings import Settings
from router.usage import TokenUsage
from tests.api_support import Tenant, api_settings, auth, make_tenant, serving
from tests.fakes.batches import read_bill, set_knobs
from tests.helpers import ledger, priced, start_workers, stop_workers, tickets, worker_env

LABELS = "billing,bug,other"


@pytest.fixture
def settings(live_settings: Settings, fake_provider: str) -> Settings:
    httpx.post(f"{fake_provider}/_reset")
    return api_settings(live_settings)


@pytest.fixture
def server(settings: Settings, catalog: Catalog) -> Iterator[str]:
    with serving(settings, catalog) as (base, _app):
        yield base


def _batch_file(path: Path, models: list[str], n: int) -> Path:
    with path.open("w") as handle:
        for k, ticket in enumerate(tickets(n)):
            body = {
                "model": models[k % len(models)],
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ticket["text"]}],
                "max_tokens": 20,
            }
            handle.write(
                json.dumps({"custom_id": f"req-{k}", "method": "POST", "url": "/v1/chat/completions", "body": body})
                + "\n"
            )
    return path


def _run(client: openai.OpenAI, path: Path, metadata: dict[str, str]) -> tuple[openai.types.Batch, list[dict]]:
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    assert uploaded.bytes == path.stat().st_size and uploaded.purpose == "batch"
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )
    again = client.batches.create(  # as the SDK retries a create that timed out: the same batch
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )
    assert again.id == batch.id
    deadline = time.monotonic() + 180
    while batch.status not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch.errors
    lines = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    return batch, lines


def _conversation(ticket: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": ticket},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Which team handles it?"},
    ]


def test_named_models_through_the_openai_sdk(
    settings: Settings, catalog: Catalog, server: str, fake_provider: str, tmp_path: Path
) -> None:
    """A line naming a catalog model runs as sent: its whole conversation, cap, temperature and stop
    reach the provider (OpenAI's and Anthropic's wire formats here), and its answer comes back as the
    model gave it."""
    owner: Tenant = make_tenant(settings)
    assert (
        httpx.put(f"{server}/budgets/{owner.team}", headers=auth(owner.key), json={"monthly": "10"}).status_code == 200
    )
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    n = 40
    path = tmp_path / "batch.jsonl"
    sent: dict[str, list[dict[str, str]]] = {}
    with path.open("w") as handle:
        for k, ticket in enumerate(tickets(n)):
            sent[f"req-{k}"] = _conversation(ticket["text"])
            body = {
                "model": "gpt-4o-mini" if k % 2 == 0 else "claude-haiku-4-5",
                "messages": sent[f"req-{k}"],
                "max_tokens": 20 + k,
                "temperature": 0.2,
                "stop": ["END"],
            }
            line = {"custom_id": f"req-{k}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            handle.write(json.dumps(line) + "\n")
    batch, lines = _run(client, path, {"team": owner.team})

    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{k}" for k in range(n))  # each once
    assert batch.request_counts.total == n and batch.request_counts.completed == n and batch.request_counts.failed == 0
    assert client.files.content(batch.error_file_id).text == ""
    # What the providers were sent: each line's conversation, as written, in each vendor's own format.
    asked = httpx.get(f"{fake_provider}/_asked").json()
    assert len(asked) == n
    by_turns = {}
    for call in asked:
        body = call["body"]
        if "system" in body:  # Anthropic's Messages: the system turn apart, no sampling parameter
            turns = [{"role": "system", "content": body["system"]}, *body["messages"]]
            assert "temperature" not in body and body["stop_sequences"] == ["END"]
        else:
            turns = body["messages"]
            assert body["temperature"] == 0.2 and body["stop"] == ["END"]
        by_turns[json.dumps(turns)] = body["max_tokens"]
    for k in range(n):
        assert by_turns[json.dumps(sent[f"req-{k}"])] == 20 + k  # each conversation once, with its own cap
    expected = Decimal(0)
    for line in lines:
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert body["model"] == ("gpt-4o-mini" if int(line["custom_id"][4:]) % 2 == 0 else "claude-haiku-4-5")
        assert body["choices"][0]["message"]["content"]  # the model's answer, as it gave it
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        expected += catalog.price(body["model"]).cost_usd(
            TokenUsage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"])
        ) * Decimal("0.5")  # at the batch price: metadata mode is auto by default
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in lines)

    with session_scope(settings) as session:
        row = session.execute(select(ApiBatch).where(ApiBatch.id == batch.id)).scalar_one()
        team = repo.find_team(session, name=owner.team, tenant=owner.tenant)
        period = budgets.current_period(session, team_id=team.id)  # type: ignore[arg-type]
        assert period is not None
    spent = Decimal(0)
    for job_id in row.job_ids:
        calls, _ = ledger(settings, job_id)
        # Metadata mode auto by default: the lines went to the providers' batch APIs, at 0.5.
        assert calls and all(c.mode == "batch" and c.price_multiplier == Decimal("0.5") for c in calls)
        assert all(c.cost_usd == priced(catalog, c) for c in calls)
        spent += sum((c.cost_usd for c in calls), Decimal(0))
    assert spent == expected > 0  # the ledger is the lines' usage at the catalog's prices, to the cent and below
    assert period.settled == spent and period.reserved == 0  # the budget is settled, nothing left held


def test_pennyroute_auto_is_routed_and_measured(settings: Settings, server: str, tmp_path: Path) -> None:
    owner = make_tenant(settings)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    path = _batch_file(tmp_path / "auto.jsonl", ["pennyroute-auto"], 60)
    batch, lines = _run(client, path, {"min_quality": "0.8", "labels": LABELS, "team": owner.team})
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{k}" for k in range(60))
    with session_scope(settings) as session:
        row = session.execute(select(ApiBatch).where(ApiBatch.id == batch.id)).scalar_one()
        job = repo.get_job(session, row.job_ids[0])
    assert job.quality_mode == "reference" and job.min_quality == 0.8
    calls, _ = ledger(settings, job.id)
    assert any(c.purpose == "calibration" for c in calls)  # measured against the strongest model
    # A second batch of the same kind is routed on what the first measured: no calibration again.
    again = _batch_file(tmp_path / "again.jsonl", ["pennyroute-auto"], 20)
    second, lines = _run(client, again, {"min_quality": "0.8", "labels": LABELS, "team": owner.team})
    assert len(lines) == 20
    with session_scope(settings) as session:
        row = session.execute(select(ApiBatch).where(ApiBatch.id == second.id)).scalar_one()
        job = repo.get_job(session, row.job_ids[0])
    calls, _ = ledger(settings, job.id)
    assert job.quality_mode == "prior" and calls and not any(c.purpose == "calibration" for c in calls)
    listed = client.batches.list(limit=5)
    assert [b.id for b in listed.data] == [second.id, batch.id]


def test_bad_files_fail_whole_and_errors_read_as_openais(settings: Settings, server: str, tmp_path: Path) -> None:
    owner = make_tenant(settings)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    path = _batch_file(tmp_path / "bad.jsonl", ["gpt-4o-mini", "no-such-model"], 4)
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": owner.team},
    )
    assert batch.status == "failed" and batch.errors is not None
    with pytest.raises(openai.BadRequestError) as unbilled:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert unbilled.value.body["param"] == "metadata.team"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as wrong_endpoint:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    assert "is not supported: use /v1/chat/completions" in wrong_endpoint.value.message
    assert [(e.code, e.line) for e in batch.errors.data] == [("model_not_found", 2), ("model_not_found", 4)]
    with pytest.raises(openai.NotFoundError) as found:
        client.batches.retrieve("batch_nope")
    assert found.value.body == {
        "message": "No such Batch object: batch_nope",
        "type": "not_found_error",
        "param": None,
        "code": "not_found",
    }
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="pr_live_nothing", max_retries=0).batches.list()


def test_an_upload_is_kept_in_pieces(settings: Settings, server: str, tmp_path: Path) -> None:
    owner = make_tenant(settings)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    path = _batch_file(tmp_path / "big.jsonl", ["gpt-4o-mini"], 12_000)  # about 2.5 MB
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    with session_scope(settings) as session:
        pieces = session.execute(select(ApiFileChunk.seq).where(ApiFileChunk.file_id == uploaded.id)).all()
    assert len(pieces) == -(-path.stat().st_size // (1 << 20)) > 1
    assert client.files.content(uploaded.id).content == path.read_bytes()
    assert client.files.retrieve(uploaded.id).bytes == path.stat().st_size


def test_a_cancelled_batch_names_every_line_it_did_not_answer(settings: Settings, server: str, tmp_path: Path) -> None:
    owner = make_tenant(settings)
    tiny = httpx.put(f"{server}/budgets/{owner.team}", headers=auth(owner.key), json={"monthly": "0.000001"})
    assert tiny.status_code == 200
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    path = _batch_file(tmp_path / "paused.jsonl", ["gpt-4o-mini"], 30)
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    metadata = {"team": owner.team, "labels": LABELS, "on_budget": "pause"}
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )
    deadline = time.monotonic() + 60
    while httpx.get(f"{server}/jobs", headers=auth(owner.key)).json()[0]["status"] != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.batches.retrieve(batch.id).status == "in_progress"  # paused for budget: still in progress
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    counts = cancelled.request_counts
    assert counts is not None and counts.total == 30 and counts.completed + counts.failed == 30
    errors = [json.loads(line) for line in client.files.content(cancelled.error_file_id).text.splitlines()]
    answered = [json.loads(line) for line in client.files.content(cancelled.output_file_id).text.splitlines()]
    assert len(errors) == counts.failed and len(answered) == counts.completed
    assert sorted(line["custom_id"] for line in errors + answered) == sorted(f"req-{k}" for k in range(30))
    assert all(line["response"] is None and line["error"]["code"] for line in errors)


def test_a_line_too_long_for_the_model_is_in_the_error_file(settings: Settings, server: str, tmp_path: Path) -> None:
    owner = make_tenant(settings)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    path = _batch_file(tmp_path / "long.jsonl", ["gpt-4o-mini"], 5)
    huge = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "word " * 120_000}]}  # ~150k tokens > 128k
    with path.open("a") as handle:
        handle.write(
            json.dumps({"custom_id": "too-long", "method": "POST", "url": "/v1/chat/completions", "body": huge}) + "\n"
        )
    batch, lines = _run(client, path, {"team": owner.team, "labels": LABELS})
    assert sorted(line["custom_id"] for line in lines) == [f"req-{k}" for k in range(5)]
    assert batch.request_counts is not None and batch.request_counts.failed == 1
    errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["too-long"] and "context window" in errors[0]["error"]["message"]


def test_a_batch_runs_on_a_real_worker_with_a_broker(
    settings: Settings, catalog: Catalog, broker_url: str, pg_url: str, catalog_file: Path, tmp_path: Path
) -> None:
    """A worker with beat, as deployed, runs the batch's jobs (not the server)."""
    brokered = settings.model_copy(update={"broker_url": broker_url})
    owner = make_tenant(brokered)
    env = worker_env(pg_url=pg_url, broker_url=broker_url, catalog_file=catalog_file)
    env["PENNYROUTE_BATCH_POLL_EVERY_S"] = "0.5"
    workers = start_workers(1, env, tmp_path, extra=("-B", "--schedule", str(tmp_path / "beat-schedule")))
    try:
        with serving(brokered, catalog) as (base, app):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=owner.key, max_retries=0)
            path = _batch_file(tmp_path / "worker.jsonl", ["gpt-4o-mini", "claude-haiku-4-5"], 250)
            batch, lines = _run(client, path, {"team": owner.team, "labels": LABELS})
            assert app.state.threads == []  # the worker ran it, not the server
    finally:
        stop_workers(workers)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{k}" for k in range(250))
    assert batch.request_counts is not None and batch.request_counts.completed == 250
    with session_scope(settings) as session:
        row = session.execute(select(ApiBatch).where(ApiBatch.id == batch.id)).scalar_one()
    modes = {c.mode for job_id in row.job_ids for c in ledger(settings, job_id)[0]}
    assert modes == {"batch"}  # the default for /v1 batches: auto, so the providers' batch APIs (beat polls them)


def test_creates_sent_at_once_make_one_batch(settings: Settings, server: str, tmp_path: Path) -> None:
    owner = make_tenant(settings)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    path = _batch_file(tmp_path / "twice.jsonl", ["gpt-4o-mini"], 200)
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")

    def create() -> str:
        return client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"team": owner.team, "labels": LABELS},
        ).id

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: create(), range(4)))  # a create and three retries racing it
    assert len(set(ids)) == 1
    assert [b.id for b in client.batches.list().data] == ids[:1]
    other = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": owner.team, "labels": "billing,bug"},
    )
    assert other.id != ids[0]  # other metadata: another batch


def test_metadata_mode_sync_keeps_a_batch_off_the_providers_batch_apis(
    settings: Settings, server: str, tmp_path: Path
) -> None:
    owner = make_tenant(settings)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    path = _batch_file(tmp_path / "sync.jsonl", ["gpt-4o-mini"], 10)
    batch, lines = _run(client, path, {"team": owner.team, "labels": LABELS, "mode": "sync"})
    assert len(lines) == 10
    with session_scope(settings) as session:
        row = session.execute(select(ApiBatch).where(ApiBatch.id == batch.id)).scalar_one()
    calls = [c for job_id in row.job_ids for c in ledger(settings, job_id)[0]]
    assert calls and all(c.mode == "sync" and c.price_multiplier == 1 for c in calls)


def test_a_batch_past_its_window_expires_keeping_what_was_answered(
    settings: Settings,
    catalog: Catalog,
    server: str,
    fake_provider: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenAI's 24h expiry, with the window shortened: the batch's job is cancelled through the
    lifecycle, the lines the provider's batch had answered are ingested, charged and in the output
    file, the others are in the error file as batch_expired."""
    monkeypatch.setattr(intake, "WINDOW_S", 4)
    # The provider's batch answers half its lines at once and the rest over an hour.
    set_knobs(fake_provider, reset=True, delay_s=3600, started_done=0.5, shuffle=False)
    try:
        owner = make_tenant(settings)
        client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
        path = _batch_file(tmp_path / "slow.jsonl", ["gpt-4o-mini"], 20)
        with path.open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"team": owner.team, "labels": LABELS, "mode": "batch"},
        )
        deadline = time.monotonic() + 30
        while httpx.get(f"{fake_provider}/_batch").json()["batches"] < 1:  # its lines are at the provider
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.batches.retrieve(batch.id).status == "in_progress"
        assert batch.expires_at is not None
        time.sleep(max(0.0, batch.expires_at + 1 - time.time()))
        expired = client.batches.retrieve(batch.id)
        assert expired.status == "expired" and expired.expired_at is not None
        assert expired.expired_at >= batch.expires_at
        counts = expired.request_counts
        assert counts is not None and (counts.total, counts.completed, counts.failed) == (20, 10, 10)
        answered = [json.loads(line) for line in client.files.content(expired.output_file_id).text.splitlines()]
        errors = [json.loads(line) for line in client.files.content(expired.error_file_id).text.splitlines()]
        assert len(answered) == 10 and all(line["response"]["status_code"] == 200 for line in answered)
        assert len(errors) == 10
        assert all(
            line["response"] is None and line["error"]["code"] == "batch_expired" and line["error"]["message"]
            for line in errors
        )
        assert sorted(line["custom_id"] for line in answered + errors) == sorted(f"req-{k}" for k in range(20))
        with session_scope(settings) as session:
            row = session.execute(select(ApiBatch).where(ApiBatch.id == batch.id)).scalar_one()
            job = repo.get_job(session, row.job_ids[0])
        assert job.status == "cancelled"
        calls, _ = ledger(settings, job.id)
        charged = {c.id: c.cost_usd for c in calls if c.cost_usd}
        billed = read_bill(fake_provider)["lines"]
        assert len(charged) == 10 and set(charged) == set(billed)  # the answered lines, charged once each
        assert all(c.cost_usd == priced(catalog, c) for c in calls)
    finally:
        set_knobs(fake_provider, reset=True)


def test_a_batch_nobody_reads_expires_in_the_sweep(
    settings: Settings, catalog: Catalog, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = make_tenant(settings)
    tiny = httpx.put(f"{server}/budgets/{owner.team}", headers=auth(owner.key), json={"monthly": "0.000001"})
    assert tiny.status_code == 200
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    path = _batch_file(tmp_path / "unread.jsonl", ["gpt-4o-mini"], 12)
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    metadata = {"team": owner.team, "labels": LABELS, "on_budget": "pause", "mode": "sync"}
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )
    deadline = time.monotonic() + 60
    while httpx.get(f"{server}/jobs", headers=auth(owner.key)).json()[0]["status"] != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    monkeypatch.setattr(intake, "WINDOW_S", 1)
    time.sleep(1.2)
    sweep(settings, dispatcher=lifecycle.InlineDispatcher(settings, catalog), catalog=catalog)
    with session_scope(settings) as session:  # read from the ledger: no GET made it expire
        row = session.execute(select(ApiBatch).where(ApiBatch.id == batch.id)).scalar_one()
        job = repo.get_job(session, row.job_ids[0])
    assert row.status == "expired" and row.expired_at is not None and job.status == "cancelled"
    assert row.error_file_id and row.output_file_id
    errors = [json.loads(line) for line in client.files.content(row.error_file_id).text.splitlines()]
    assert len(errors) == 12 and {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert client.files.content(row.output_file_id).text == ""


def test_files_are_listed_and_deleted_as_openais(settings: Settings, server: str, tmp_path: Path) -> None:
    owner, other = make_tenant(settings), make_tenant(settings)
    tiny = httpx.put(f"{server}/budgets/{owner.team}", headers=auth(owner.key), json={"monthly": "0.000001"})
    assert tiny.status_code == 200
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    stranger = openai.OpenAI(base_url=f"{server}/v1", api_key=other.key, max_retries=0)
    uploaded = []
    for k in range(3):
        path = _batch_file(tmp_path / f"f{k}.jsonl", ["gpt-4o-mini"], 5 + k)
        with path.open("rb") as handle:
            uploaded.append(client.files.create(file=handle, purpose="batch").id)
    first, second, third = uploaded
    page = client.files.list()
    assert [f.id for f in page.data] == [third, second, first] and not page.has_more  # newest first
    assert [f.id for f in client.files.list(order="asc").data] == uploaded
    assert [f.id for f in client.files.list(after=third).data] == [second, first]
    two = client.files.list(limit=2)
    assert [f.id for f in two.data] == [third, second] and two.has_more
    assert [f.id for f in client.files.list(limit=2)] == [third, second, first]  # the SDK pages on `after`
    assert stranger.files.list().data == []

    # A batch that waits for budget (paused): its input file cannot be deleted while it runs.
    metadata = {"team": owner.team, "labels": LABELS, "on_budget": "pause", "mode": "sync"}
    batch = client.batches.create(
        input_file_id=first, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )
    assert batch.output_file_id is None and batch.status == "in_progress"
    made = client.files.list(purpose="batch_output").data
    assert len(made) == 2 and all(f.purpose == "batch_output" for f in made)  # its output and error files
    assert [f.id for f in client.files.list(purpose="batch").data] == [third, second, first]
    with pytest.raises(openai.ConflictError) as in_use:
        client.files.delete(first)
    assert in_use.value.status_code == 409 and in_use.value.code == "file_in_use"
    assert batch.id in in_use.value.message
    with pytest.raises(openai.ConflictError):
        client.files.delete(made[0].id)
    with pytest.raises(openai.NotFoundError):  # another tenant's file is not found, and stays
        stranger.files.delete(second)
    assert client.files.retrieve(second).id == second

    deleted = client.files.delete(second)
    assert deleted.model_dump() == {"id": second, "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(second)
    with pytest.raises(openai.NotFoundError):
        client.files.content(second)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(second)
    assert [f.id for f in client.files.list(purpose="batch").data] == [third, first]
    with session_scope(settings) as session:  # its content is gone from the ledger
        assert not session.execute(select(ApiFileChunk.seq).where(ApiFileChunk.file_id == second)).all()

    assert client.batches.cancel(batch.id).status == "cancelled"
    assert client.files.delete(first).deleted  # the batch has ended: its input can go
    assert client.files.delete(made[0].id).deleted


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "pennyroute-test-boundary") -> bytes:
    """A multipart/form-data body of (name, filename or None, bytes) parts, in the order given."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _pieces_stored(settings: Settings) -> int:
    with session_scope(settings) as session:
        return len(session.execute(select(ApiFileChunk.seq)).all())


def test_an_upload_over_the_cap_is_refused_and_nothing_of_it_is_kept(
    settings: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    capped = settings.model_copy(update={"max_upload_mb": 1})
    owner = make_tenant(capped)
    path = _batch_file(tmp_path / "big.jsonl", ["gpt-4o-mini"], 12_000)  # about 2.5 MB
    small = _batch_file(tmp_path / "small.jsonl", ["gpt-4o-mini"], 3_000)  # about 0.6 MB
    with serving(capped, catalog) as (base, _app):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=owner.key, max_retries=0)
        before = _pieces_stored(capped)
        # The SDK says its Content-Length: refused before the body is stored.
        with path.open("rb") as handle, pytest.raises(openai.APIStatusError) as refused:
            client.files.create(file=handle, purpose="batch")
        assert refused.value.status_code == 413
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "file_too_large" and error["param"] == "file"
        assert "upload limit of 1 MB" in error["message"] and "PENNYROUTE_MAX_UPLOAD_MB" in error["message"]
        # Sent chunked (no Content-Length): counted as it arrives, refused once past 1 MB, its pieces rolled back.
        boundary = "pennyroute-test-boundary"
        body = _multipart([("purpose", None, b"batch"), ("file", "over.jsonl", small.read_bytes() * 2)], boundary)

        answer = httpx.post(
            f"{base}/v1/files",
            headers={**auth(owner.key), "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=chunked_of(body),
        )
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "file_too_large"
        assert client.files.list().data == [] and _pieces_stored(capped) == before
        # Under the cap: taken, its purpose read even when it follows the file (curl -F file=@... -F purpose=batch).
        body = _multipart([("file", "under.jsonl", small.read_bytes()), ("purpose", None, b"batch")], boundary)
        answer = httpx.post(
            f"{base}/v1/files",
            headers={**auth(owner.key), "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=chunked_of(body),
        )
        assert answer.status_code == 200, answer.text
        kept = client.files.retrieve(answer.json()["id"])
        assert kept.bytes == small.stat().st_size and kept.filename == "under.jsonl" and kept.purpose == "batch"
        assert client.files.content(kept.id).content == small.read_bytes()
        wrong = _multipart([("file", "x.jsonl", small.read_bytes()), ("purpose", None, b"fine-tune")], boundary)
        answer = httpx.post(
            f"{base}/v1/files",
            headers={**auth(owner.key), "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=wrong,
        )
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "purpose"
        assert [f.id for f in client.files.list().data] == [kept.id]


def chunked_of(body: bytes) -> Iterator[bytes]:
    for at in range(0, len(body), 64 * 1024):
        yield body[at : at + 64 * 1024]


def test_a_batch_of_more_than_50000_requests_fails_naming_the_limit(
    settings: Settings, server: str, tmp_path: Path
) -> None:
    owner = make_tenant(settings)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=owner.key, max_retries=0)
    path = tmp_path / "many.jsonl"
    line = {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    with path.open("w") as handle:
        for k in range(50_001):
            handle.write(json.dumps({"custom_id": f"r{k}", **line}) + "\n")
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": owner.team},
    )
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    first = batch.errors.data[0]
    assert first.code == "too_many_tasks" and first.line == 50_001 and "50,000" in (first.message or "")
    with session_scope(settings) as session:
        row = session.execute(select(ApiBatch).where(ApiBatch.id == batch.id)).scalar_one()
    assert row.job_ids == []  # nothing ran
