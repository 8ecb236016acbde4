"""Bad settings: each is refused as a ConfigError naming its environment variable and the values it
accepts, never a traceback, and never repeating a URL that may hold a password."""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from router.errors import ConfigError, PennyrouteError
from router.settings import Settings, accepted_values, get_settings


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean environment: no pennyroute variables, no .env file (the working directory is empty)."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "BROKER_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("PENNYROUTE_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _problem(env: pytest.MonkeyPatch, name: str, value: str) -> str:
    env.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(ConfigError) as caught:
        get_settings()
    assert isinstance(caught.value, PennyrouteError)  # the CLI shows it plainly (router/cli/app.py _fail)
    return str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("PENNYROUTE_USD_PER_EUR", "abc", "a decimal number above 0 (USD per EUR, e.g. 1.08)"),
        ("PENNYROUTE_USD_PER_EUR", "-1", "a decimal number above 0 (USD per EUR, e.g. 1.08)"),
        ("PENNYROUTE_USD_PER_EUR", "0", "a decimal number above 0 (USD per EUR, e.g. 1.08)"),
        ("PENNYROUTE_USD_PER_EUR", "nan", "a decimal number above 0 (USD per EUR, e.g. 1.08)"),
        ("PENNYROUTE_SANDBOX", "maybe", "one of auto, on, off"),
        ("PENNYROUTE_HTTP_BACKEND", "curl", "one of aiohttp, httpx"),
        ("PENNYROUTE_CATALOG_REPLACE", "maybe", "true or false (or 1/0, yes/no, on/off)"),
        ("PENNYROUTE_CHUNK_SIZE", "0", "a whole number from 1 to 10,000"),
        ("PENNYROUTE_CHUNK_SIZE", "1.5", "a whole number from 1 to 10,000"),
        ("PENNYROUTE_CHUNK_SIZE", "lots", "a whole number from 1 to 10,000"),
        ("PENNYROUTE_CALLS_IN_FLIGHT", "0", "a whole number from 1 to 5,000"),
        ("PENNYROUTE_WORKER_THREADS", "65", "a whole number from 1 to 64"),
        ("PENNYROUTE_GC_GEN0_THRESHOLD", "-1", "a whole number at least 0"),
        ("PENNYROUTE_LEASE_S", "1", "a whole number at least 2"),
        ("PENNYROUTE_REQUEST_TIMEOUT_S", "0", "a number above 0"),
        ("PENNYROUTE_REQUEST_TIMEOUT_S", "inf", "a number above 0"),
        ("PENNYROUTE_SWEEP_EVERY_S", "nan", "a number above 0"),
        ("PENNYROUTE_SWEEP_IDLE_S", "-5", "a number above 0"),
        ("PENNYROUTE_BUDGET_WAIT_S", "-1", "a number at least 0"),
        ("PENNYROUTE_MAX_UPLOAD_MB", "0", "a whole number from 1 to 1,000,000"),
        ("PENNYROUTE_MAX_UPLOAD_MB", "1.5", "a whole number from 1 to 1,000,000"),
    ],
)
def test_a_bad_value_names_its_variable_and_what_it_accepts(
    env: pytest.MonkeyPatch, name: str, value: str, accepted: str
) -> None:
    message = _problem(env, name, value)
    assert message == f"setting {name}={value} is not accepted: use {accepted}", message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DATABASE_URL", "garbage", "not a database URL"),
        ("DATABASE_URL", "mysql://root:hunter2@db/ledger", "'mysql' databases are not supported"),
        ("PENNYROUTE_DATABASE_URL", "mongodb://db", "'mongodb' databases are not supported"),
        ("BROKER_URL", "localhost:6379", "not a broker URL"),
        ("PENNYROUTE_REDIS_URL", "http://cache:6379", "not a Redis URL"),
        ("PENNYROUTE_ALERT_WEBHOOK", "hooks.example.com/T0/secret", "not a web address"),
    ],
)
def test_a_bad_url_names_its_variable_and_the_forms_accepted_without_repeating_it(
    env: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    message = _problem(env, name, value)
    assert message.startswith(f"setting {name}: {expected}"), message
    assert value not in message and "hunter2" not in message and "secret" not in message
    if "DATABASE" in name:
        assert "postgresql://" in message and "sqlite:///" in message


def test_every_bad_setting_is_named_at_once(env: pytest.MonkeyPatch) -> None:
    env.setenv("PENNYROUTE_SANDBOX", "maybe")
    message = _problem(env, "PENNYROUTE_CHUNK_SIZE", "0")
    assert "PENNYROUTE_SANDBOX=maybe" in message and "PENNYROUTE_CHUNK_SIZE=0" in message


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///pennyroute.db",
        "sqlite://",
        "postgresql://postgres@127.0.0.1:5432/pennyroute",
        "postgres://u:p@db/ledger",
        "postgresql+psycopg://db/ledger",
    ],
)
def test_supported_database_urls_are_accepted(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("DATABASE_URL", url)
    assert get_settings().database_url == url


def test_good_values_are_read(env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "PENNYROUTE_USD_PER_EUR": "1.08",
        "PENNYROUTE_SANDBOX": "off",
        "PENNYROUTE_CHUNK_SIZE": "250",
        "PENNYROUTE_REQUEST_TIMEOUT_S": "30.5",
        "PENNYROUTE_ALERT_WEBHOOK": "https://hooks.example.com/T0",
        "PENNYROUTE_REDIS_URL": "rediss://cache:6380/1",
        "BROKER_URL": "amqp://guest@rabbit//",
        "PENNYROUTE_MAX_UPLOAD_MB": "50",
    }.items():
        env.setenv(name, value)
    settings = get_settings()
    assert (settings.usd_per_eur, settings.sandbox, settings.chunk_size) == (Decimal("1.08"), "off", 250)
    assert settings.request_timeout_s == 30.5 and settings.redis_url == "rediss://cache:6380/1"
    assert settings.max_upload_mb == 50 and settings.max_upload_bytes == 50 * 1024 * 1024


def test_every_typed_setting_says_what_it_accepts() -> None:
    """A new number, flag or choice among the settings gets its accepted values said without more code."""
    plain = (str, Path, dict)
    for name, info in Settings.model_fields.items():
        kinds = [a for a in typing.get_args(info.annotation) if a is not type(None)] or [info.annotation]
        if typing.get_origin(info.annotation) is typing.Literal or not any(
            k in plain or typing.get_origin(k) is dict for k in kinds
        ):
            assert accepted_values(name) != "use a value", name
