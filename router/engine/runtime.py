"""One asyncio loop per process, on a background thread, where all provider calls run.

Chunk tasks (Celery threads, or the in-process runner) hand it coroutines and wait for the result;
the loop keeps every chunk's calls in flight together over shared, pooled HTTP clients. Built on
first use and rebuilt in a forked child, never at import.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar, cast

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

            new_loop.set_task_factory(_task_factory)  # type: ignore[arg-type]
            threading.Thread(target=serve, name="pennyroute-io", daemon=True).start()
            ready.wait()
            _loop, _pid = new_loop, os.getpid()
        return _loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and wait for its result (from any thread but the loop's).

    After `stop_calls()`, a round of calls (engine/calls.py call_all) whose calls in flight have all
    finished comes back at once: each call that never left is a NotSent error (see "interrupts")."""
    if _abort.is_set():
        coro.close()
        _abort_wait()
    registry: list[asyncio.Task[Any]] = []

    async def tracked() -> T:
        _run_calls.set(registry)
        return await coro

    future = asyncio.run_coroutine_threadsafe(tracked(), loop())
    settled_once = False
    while True:
        try:
            return future.result(timeout=STOP_POLL_S if _stop.is_set() else RUN_POLL_S)
        except TimeoutError:
            pass
        if _abort.is_set():
            future.cancel()
            _abort_wait()
        if not _stop.is_set():
            continue
        found = asyncio.run_coroutine_threadsafe(_settled(registry), loop()).result()
        if found is None:
            settled_once = False
            continue
        if not settled_once:  # the same answer twice, STOP_POLL_S apart: every call of the round is in the registry
            settled_once = True
            continue
        future.cancel()  # its calls that never left wait at the gate: cancel them
        if found is _UNKNOWN_ROUND:
            raise Interrupted("a round of calls was cut short by an interrupt")
        return cast(T, found)


# How often a thread waiting on the loop looks whether an interrupt came (a wake-up, not a delay).
RUN_POLL_S = 0.25
_UNKNOWN_ROUND: list[Any] = []


def _abort_wait() -> None:
    """A chunk thread after a second Ctrl-C: wait for the process to exit, writing nothing."""
    threading.Event().wait()


async def _settled(registry: list[asyncio.Task[Any]]) -> list[Any] | None:
    """On the loop, after `stop_calls()`: None while a call of this round is in flight (or the round
    has made no call task yet); else the round's results, with NotSent for each call that never left
    (_UNKNOWN_ROUND when they cannot be told apart: not call_one's coroutines)."""
    if not registry or any(task in _held for task in registry):
        return None
    results: list[Any] = []
    for task in registry:
        if task.done():
            if task.cancelled() or task.exception() is not None:
                return _UNKNOWN_ROUND
            results.append(task.result())
        elif task in _sent:  # went through the gate and is not done: still in flight
            return None
        else:
            key = inspect.getcoroutinelocals(task.get_coro()).get("key")  # type: ignore[arg-type]
            if not isinstance(key, int):
                return _UNKNOWN_ROUND
            results.append((key, NotSent(), 0.0))
    return results


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
# and every round waiting on them gets back each call that never left as a NotSent error (recorded
# at $0; engine/chunk.py hands its item back as pending). A round whose calls cannot be told apart
# (the call coroutines are not call_one's) raises Interrupted instead, and its calls are charged
# at their worst case. `abort_calls()` (a second Ctrl-C) stops handing results back at all.

NOT_SENT = "not sent: the run was interrupted (Ctrl-C)"
# How often a chunk thread waiting on its round looks whether an interrupt has settled it.
STOP_POLL_S = 0.05

_stop = threading.Event()
_abort = threading.Event()
_run_calls: contextvars.ContextVar[list[asyncio.Task[Any]] | None] = contextvars.ContextVar(
    "pennyroute_run_calls", default=None
)
# Call tasks that went through the gate (touched on the loop's thread only; weak: a task is forgotten when done with).
_sent: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
_held: set[asyncio.Task[Any]] = set()  # call tasks holding the gate now: calls in flight


class Interrupted(Exception):
    """Raised in a chunk thread when an interrupt cut its round (or batch) short."""


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
            _sent.add(task)
            _held.add(task)
        return True

    def release(self) -> None:
        _held.discard(asyncio.current_task())
        super().release()


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Task[Any]:
    """Every task of the loop; a call's task (a coroutine taking a `key`: calls.py call_one) made
    inside `run` is remembered by that run, so an interrupt can tell its calls apart."""
    task = asyncio.Task(coro, loop=loop, **kwargs)
    registry = _run_calls.get()
    code = getattr(coro, "cr_code", None)
    if registry is not None and code is not None and "key" in code.co_varnames[: code.co_argcount]:
        registry.append(task)
    return task


def in_flight() -> int:
    """How many calls hold the gate now."""
    return len(_held)
