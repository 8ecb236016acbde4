"""Tenant isolation, for EVERY endpoint of the app (the list is read from its routes, so a new
endpoint without a case here fails the test): another tenant's ids answer 404 and change nothing;
missing, malformed, unknown and revoked keys answer 401; a key without the scope answers 403. A key
is never found in any table, nor in the server's logs."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import text

from router.api.app import ROUTERS, create_app, log_config
from router.catalog import Catalog
from router.ledger import keys, repo
from router.ledger.db import get_engine, session_scope
from router.settings import Settings
from tests.api_support import METRICS_TOKEN, api_settings, auth, free_port, make_key, make_tenant, wait_threads
from tests.helpers import tickets, write_jsonl

# Not tenant data: the API's own description.
PUBLIC = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@dataclass
class World:
    app: FastAPI
    client: TestClient
    victim: Any
    attacker: Any
    ids: dict[str, str]  # path parameter -> the victim's value
    month: str
    batch_file: Path
    keys_made: list[str]


@pytest.fixture
def settings(live_settings: Settings, fake_provider: str) -> Settings:
    httpx.post(f"{fake_provider}/_reset")
    return api_settings(live_settings)


@pytest.fixture
def world(settings: Settings, catalog: Catalog, tmp_path: Path) -> Iterator[World]:
    app = create_app(settings, catalog)
    with TestClient(app, raise_server_exceptions=False) as client:
        victim, attacker = make_tenant(settings), make_tenant(settings)
        path = write_jsonl(tmp_path / "items.jsonl", tickets(20))
        with path.open("rb") as handle:
            job = client.post(
                "/jobs",
                headers=auth(victim.key),
                files={"file": ("items.jsonl", handle)},
                data={"task": "classify", "labels": "billing,bug,other", "team": victim.team, "quality": "prior"},
            )
        assert job.status_code == 201, job.text
        batch_file = tmp_path / "batch.jsonl"
        batch_file.write_text(
            "".join(
                json.dumps(
                    {
                        "custom_id": f"c{k}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": t["text"]}]},
                    }
                )
                + "\n"
                for k, t in enumerate(tickets(10))
            )
        )
        with batch_file.open("rb") as handle:
            uploaded = client.post(
                "/v1/files", headers=auth(victim.key), files={"file": ("b.jsonl", handle)}, data={"purpose": "batch"}
            ).json()
        batch = client.post(
            "/v1/batches",
            headers=auth(victim.key),
            json={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"team": victim.team, "labels": "billing,bug,other"},
            },
        ).json()
        assert batch["status"] == "in_progress", batch
        wait_threads(app)
        month = client.get("/jobs", headers=auth(victim.key)).json()[0]["created_at"][:7]
        assert client.put(f"/budgets/{victim.team}", headers=auth(victim.key), json={"monthly": "7"}).status_code == 200
        ids = {
            "job_id": job.json()["job_id"],
            "file_id": uploaded["id"],
            "batch_id": batch["id"],
            "team": victim.team,
            "month": month,
        }
        yield World(app, client, victim, attacker, ids, month, batch_file, [victim.key, attacker.key])
        wait_threads(app)


def routes(app: FastAPI) -> list[tuple[str, str, str | None]]:
    """(method, path template, the scope it needs) for every endpoint of the app's routers, checked
    against the app's own OpenAPI paths (an endpoint added elsewhere fails here)."""
    out = []
    for router, prefix in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            needs = [d.call.__name__ for d in route.dependant.dependencies if d.call is not None]
            scope = next(
                (n.removeprefix("require_").replace("_", ":", 1) for n in needs if n.startswith("require_")), None
            )
            for method in sorted(route.methods):
                out.append((method, prefix + route.path, scope))
    documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert documented == {(m, p) for m, p, _ in out}
    return out


def call(world: World, method: str, template: str, headers: dict[str, str], ids: dict[str, str]) -> httpx.Response:
    """The endpoint with these ids, with a body where it takes one (each endpoint has its case here)."""
    path = template.format(**{k: v for k, v in ids.items() if "{" + k + "}" in template})
    client = world.client
    case = (method, template)
    if case == ("POST", "/jobs"):
        with world.batch_file.open("rb") as handle:  # any bytes: the team is the point
            return client.post(
                path,
                headers=headers,
                files={"file": ("x.jsonl", handle)},
                data={"task": "classify", "labels": "a,b", "team": ids["team"]},
            )
    if case == ("POST", "/v1/files"):
        with world.batch_file.open("rb") as handle:
            return client.post(path, headers=headers, files={"file": ("x.jsonl", handle)}, data={"purpose": "batch"})
    if case == ("POST", "/v1/batches"):
        body = {"input_file_id": ids["file_id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
                "metadata": {"team": ids["team"]}}  # fmt: skip
        return client.post(path, headers=headers, json=body)
    if case == ("PUT", "/budgets/{team}"):
        return client.put(path, headers=headers, json={"monthly": "1000"})
    if case == ("GET", "/jobs"):
        return client.get(path, headers=headers, params={"team": ids["team"]})
    if case == ("GET", "/v1/batches"):
        return client.get(path, headers=headers, params={"after": ids["batch_id"]})
    if case == ("GET", "/v1/files"):
        return client.get(path, headers=headers, params={"after": ids["file_id"]})
    if case == ("DELETE", "/v1/files/{file_id}"):
        return client.delete(path, headers=headers)
    if method in ("GET", "POST") and case in KNOWN:
        return client.request(method, path, headers=headers)
    raise AssertionError(f"{method} {template} has no case in the isolation test: add one")


KNOWN = {
    ("GET", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/results"),
    ("GET", "/jobs/{job_id}/quality"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("POST", "/jobs/{job_id}/resume"),
    ("GET", "/reports/{month}"),
    ("GET", "/budgets"),
    ("GET", "/models"),
    ("GET", "/quality"),
    ("GET", "/v1/files/{file_id}"),
    ("GET", "/v1/files/{file_id}/content"),
    ("GET", "/v1/batches/{batch_id}"),
    ("POST", "/v1/batches/{batch_id}/cancel"),
    ("GET", "/metrics"),
}


def test_every_endpoint_is_covered(world: World) -> None:
    found = routes(world.app)
    assert len(found) >= 19
    for method, path, scope in found:
        assert scope is not None or path == "/metrics", f"{method} {path} takes no key"


def test_bad_keys_answer_401_everywhere(world: World, settings: Settings) -> None:
    revoked = make_key(settings, tenant=world.attacker.tenant, scopes=list(keys.SCOPES))
    with session_scope(settings) as session:
        keys.revoke_key(session, prefix=revoked)
    forged = world.victim.key[:-4] + ("AAAA" if not world.victim.key.endswith("AAAA") else "BBBB")
    bad = {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {world.victim.key}"},
        "malformed": {"Authorization": "Bearer not-a-key"},
        "empty": {"Authorization": "Bearer "},
        "unknown": {"Authorization": f"Bearer pr_live_{'x' * 44}"},
        "forged body": auth(forged),
        "revoked": auth(revoked),
    }
    for method, path, _ in routes(world.app):
        for what, headers in bad.items():
            answer = call(world, method, path, headers, world.ids)
            assert answer.status_code == 401, (what, method, path, answer.text)
            error = answer.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}


def test_a_key_without_the_scope_answers_403(world: World, settings: Settings) -> None:
    for method, path, scope in routes(world.app):
        if scope is None:
            continue
        others = [s for s in keys.SCOPES if s != scope]
        key = make_key(settings, tenant=world.victim.tenant, scopes=others)
        answer = call(world, method, path, auth(key), world.ids)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "insufficient_scope"


def test_another_tenants_ids_answer_404_and_change_nothing(world: World, settings: Settings) -> None:
    victim, attacker = world.victim, world.attacker
    before = {
        "job": world.client.get(f"/jobs/{world.ids['job_id']}", headers=auth(victim.key)).json(),
        "batch": world.client.get(f"/v1/batches/{world.ids['batch_id']}", headers=auth(victim.key)).json(),
        "budgets": world.client.get("/budgets", headers=auth(victim.key)).json(),
        "file": world.client.get(f"/v1/files/{world.ids['file_id']}", headers=auth(victim.key)).json(),
        "files": world.client.get("/v1/files", headers=auth(victim.key)).json(),
    }
    secrets_of_victim = [world.ids["job_id"], world.ids["file_id"], world.ids["batch_id"], victim.tenant, victim.team]
    for method, path, _ in routes(world.app):
        answer = call(world, method, path, auth(attacker.key), world.ids)
        takes_ids = any("{" + k + "}" in path for k in ("job_id", "file_id", "batch_id", "team"))
        if path == "/metrics":
            assert answer.status_code == 401  # a tenant key never reads every tenant's figures
        elif path in ("/v1/batches", "/v1/files") and method == "GET":
            assert answer.status_code == 404  # the cursor is the victim's batch, or file
        elif takes_ids or (method, path) in (("POST", "/v1/batches"), ("POST", "/jobs")):
            assert answer.status_code == 404, (method, path, answer.status_code, answer.text)
        else:
            assert answer.status_code == 200, (method, path, answer.text)
        # An error may repeat an id the caller sent; nothing else of the victim's appears anywhere.
        shown = [victim.tenant] if answer.status_code >= 400 else secrets_of_victim
        for secret in shown:
            assert secret not in answer.text, (method, path, secret)
    wait_threads(world.app)
    after = {
        "job": world.client.get(f"/jobs/{world.ids['job_id']}", headers=auth(victim.key)).json(),
        "batch": world.client.get(f"/v1/batches/{world.ids['batch_id']}", headers=auth(victim.key)).json(),
        "budgets": world.client.get("/budgets", headers=auth(victim.key)).json(),
        "file": world.client.get(f"/v1/files/{world.ids['file_id']}", headers=auth(victim.key)).json(),
        "files": world.client.get("/v1/files", headers=auth(victim.key)).json(),
    }
    assert after == before


def test_a_team_scoped_key_cannot_reach_another_team(world: World, settings: Settings) -> None:
    with session_scope(settings) as session:
        repo.create_team(session, tenant=world.victim.tenant, name="elsewhere")
    team_key = make_key(settings, tenant=world.victim.tenant, team="elsewhere", scopes=list(keys.SCOPES))
    for method, path, _ in routes(world.app):
        answer = call(world, method, path, auth(team_key), world.ids)
        if path in ("/models", "/quality") or (method, path) in (
            ("GET", "/jobs"),
            ("GET", "/budgets"),
            ("POST", "/v1/files"),
        ):
            assert answer.status_code == 200, (method, path, answer.text)
            assert world.ids["job_id"] not in answer.text and world.victim.team not in answer.text
        elif path == "/reports/{month}":
            assert answer.status_code == 403
        elif path == "/metrics":
            assert answer.status_code == 401
        else:
            assert answer.status_code == 404, (method, path, answer.status_code, answer.text)


@pytest.fixture
def server_logging() -> Iterator[None]:
    """Logging as `pennyroute serve` sets it, for one test; the process's own is put back after."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "pennyroute")
    kept = [(logging.getLogger(n), logging.getLogger(n).handlers[:], logging.getLogger(n).level,
             logging.getLogger(n).propagate, logging.getLogger(n).disabled) for n in names]  # fmt: skip
    yield
    for logger, handlers, level, propagate, disabled in kept:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


def test_no_key_in_any_table_or_log(world: World, settings: Settings, catalog: Catalog, server_logging: None) -> None:
    stream = io.StringIO()
    logging.config.dictConfig(log_config(settings))  # what `pennyroute serve` runs uvicorn with
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "pennyroute"):
        for handler in logging.getLogger(name).handlers:
            assert isinstance(handler, logging.StreamHandler)
            handler.setStream(stream)
    app = create_app(settings, catalog)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=True))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{base}/openapi.json")
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        key = world.victim.key
        httpx.get(f"{base}/jobs", headers=auth(key))
        httpx.get(f"{base}/jobs?api_key={key}")  # a key in a query string is logged redacted
        httpx.get(f"{base}/jobs/{uuid.uuid4().hex}", headers=auth(key))
        httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        httpx.post(f"{base}/v1/batches", headers=auth(key), content=b"{not json")
    finally:
        server.should_exit = True
        thread.join(10)
    logged = stream.getvalue()
    assert "GET /jobs" in logged  # the access log ran
    for secret in [*world.keys_made, METRICS_TOKEN]:
        assert secret not in logged
        assert secret[8:] not in logged  # not even the key's body
    # Every text and JSON column of every table, searched for every key made.
    with get_engine(settings).connect() as conn:
        tables = [r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
        for table in tables:
            dump = conn.execute(
                text(f"SELECT coalesce(string_agg(t::text, chr(10)), '') FROM \"{table}\" t")
            ).scalar_one()
            for secret in world.keys_made:
                assert secret not in dump, table
                assert secret[20:] not in dump, table  # not even the secret part
