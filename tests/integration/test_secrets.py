"""Secrets stay out of the ledger, the SQLite ledger is its owner's alone, and names hold no control characters.

A self-hosted server or a proxy that echoes the request's key in its error body is played by a small
server of this module that answers every call 401 and quotes the headers it was sent; the fake
provider plays error bodies that name other secrets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr
from sqlmodel import select

from router.catalog import Catalog, load_catalog
from router.engine.chunk import run_chunk
from router.errors import InputError
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger import repo
from router.ledger.db import SQLITE_FILE_MODE, get_engine, session_scope, upgrade
from router.ledger.tables import CallStatus, Team, Tenant
from router.settings import Settings
from tests.helpers import FAKE_KEY, ledger, tickets, write_catalog, write_jsonl

LABELS = ("billing", "bug", "other")
# A second configured key (a provider the job does not use) and strings shaped like vendors' keys.
OTHER_KEY = "mistral-0123456789abcdef"
ANTHROPIC_SHAPED = "sk-ant-api03-" + "Q" * 40
GOOGLE_SHAPED = "AIzaSy" + "B" * 33


@pytest.fixture
def settings(live_settings: Settings) -> Settings:
    return live_settings.model_copy(
        update={"api_keys": {**live_settings.api_keys, "MISTRAL_API_KEY": SecretStr(OTHER_KEY)}}
    )


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    """A server that refuses every call (401) and echoes what it was sent: `?mode=` is read from the
    first path segment, /json/... (the key in a JSON error message) or /text/... (a long text body
    whose key falls across the 300 characters an unreadable body is cut to)."""

    async def refuse(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ")
        if request.path.startswith("/json/"):
            body = {
                "error": {"message": f"Incorrect API key provided: {key}. Headers: Authorization={auth}"},
                "request": {"headers": dict(request.headers)},
            }
            return web.json_response(body, status=401)
        text = "proxy: upstream refused the request. " + "." * (296 - 37) + f"{key} was the key sent"
        assert text.index(key) == 296  # the cut at 300 would keep its first 4 characters
        return web.Response(status=401, text=text, content_type="text/plain")

    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", refuse)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["url"], state["stop"], state["loop"] = (
            f"http://127.0.0.1:{site.port}",
            asyncio.Event(),
            asyncio.get_running_loop(),
        )
        ready.set()
        await state["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(timeout=10)
    yield state["url"]
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(timeout=5)


def _submit(settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], n: int, **kw: Any) -> str:
    path = write_jsonl(tmp_path / "items.jsonl", tickets(n))
    request = JobRequest(path=path, team=team[1], tenant=team[0], task="classify", labels=LABELS, min_quality=0.9, **kw)
    return submit_job(settings, catalog, request).job_id


def _stored_text(settings: Settings, job_id: str) -> str:
    """Everything the ledger holds about the job that came from a provider: call and item errors,
    stopped providers, job events."""
    calls, items = ledger(settings, job_id)
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        events = repo.job_events(session, job_id)
    return json.dumps(
        {
            "calls": [c.error for c in calls],
            "items": [i.error for i in items],
            "stopped": job.stopped_providers,
            "events": [{"kind": e.kind, "detail": e.detail} for e in events],
        }
    )


@pytest.mark.parametrize("mode", ["json", "text"])
def test_a_server_that_echoes_the_key_leaves_no_key_in_the_ledger(
    settings: Settings, tmp_path: Path, team: tuple[str, str], echo_server: str, mode: str
) -> None:
    catalog = load_catalog(write_catalog(tmp_path / "catalog.toml", f"{echo_server}/{mode}"))
    job_id = _submit(settings, catalog, tmp_path, team, 5, providers=frozenset({"openai"}))
    outcome = run_chunk(settings, catalog, job_id=job_id, lo=0, hi=5)
    assert outcome.claimed == 5
    calls, _ = ledger(settings, job_id)
    assert calls and all(c.status == CallStatus.ERROR and "401" in (c.error or "") for c in calls)
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        kinds = {e.kind for e in repo.job_events(session, job_id)}
    assert job.status == "paused" and set(job.stopped_providers or {}) == {"openai"}
    assert {"provider_stopped", "paused"} <= kinds
    stored = _stored_text(settings, job_id)
    assert FAKE_KEY not in stored and FAKE_KEY[:4] not in stored  # not even the part before a cut
    assert "[red" in (calls[0].error or "")  # "[redacted]", perhaps cut short with the body


def test_error_bodies_naming_other_keys_or_key_shaped_strings_are_redacted(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    httpx.post(f"{fake_provider}/_reset")
    job_id = _submit(settings, catalog, tmp_path, team, 3, models=frozenset({"gpt-4o-mini"}))
    message = f"bad request; upstream keys {OTHER_KEY}, {ANTHROPIC_SHAPED} and {GOOGLE_SHAPED}; x-api-key: hunter2-pass"
    httpx.post(f"{fake_provider}/_fail", json={"status": 400, "count": 3, "body": {"error": {"message": message}}})
    try:
        outcome = run_chunk(settings, catalog, job_id=job_id, lo=0, hi=3)
    finally:
        httpx.post(f"{fake_provider}/_reset")
    assert outcome.failed == 3  # a 400 fails the item, with the provider's (redacted) message as its reason
    stored = _stored_text(settings, job_id)
    for secret in (OTHER_KEY, ANTHROPIC_SHAPED, GOOGLE_SHAPED, "hunter2-pass"):
        assert secret not in stored
    calls, items = ledger(settings, job_id)
    assert all("bad request; upstream keys [redacted]" in (c.error or "") for c in calls)
    assert all("[redacted]" in (i.error or "") for i in items)


# -- the SQLite ledger's file ----------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets others read new files (022, the common default), so the test can fail."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_sqlite_ledger_and_its_wal_are_readable_by_their_owner_only(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "ledger.db"
    settings = Settings(database_url=f"sqlite:///{path}", _env_file=None)  # type: ignore[call-arg]
    upgrade(settings)
    with session_scope(settings) as session:  # the WAL and its index exist while a connection is open
        repo.create_tenant(session, name="acme")
        siblings = [p for p in (tmp_path / "ledger.db-wal", tmp_path / "ledger.db-shm") if p.exists()]
        assert siblings  # WAL mode: SQLite made them, with the database file's mode
        assert [_mode(p) for p in siblings] == [SQLITE_FILE_MODE] * len(siblings)
    assert _mode(path) == SQLITE_FILE_MODE == 0o600
    get_engine(settings).dispose()


def test_an_existing_world_readable_sqlite_ledger_is_tightened_on_open(
    tmp_path: Path, open_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    wal = tmp_path / "old.db-wal"
    for each, mode in ((path, 0o644), (wal, 0o664)):
        each.touch()
        each.chmod(mode)
    assert (_mode(path), _mode(wal)) == (0o644, 0o664)
    settings = Settings(database_url=f"sqlite:///{path}", _env_file=None)  # type: ignore[call-arg]
    with caplog.at_level(logging.WARNING, logger="pennyroute.ledger"):
        get_engine(settings)
    assert (_mode(path), _mode(wal)) == (0o600, 0o600)
    assert str(path) in caplog.text and "644" in caplog.text
    get_engine(settings).dispose()


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["acme\x1b[31m", "acme\nroot", "tab\there", "bell\x07", "del\x7f", "csi\x9b2J", "evil\u202etxt"]
)
def test_tenant_and_team_names_with_control_characters_are_refused(
    live_settings: Settings, team: tuple[str, str], bad: str
) -> None:
    with pytest.raises(InputError, match="control characters") as refused, session_scope(live_settings) as session:
        repo.create_tenant(session, name=bad)
    assert "\x1b" not in str(refused.value) and "\n" not in str(refused.value)  # the message shows them escaped
    with pytest.raises(InputError, match="control characters"), session_scope(live_settings) as session:
        repo.create_team(session, tenant=team[0], name=bad)
    with pytest.raises(InputError, match="control characters"), session_scope(live_settings) as session:
        repo.ensure_team(session, tenant=bad, team="growth")
    with session_scope(live_settings) as session:
        assert session.exec(select(Tenant).where(Tenant.name == bad.strip())).first() is None
        assert session.exec(select(Team).where(Team.name == bad.strip())).first() is None


def test_the_cli_and_the_worker_redact_keys_from_their_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A warning that quotes a configured key reaches stderr redacted (the CLI's handler filter)."""
    import logging

    from router.cli.app import redact_logs
    from router.redact import RedactingFilter
    from router.settings import get_settings

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-a-key-that-must-not-show-1234")
    get_settings.cache_clear()
    try:
        redact_logs()
        handlers = logging.getLogger().handlers
        assert handlers and all(any(isinstance(f, RedactingFilter) for f in h.filters) for h in handlers)
        record = logging.LogRecord(
            "router", logging.WARNING, __file__, 1, "upstream said %s", ("sk-test-a-key-that-must-not-show-1234",), None
        )
        for handler in handlers:
            for f in handler.filters:
                f.filter(record)
        assert "sk-test-a-key-that-must-not-show-1234" not in record.getMessage()
    finally:
        get_settings.cache_clear()
