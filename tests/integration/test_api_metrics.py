"""/metrics: the ledger's figures for every tenant (exact, every worker's), the processes' counters
added up across processes (multiprocess mode), and only for the metrics token."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from router.api.app import create_app
from router.catalog import Catalog
from router.ledger import repo
from router.ledger.db import session_scope
from router.settings import Settings
from tests.api_support import METRICS_TOKEN, api_settings, auth, make_tenant, wait_threads
from tests.helpers import ROOT, tickets, write_jsonl


@pytest.fixture
def settings(live_settings: Settings, fake_provider: str, tmp_path: Path) -> Settings:
    httpx.post(f"{fake_provider}/_reset")
    folder = tmp_path / "prom"
    folder.mkdir()
    return api_settings(live_settings).model_copy(update={"prometheus_multiproc_dir": folder})


@pytest.fixture
def client(settings: Settings, catalog: Catalog) -> Iterator[TestClient]:
    app = create_app(settings, catalog)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
        wait_threads(app)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_read_the_ledger_and_add_up_the_processes(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    owner = make_tenant(settings)
    assert client.put(f"/budgets/{owner.team}", headers=auth(owner.key), json={"monthly": "5"}).status_code == 200
    path = write_jsonl(tmp_path / "items.jsonl", tickets(30))
    with path.open("rb") as handle:
        created = client.post(
            "/jobs",
            headers=auth(owner.key),
            files={"file": ("items.jsonl", handle)},
            data={"task": "classify", "labels": "billing,bug,other", "team": owner.team, "quality": "prior",
                  "models": "gpt-4o-mini"},
        )  # fmt: skip
    assert created.status_code == 201, created.text
    wait_threads(client.app)  # type: ignore[arg-type]
    # Two other processes (as two Celery workers would) count provider batch lines into the same folder.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(settings.prometheus_multiproc_dir)}
    for n in (3, 4):
        code = f"from router.metrics import count_batch_lines; count_batch_lines(provider='openai', outcome='succeeded', n={n})"
        subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True)

    assert client.get("/metrics", headers=auth(owner.key)).status_code == 401  # a tenant key: no
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)
    key = (("mode", "sync"), ("model", "gpt-4o-mini"), ("provider", "openai"), ("tenant", owner.tenant))
    with session_scope(settings) as session:
        spent = repo.job_spend(session, created.json()["job_id"])
    assert Decimal(str(found[("pennyroute_cost_usd_total", key)])) == spent > 0
    batch_key = (("mode", "batch"), ("model", "gpt-4o-mini"), ("provider", "openai"), ("tenant", owner.tenant))
    assert found[("pennyroute_cost_usd_total", batch_key)] == 0  # a job with no deadline runs sync
    every = (("mode", "all"), ("model", "gpt-4o-mini"), ("provider", "openai"), ("tenant", owner.tenant))
    assert found[("pennyroute_calls_total", tuple(sorted((*every, ("outcome", "ok")))))] == 30
    assert found[("pennyroute_tokens_total", tuple(sorted((*every, ("kind", "output")))))] > 0
    remaining = found[
        ("pennyroute_budget_remaining", (("currency", "USD"), ("team", owner.team), ("tenant", owner.tenant)))
    ]
    assert Decimal(str(remaining)) == Decimal(5) - spent
    assert ("pennyroute_items_open", (("state", "done"),)) in found
    assert found[("pennyroute_batch_lines_total", (("outcome", "succeeded"), ("provider", "openai")))] == 7


def test_metrics_are_off_without_a_token(live_settings: Settings, catalog: Catalog) -> None:
    settings = api_settings(live_settings).model_copy(update={"metrics_token": None})
    with TestClient(create_app(settings, catalog)) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 403 and "PENNYROUTE_METRICS_TOKEN" in answer.json()["error"]["message"]
