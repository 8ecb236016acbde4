"""Fixtures of the unit tests that call a fake provider which checks its key (the SDK contract tests)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.server import start_in_thread
from tests.sdk_contract import KEY


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    """A fake provider server for the module that refuses any key but tests.sdk_contract.KEY."""
    url, stop = start_in_thread(port=0, api_key=KEY)
    yield url
    stop()


@pytest.fixture
def keyed_fake(keyed_server: str) -> str:
    """The module's keyed fake, its scripted faults, bill and kept bodies reset."""
    httpx.post(f"{keyed_server}/_reset").raise_for_status()
    return keyed_server
