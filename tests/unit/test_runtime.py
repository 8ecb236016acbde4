"""The process runtime: the worker's GC tuning."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from router.engine import runtime


@pytest.fixture
def gc_state() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_gc_freezes_what_is_alive_and_raises_the_young_threshold(gc_state: None) -> None:
    kept = [[i] for i in range(10)]  # a tracked container alive when the worker has started
    runtime.tune_gc(50_000)
    assert gc.get_freeze_count() > 1_000  # the modules, classes and caches loaded so far
    assert all(o is not kept for o in gc.get_objects())  # frozen: no collection walks it any more
    assert gc.get_threshold()[0] == 50_000


def test_tune_gc_zero_keeps_the_thresholds(gc_state: None) -> None:
    before = gc.get_threshold()
    runtime.tune_gc(0)
    assert gc.get_threshold() == before
