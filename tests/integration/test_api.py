"""The HTTP API on real Postgres, jobs run in-process (no broker) against the fake provider."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from router.api import auth as api_auth
from router.api.app import create_app
from router.catalog import Catalog
from router.ledger import keys, repo
from router.ledger.db import session_scope
from router.settings import Settings
from tests.api_support import api_settings, auth, make_key, make_tenant, wait_threads
from tests.helpers import ledger, priced, run_cli, tickets, write_jsonl

LABELS = "billing,bug,other"


@pytest.fixture
def settings(live_settings: Settings, fake_provider: str) -> Settings:
    httpx.post(f"{fake_provider}/_reset")
    return api_settings(live_settings)


@pytest.fixture
def client(settings: Settings, catalog: Catalog) -> Iterator[TestClient]:
    app = create_app(settings, catalog)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
        wait_threads(app)


def _upload(client: TestClient, key: str, path: Path, **form: str) -> httpx.Response:
    fields = {"task": "classify", "labels": LABELS, "providers": "openai", "quality": "prior", **form}
    with path.open("rb") as handle:
        return client.post("/jobs", headers=auth(key), files={"file": ("items.jsonl", handle)}, data=fields)


def test_a_job_submitted_over_http_runs_in_process_and_reads_as_the_cli_says(
    client: TestClient, settings: Settings, catalog: Catalog, tmp_path: Path, cli_env: Settings
) -> None:
    owner = make_tenant(settings)
    path = write_jsonl(tmp_path / "items.jsonl", [*tickets(250), {"id": "bad"}])
    answer = _upload(client, owner.key, path, team=owner.team)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    job_id = created["job_id"]
    assert created["n_items"] == 250 and created["n_rejected"] == 1
    assert created["rejected"] == [{"line": 251, "field": "text", "reason": "missing"}]
    wait_threads(client.app)  # type: ignore[arg-type]

    state = client.get(f"/jobs/{job_id}", headers=auth(owner.key)).json()
    assert state["status"] == "done" and state["n_done"] == 250 and state["exit_code"] == 0
    calls, _ = ledger(settings, job_id)
    assert Decimal(state["spent_usd"]) == sum(priced(catalog, c) for c in calls) > 0
    listed = client.get("/jobs", headers=auth(owner.key), params={"status": "done"}).json()
    assert [j["id"] for j in listed] == [job_id]

    results = client.get(f"/jobs/{job_id}/results", headers=auth(owner.key))
    records = [json.loads(line) for line in results.text.splitlines()]
    assert [r["id"] for r in records] == [f"i{k}" for k in range(250)]
    assert all(r["status"] == "done" and r["output"] in LABELS.split(",") for r in records)

    quality = client.get(f"/jobs/{job_id}/quality", headers=auth(owner.key)).json()
    assert quality["quality_mode"] == "prior" and sum(quality["answered_by"].values()) == 250
    assert sum(Decimal(c["cost_usd"]) for c in quality["calls"]) == Decimal(state["spent_usd"])
    # The same job, read by the CLI, says the same.
    code, text = run_cli("status", job_id, "--json")
    assert code == 0 and json.loads(text)["spent_usd"] == state["spent_usd"]


def test_errors_carry_the_clis_words(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    owner = make_tenant(settings)
    path = write_jsonl(tmp_path / "items.jsonl", tickets(3))
    bad = _upload(client, owner.key, path, team=owner.team, labels="billing")
    assert bad.status_code == 400
    assert bad.json()["error"] == {
        "message": "--labels: classify needs at least two labels, e.g. --labels billing,bug,other",
        "type": "invalid_request_error",
        "param": "--labels",
        "code": "invalid_request",
    }
    unknown = client.get("/jobs/nosuchjob", headers=auth(owner.key))
    assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "unknown job 'nosuchjob'"
    state = client.get("/jobs", headers=auth(owner.key), params={"status": "bogus"})
    assert state.status_code == 400 and "unknown state 'bogus'" in state.json()["error"]["message"]


def test_a_team_scoped_key_sees_and_bills_its_team_only(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    owner = make_tenant(settings)
    with session_scope(settings) as session:
        repo.create_team(session, tenant=owner.tenant, name="other")
    team_key = make_key(settings, tenant=owner.tenant, team=owner.team, scopes=["jobs:write", "jobs:read"])
    path = write_jsonl(tmp_path / "items.jsonl", tickets(5))
    mine = _upload(client, team_key, path)  # no team named: the key's own
    assert mine.status_code == 201, mine.text
    theirs = _upload(client, owner.key, path, team="other")
    assert theirs.status_code == 201
    wait_threads(client.app)  # type: ignore[arg-type]
    assert client.get(f"/jobs/{theirs.json()['job_id']}", headers=auth(team_key)).status_code == 404
    assert [j["id"] for j in client.get("/jobs", headers=auth(team_key)).json()] == [mine.json()["job_id"]]
    assert _upload(client, team_key, path, team="other").status_code == 404
    assert len(client.get("/jobs", headers=auth(owner.key)).json()) == 2


def test_budgets_reports_models_and_quality(
    client: TestClient, settings: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    owner = make_tenant(settings)
    other = make_tenant(settings)
    for who in (owner, other):
        put = client.put(f"/budgets/{who.team}", headers=auth(who.key), json={"monthly": "12.5", "soft": "80%"})
        assert put.status_code == 200, put.text
        assert Decimal(put.json()["limit"]) == Decimal("12.5") and put.json()["soft_pct"] == 80.0
    rows = client.get("/budgets", headers=auth(owner.key)).json()
    assert [(r["tenant"], r["team"], Decimal(r["limit"])) for r in rows] == [
        (owner.tenant, owner.team, Decimal("12.5"))
    ]
    read_only = make_key(settings, tenant=owner.tenant, scopes=["reports:read"])
    refused = client.put(f"/budgets/{owner.team}", headers=auth(read_only), json={"monthly": "1"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    bad = client.put(f"/budgets/{owner.team}", headers=auth(owner.key), json={"monthly": "lots"})
    assert bad.status_code == 400

    path = write_jsonl(tmp_path / "items.jsonl", tickets(20))
    assert _upload(client, owner.key, path, team=owner.team).status_code == 201
    wait_threads(client.app)  # type: ignore[arg-type]
    month = client.get("/jobs", headers=auth(owner.key)).json()[0]["created_at"][:7]
    report = client.get(f"/reports/{month}", headers=auth(owner.key)).json()
    assert report["tenant"] == owner.tenant
    csv = client.get(f"/reports/{month}", headers=auth(owner.key), params={"format": "csv", "by": "model"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    html = client.get(f"/reports/{month}", headers=auth(owner.key), params={"format": "html"})
    assert html.status_code == 200 and "<html" in html.text.lower()
    models = client.get("/models", headers=auth(owner.key)).json()
    assert {m["model_id"] for m in models} == set(catalog.models)
    assert client.get("/quality", headers=auth(owner.key)).status_code == 200


def test_cancel_and_resume(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    owner = make_tenant(settings)
    put = client.put(f"/budgets/{owner.team}", headers=auth(owner.key), json={"monthly": "0.000001"})
    assert put.status_code == 200
    path = write_jsonl(tmp_path / "items.jsonl", tickets(50))
    created = _upload(client, owner.key, path, team=owner.team, on_budget="pause")
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    wait_threads(client.app)  # type: ignore[arg-type]
    assert client.get(f"/jobs/{job_id}", headers=auth(owner.key)).json()["status"] == "paused"
    resumed = client.post(f"/jobs/{job_id}/resume", headers=auth(owner.key))
    assert resumed.status_code == 200
    wait_threads(client.app)  # type: ignore[arg-type]
    cancelled = client.post(f"/jobs/{job_id}/cancel", headers=auth(owner.key)).json()
    assert cancelled["status"] == "cancelled"
    state = client.get(f"/jobs/{job_id}", headers=auth(owner.key)).json()
    assert state["status"] == "cancelled" and state["failures"] == {}  # counted by kind only when asked
    counted = client.get(f"/jobs/{job_id}", headers=auth(owner.key), params={"failures": "true"}).json()
    assert counted["failures"] == {"cancelled": counted["n_failed"]} and counted["n_failed"] > 0


def test_with_a_broker_the_job_runs_on_a_real_worker(
    settings: Settings, catalog: Catalog, broker_url: str, celery_worker: object, tmp_path: Path
) -> None:
    brokered = settings.model_copy(update={"broker_url": broker_url})
    owner = make_tenant(brokered)
    with TestClient(create_app(brokered, catalog)) as client:
        path = write_jsonl(tmp_path / "items.jsonl", tickets(300))
        created = _upload(client, owner.key, path, team=owner.team)
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert client.app.state.threads == []  # type: ignore[attr-defined]  # nothing ran here
        deadline = time.monotonic() + 120
        while (state := client.get(f"/jobs/{job_id}", headers=auth(owner.key)).json())["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    assert state["status"] == "done" and state["n_done"] == 300


def test_serve_needs_the_server_secret(cli_env: Settings) -> None:
    code, text = run_cli("serve", "--port", "1")
    assert code == 2 and "PENNYROUTE_SERVER_SECRET is not set" in text


def test_a_revoked_key_is_refused_within_the_trust_window(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = make_tenant(settings)
    assert client.get("/jobs", headers=auth(owner.key)).status_code == 200
    with session_scope(settings) as session:
        keys.revoke_key(session, prefix=owner.key)
    assert client.get("/jobs", headers=auth(owner.key)).status_code == 200  # trusted a few seconds more
    monkeypatch.setattr(api_auth, "TRUST_S", 0.0)  # ... and no longer once they have passed
    assert client.get("/jobs", headers=auth(owner.key)).status_code == 401


def test_a_key_in_use_is_checked_again_in_the_background(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trusted key is read again once its trust is RECHECK_S old, off the request's path: a revoked
    key is then refused before its trust would have run out."""
    owner = make_tenant(settings)
    assert client.get("/jobs", headers=auth(owner.key)).status_code == 200
    with session_scope(settings) as session:
        keys.revoke_key(session, prefix=owner.key)
    monkeypatch.setattr(api_auth, "RECHECK_S", 0.0)
    assert client.get("/jobs", headers=auth(owner.key)).status_code == 200  # served trusted; re-read behind it
    deadline = time.monotonic() + 5
    while client.get("/jobs", headers=auth(owner.key)).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key was never dropped"
        time.sleep(0.05)
    assert not client.app.state.key_checks  # type: ignore[attr-defined]


def test_a_status_kept_for_pollers_is_still_its_tenants_only(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    owner, other = make_tenant(settings), make_tenant(settings)
    path = write_jsonl(tmp_path / "items.jsonl", tickets(5))
    job_id = _upload(client, owner.key, path, team=owner.team).json()["job_id"]
    wait_threads(client.app)  # type: ignore[arg-type]
    first = client.get(f"/jobs/{job_id}", headers=auth(owner.key))
    assert first.status_code == 200
    assert job_id in client.app.state.job_status  # type: ignore[attr-defined]  # kept for the next poller
    assert client.get(f"/jobs/{job_id}", headers=auth(other.key)).status_code == 404  # from the kept answer too
    assert client.get(f"/jobs/{job_id}", headers=auth(owner.key)).content == first.content


def test_pollers_arriving_together_cost_one_status_read(
    client: TestClient, settings: Settings, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a job's kept status goes stale under many pollers, one request reads the ledger; the others
    get the kept answer meanwhile (or, with none kept, wait for that one read), and another tenant's
    key still gets 404, even while the owner's read is under way."""
    import asyncio

    from router.api import jobs as api_jobs
    from tests.api_support import serving

    owner, other = make_tenant(settings), make_tenant(settings)
    path = write_jsonl(tmp_path / "items.jsonl", tickets(5))
    job_id = _upload(client, owner.key, path, team=owner.team).json()["job_id"]
    wait_threads(client.app)  # type: ignore[arg-type]
    reads: list[str] = []
    real = api_jobs._read_status

    def slow_read(*args: object) -> object:
        reads.append(job_id)
        time.sleep(0.3)  # a ledger read under load
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(api_jobs, "_read_status", slow_read)

    async def poll(base: str, key: str, n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            return await asyncio.gather(*(http.get(f"/jobs/{job_id}", headers=auth(key)) for _ in range(n)))

    with serving(settings, catalog) as (base, _app):
        answers = asyncio.run(poll(base, owner.key, 20))  # nothing kept yet: one read, the rest wait for it
        assert [a.status_code for a in answers] == [200] * 20 and len({a.content for a in answers}) == 1
        assert len(reads) == 1
        time.sleep(api_jobs.STATUS_FRESH_S + 0.1)  # the kept answer is stale now
        answers = asyncio.run(poll(base, owner.key, 20))
        assert [a.status_code for a in answers] == [200] * 20 and len(reads) == 2
        assert all(json.loads(a.content)["job_id"] == job_id for a in answers)
        time.sleep(api_jobs.STATUS_FRESH_S + 0.1)
        mixed = asyncio.run(poll(base, other.key, 5)) + asyncio.run(poll(base, owner.key, 1))
        assert [a.status_code for a in mixed] == [404] * 5 + [200]
