"""Bad settings, catalogs and flag values through the CLI, as a new user meets them: each is named (the
variable, the file and field, or the flag and the value) with what is accepted, exit code 2, no
traceback, and nothing written."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from router.cli.app import app
from router.errors import InputError
from router.jobs.intake import parse_soft_percent
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import BudgetPolicy, Item, Job
from router.settings import Settings, get_settings
from tests.helpers import tickets, write_jsonl

runner = CliRunner()
GOOD = ["--task", "classify", "--labels", "billing,bug,other", "--min-quality", "0.9"]


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PENNYROUTE_") or name in ("DATABASE_URL", "BROKER_URL", "CELERY_BROKER_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PENNYROUTE_SANDBOX", "on")
    get_settings.cache_clear()


@pytest.fixture
def pg_cli(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """CLI on the test Postgres, sandbox answers, no broker."""
    _clean_env(monkeypatch)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    settings = get_settings()
    yield settings
    get_settings.cache_clear()


@pytest.fixture
def pg_team(pg_cli: Settings) -> str:
    name = f"growth-{uuid.uuid4().hex[:6]}"
    with session_scope(pg_cli) as session:
        repo.ensure_team(session, tenant=f"acme-{name}", team=name)
    return name


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def _counts(settings: Settings) -> tuple[int, int]:
    with session_scope(settings) as session:
        return (
            session.execute(select(func.count()).select_from(Job)).scalar_one(),
            session.execute(select(func.count()).select_from(Item)).scalar_one(),
        )


# -- unknown names in --region, --providers, --models ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--region", "mars"], "--region: unknown region 'mars': the catalog has eu, local, us"),
        (["--region", "eu,EU"], "--region: unknown region 'EU' (did you mean 'eu'?)"),
        (
            ["--providers", "openia"],
            "--providers: unknown provider 'openia' (did you mean 'openai'?): "
            "the catalog has anthropic, google, local, mistral, openai",
        ),
        (["--models", "gpt-5"], "--models: unknown model 'gpt-5' (did you mean 'gpt-4o'?): `pennyroute models` lists"),
    ],
)
def test_unknown_names_in_flags_are_named_and_nothing_is_written(
    pg_cli: Settings, pg_team: str, tmp_path: Path, args: list[str], expected: str
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", tickets(3))
    before = _counts(pg_cli)
    code, output = _run("submit", str(path), "--team", pg_team, *GOOD, *args)
    assert code == 2 and expected in output, output
    assert "no model qualifies" not in output.lower()
    assert _counts(pg_cli) == before


# -- the catalog ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[[models]]\nid = "gpt-4o"\ncontext_windw = 8000\n', "model gpt-4o: unknown key 'context_windw' (did you"),
        ('[[models]]\nid = "gpt-4o"\ncontext_window = -1\n', "model gpt-4o: context_window must be a positive whole"),
        (
            '[providers.openai]\nbase_url = "api.openai.com"\n',
            "provider openai: base_url must be an http:// or https://",
        ),
        (
            '[[models]]\nid = "m"\nprovider = "openai"\nprice = { input_usd_per_mtok = "nan" }\n',
            "model m: price.input_usd_per_mtok must be a decimal number of USD",
        ),
        ('[[models]]\nid = "gpt-4o"\n\n[[models]]\nid = "gpt-4o"\n', "model gpt-4o: id given twice in this file"),
    ],
)
def test_a_bad_catalog_is_named_and_nothing_is_written(
    pg_cli: Settings, pg_team: str, tmp_path: Path, body: str, expected: str
) -> None:
    catalog = tmp_path / "mine.toml"
    catalog.write_text(body)
    path = write_jsonl(tmp_path / "in.jsonl", tickets(3))
    before = _counts(pg_cli)
    for args in (["models"], ["submit", str(path), "--team", pg_team, *GOOD]):
        code, output = _run("--catalog", str(catalog), *args)
        assert code == 2 and f"{catalog}: {expected}" in output, output
    assert _counts(pg_cli) == before


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PENNYROUTE_USD_PER_EUR", "abc", "setting PENNYROUTE_USD_PER_EUR=abc is not accepted: use a decimal number"),
        ("PENNYROUTE_SANDBOX", "maybe", "setting PENNYROUTE_SANDBOX=maybe is not accepted: use one of auto, on, off"),
        ("PENNYROUTE_CHUNK_SIZE", "0", "setting PENNYROUTE_CHUNK_SIZE=0 is not accepted: use a whole number from 1"),
        ("DATABASE_URL", "garbage", "setting DATABASE_URL: not a database URL: use postgresql://"),
        ("DATABASE_URL", "mysql://root:hunter2@db/x", "setting DATABASE_URL: 'mysql' databases are not supported"),
    ],
)
def test_a_bad_setting_is_named_with_what_it_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    _clean_env(monkeypatch)
    ledger = tmp_path / "ledger.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{ledger}")
    monkeypatch.setenv(name, value)
    code, output = _run("models")
    assert code == 2 and expected in output and "hunter2" not in output, output
    assert not ledger.exists()
    get_settings.cache_clear()


@pytest.mark.parametrize("command", [["budget", "show"], ["status", "nojob"], ["tenant", "create", "acme"]])
def test_a_bad_setting_is_named_by_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("PENNYROUTE_CHUNK_SIZE", "0")
    code, output = _run(*command)
    assert code == 2 and "setting PENNYROUTE_CHUNK_SIZE=0 is not accepted" in output, output
    assert not (tmp_path / "ledger.db").exists()
    get_settings.cache_clear()


# -- --soft ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pct"),
    [("80%", 80.0), ("0.8", 80.0), ("80", 80.0), (" 75 % ", 75.0), ("1", 100.0), ("100", 100.0), ("0.5%", 0.5)],
)
def test_soft_takes_a_fraction_or_a_percentage(text: str, pct: float) -> None:
    assert parse_soft_percent(text) == pytest.approx(pct)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", "--soft: 0 is neither a fraction of the limit in (0, 1] (0.8 = 80%) nor a percentage up to 100"),
        ("150", "--soft: 150 is neither a fraction"),
        ("-0.8", "--soft: -0.8 is neither a fraction"),
        ("120%", "--soft: 120% must be between 0% and 100%"),
        ("0%", "--soft: 0% must be between 0% and 100%"),
        ("nan", "--soft: 'nan' is not a percentage (e.g. 80% or 0.8)"),
        ("most", "--soft: 'most' is not a percentage (e.g. 80% or 0.8)"),
    ],
)
def test_soft_refuses_anything_else_naming_the_flag(text: str, expected: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_soft_percent(text)
    assert str(caught.value).startswith(expected), str(caught.value)


def _soft(settings: Settings) -> list[tuple[object, ...]]:
    """Each budget policy's (monthly limit, soft percentage)."""
    with session_scope(settings) as session:
        return [tuple(r) for r in session.execute(select(BudgetPolicy.monthly_limit, BudgetPolicy.soft_pct)).all()]


@pytest.mark.parametrize("text", ["0.8", "80%", "80"])
def test_budget_set_soft_as_a_fraction_or_percentage_alerts_at_80_percent(sqlite_cli: Settings, text: str) -> None:
    code, output = _run("budget", "set", "--team", "growth", "--monthly", "500", "--soft", text)
    assert code == 0 and "alert at 80%" in output, output
    assert _soft(sqlite_cli) == [(500, pytest.approx(80.0))]


@pytest.mark.parametrize("text", ["150", "0", "-1", "lots", "101%"])
def test_budget_set_with_a_bad_soft_names_it_and_changes_nothing(sqlite_cli: Settings, text: str) -> None:
    assert _run("budget", "set", "--team", "growth", "--monthly", "500", "--soft", "0.5")[0] == 0
    code, output = _run("budget", "set", "--team", "growth", "--monthly", "900", "--soft", text)
    assert code == 2 and "--soft:" in output, output
    assert _soft(sqlite_cli) == [(500, pytest.approx(50.0))]
