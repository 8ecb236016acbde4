"""One asyncio loop per process, on a background thread, where all provider calls run.

Chunk tasks (Celery threads, or the in-process runner) hand it coroutines and wait for the result;
the loop keeps every chunk's calls in flight together over shared, pooled HTTP clients. Built on
first use and rebuilt in a forked child, never at import.
"""

from __future__ import annotations

import asyncio
import gc
import os
import queue
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar

from router.errors import ProviderError

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
    """Run `coro` on the background loop and wait for its result (from any thread but the loop's).

    Provider calls do not go through here but through a `Stream`, whose results come back one by one."""
    if _abort.is_set():
        coro.close()
        _abort_wait()
    future = asyncio.run_coroutine_threadsafe(coro, loop())
    while True:
        try:
            return future.result(timeout=RUN_POLL_S)
        except TimeoutError:
            pass
        if _abort.is_set():
            future.cancel()
            _abort_wait()


# How often a thread waiting on the loop looks whether an interrupt came (a wake-up, not a delay).
RUN_POLL_S = 0.25


def _abort_wait() -> None:
    """A chunk thread after a second Ctrl-C: wait for the process to exit, writing nothing."""
    threading.Event().wait()


class Stream:
    """The calls of one batch, in flight on the loop, whose results come back as each finishes.

    A chunk thread `launch`es calls (coroutines that never raise, each giving back its key: engine/calls.py)
    and `take`s results as they come, so a slow or retried call holds back only its own item. After
    `stop_calls()` every call that has not left (waiting at the gate, for a slot or for its retry
    delay) comes back at once as a NotSent error; the calls in flight finish and come back as usual.
    Used by one thread; its tasks are touched on the loop only.
    """

    def __init__(self) -> None:
        self._results: queue.SimpleQueue[tuple[int, Any, float]] = queue.SimpleQueue()
        self._tasks: dict[asyncio.Task[Any], int] = {}
        self.pending = 0  # launched, not yet taken

    def launch(self, calls: Sequence[tuple[int, Coroutine[Any, Any, tuple[int, Any, float]]]]) -> None:
        """Start each (key, coroutine) on the loop now."""
        if _abort.is_set():
            for _, coro in calls:
                coro.close()
            _abort_wait()
        if not calls:
            return
        self.pending += len(calls)
        loop().call_soon_threadsafe(self._start, list(calls))

    def take(self, linger_s: float, *, until: float | None = None) -> list[tuple[int, Any, float]]:
        """Wait for at least one result (none when nothing is pending, or by `until`, a
        time.monotonic() the caller must act at); then keep collecting for up to `linger_s` after the
        first, or until nothing is pending, so results are written in groups."""
        got: list[tuple[int, Any, float]] = []
        first_at = 0.0
        while self.pending:
            wait = STOP_POLL_S if _stop.is_set() else RUN_POLL_S
            if got:
                wait = min(wait, max(0.0, first_at + linger_s - time.monotonic()))
            if until is not None:
                wait = min(wait, max(0.0, until - time.monotonic()))
            try:
                got.append(self._results.get(timeout=wait) if wait > 0 else self._results.get_nowait())
                self.pending -= 1
                if len(got) == 1:
                    first_at = time.monotonic()
                continue
            except queue.Empty:
                pass
            if _abort.is_set():
                _abort_wait()
            if _stop.is_set():
                loop().call_soon_threadsafe(self._cancel_unsent)
            if got and time.monotonic() >= first_at + linger_s:
                break
            if until is not None and time.monotonic() >= until:
                break
        return got

    def give_up(self, keys: Sequence[int]) -> None:
        """Cancel the calls of `keys` (calls in flight whose answer is no longer wanted: a hedged call
        whose twin answered). Each still comes back, as a NotSent error, or with its result if it
        finished first; the caller has recorded it already and drops it."""
        if keys:
            loop().call_soon_threadsafe(self._give_up, frozenset(keys))

    def _give_up(self, keys: frozenset[int]) -> None:
        for task, key in list(self._tasks.items()):
            if key in keys and not task.done():
                task.cancel()

    def _start(self, calls: list[tuple[int, Coroutine[Any, Any, tuple[int, Any, float]]]]) -> None:
        running = asyncio.get_running_loop()
        for key, coro in calls:
            task = running.create_task(coro)
            self._tasks[task] = key
            task.add_done_callback(self._done)
        if _stop.is_set():
            self._cancel_unsent()

    def _done(self, task: asyncio.Task[Any]) -> None:
        key = self._tasks.pop(task)
        if task.cancelled():
            self._results.put((key, NotSent(), 0.0))
        elif (
            exc := task.exception()
        ) is not None:  # the call coroutines never raise: a bug, reported as the call's error
            self._results.put(
                (key, ProviderError(f"unexpected {type(exc).__name__}: {exc}", provider="pennyroute"), 0.0)
            )
        else:
            self._results.put(task.result())

    def _cancel_unsent(self) -> None:
        """After an interrupt: cancel the calls that have not gone through the gate (never sent)."""
        for task in list(self._tasks):
            if task not in _held and not task.done():
                task.cancel()


def gate(limit: int) -> asyncio.Semaphore:
    """The process-wide limit on provider calls in flight; call inside the loop.

    Every chunk's calls pass through the same gate, so while one chunk records its results the
    others' calls take its slots: the process keeps `limit` calls in flight, not chunk by chunk.
    """
    key = (os.getpid(), limit)
    semaphore = _gates.get(key)
    if semaphore is None:
        semaphore = _gates[key] = _Gate(limit)
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


# -- interrupts (Ctrl-C in-process) ----------------------------------------------------------------
#
# A first Ctrl-C calls `stop_calls()`: the gate lets no new call start, the calls in flight finish,
# and every Stream gets back each of its calls that never left as a NotSent error (recorded at $0;
# engine/rounds.py hands its item back as pending). `abort_calls()` (a second Ctrl-C) stops handing
# results back at all: the calls in flight stay `in_flight` in the ledger, and the next run charges
# them at their worst case (jobs.lifecycle's recovery of a dead run).

NOT_SENT = "not sent: the run was interrupted (Ctrl-C)"
# How often a chunk thread waiting on its calls looks again after an interrupt.
STOP_POLL_S = 0.05

_stop = threading.Event()
_abort = threading.Event()
_held: set[asyncio.Task[Any]] = set()  # call tasks holding the gate now: calls in flight


class Interrupted(Exception):
    """Raised when an interrupt cut short work whose results are incomplete (a calibration sample)."""


class NotSent(ProviderError):
    """A call an interrupt kept from leaving: never sent, never billed, not retried."""

    def __init__(self) -> None:
        super().__init__(NOT_SENT, provider="pennyroute")


def stop_calls() -> None:
    """First Ctrl-C: no new call starts; calls in flight finish and are recorded."""
    _stop.set()


def abort_calls() -> None:
    """Second Ctrl-C: no result is handed back any more (the process is about to exit)."""
    _stop.set()
    _abort.set()


def stopping() -> bool:
    """Whether an interrupt asked this process to stop calling providers."""
    return _stop.is_set()


def reset_stop() -> None:
    """Calls may start again (a new run in the same process)."""
    _stop.clear()
    _abort.clear()


class _Gate(asyncio.Semaphore):
    """The calls-in-flight semaphore, which also knows which call tasks hold it, and lets none in
    once `stop_calls()` was called."""

    async def acquire(self) -> Literal[True]:
        task = asyncio.current_task()
        while True:
            if _stop.is_set():
                await asyncio.get_running_loop().create_future()  # never set: cancelled when the round is settled
            await super().acquire()
            if not _stop.is_set():
                break
            super().release()  # stopped while it waited: it does not start
        if task is not None:
            _held.add(task)
        return True

    def release(self) -> None:
        _held.discard(asyncio.current_task())
        super().release()


def in_flight() -> int:
    """How many calls hold the gate now."""
    return len(_held)
