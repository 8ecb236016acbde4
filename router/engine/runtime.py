"""One asyncio loop per process, on a background thread, where all provider calls run.

Chunk tasks (Celery threads, or the in-process runner) hand it coroutines and wait for the result;
the loop keeps every chunk's calls in flight together over shared, pooled HTTP clients. Built on
first use and rebuilt in a forked child, never at import.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None
_gates: dict[tuple[int, int], asyncio.Semaphore] = {}


def loop() -> asyncio.AbstractEventLoop:
    """This process's background loop, started on first use."""
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or not _loop.is_running():
            ready = threading.Event()
            new_loop = asyncio.new_event_loop()

            def serve() -> None:
                asyncio.set_event_loop(new_loop)
                new_loop.call_soon(ready.set)
                new_loop.run_forever()

            threading.Thread(target=serve, name="pennyroute-io", daemon=True).start()
            ready.wait()
            _loop, _pid = new_loop, os.getpid()
        return _loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and wait for its result (from any thread but the loop's)."""
    return asyncio.run_coroutine_threadsafe(coro, loop()).result()


def gate(limit: int) -> asyncio.Semaphore:
    """The process-wide limit on provider calls in flight; call inside the loop.

    Every chunk's calls pass through the same gate, so while one chunk records its results the
    others' calls take its slots: the process keeps `limit` calls in flight, not chunk by chunk.
    """
    key = (os.getpid(), limit)
    semaphore = _gates.get(key)
    if semaphore is None:
        semaphore = _gates[key] = asyncio.Semaphore(limit)
    return semaphore


def tune_gc(gen0_threshold: int) -> None:
    """Freeze what a started worker holds, and collect the young generation less often.

    Everything alive now (modules, Celery, SQLAlchemy's compiled caches, the catalog) lives as long
    as the process; `gc.freeze` takes it out of every later collection, so the full collections
    that allocation-heavy HTTP traffic triggers stop walking it. A larger young-generation threshold
    then trades a little memory for fewer collections. `gen0_threshold` 0 leaves the thresholds alone.
    """
    gc.collect()
    gc.freeze()
    if gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
