"""Runs one tool call with bounds: argument checks, a wall-clock time-out and an output length limit.

Tools are plain Python functions, possibly written by users, so everything that can go wrong (wrong argument
names or types, exceptions, hanging) becomes an `Error: ...` string that the agent sees as the tool's output.

A tool rejects input it cannot use by RETURNING a string that starts with `Error:` (the built-in tools never
raise). `run_tool` reports such a call as failed (`ok` False) just like one that raised or timed out: the
environment counts every failed call as an invalid tool call, so a tool whose failure is not the caller's fault
should return a normal message instead (as `search` does with "No results ...").
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import queue
import threading
import typing
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

# Only plain JSON-like annotations are type-checked; anything fancier is left to the tool itself.
_CHECKED_TYPES: dict[object, tuple[type, ...]] = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}
ERROR_PREFIX = "Error:"


def check_arguments(fn: Callable, arguments: object) -> str | None:
    """None when `arguments` fit `fn`'s signature and simple type hints, else an `Error: ...` message."""
    name = getattr(fn, "__name__", "tool")
    if not isinstance(arguments, dict):
        return f"Error: arguments for {name} must be an object"
    try:
        signature, hints = _signature_and_hints(fn)
        signature.bind(**arguments)
    except (TypeError, ValueError) as exc:  # ValueError: a callable without a signature
        return f"Error: bad arguments for {name}: {exc}"
    for key, value in arguments.items():
        expected = _CHECKED_TYPES.get(hints.get(key))
        wrong_bool = isinstance(value, bool) and bool not in (expected or ())
        if expected and (not isinstance(value, expected) or wrong_bool):
            return f"Error: argument {key!r} of {name} must be of type {hints[key].__name__}"
    return None


def run_tool(fn: Callable, arguments: dict, timeout_s: float = 1.0, max_output_chars: int = 300) -> tuple[str, bool]:
    """Call `fn(**arguments)` in a worker thread; returns (output, ok) and never raises for tool errors.

    ok is False when the call failed: arguments that do not fit the signature, an exception, a time-out, or an
    output starting with "Error:" (the tool rejected its input).
    """
    name = getattr(fn, "__name__", "tool")
    problem = check_arguments(fn, arguments)
    if problem is not None:
        return truncate(problem, max_output_chars), False
    future = _start(fn, arguments)
    try:
        exc = future.exception(timeout=timeout_s)  # returns the tool's exception instead of raising it
    except FutureTimeout:
        return truncate(f"Error: {name} timed out after {timeout_s:g} s", max_output_chars), False
    if exc is not None:
        return truncate(f"Error: {name} failed: {type(exc).__name__}: {_text(exc) or ''}", max_output_chars), False
    output = _text(future.result())
    if output is None:
        return truncate(f"Error: {name} returned a value that cannot be printed", max_output_chars), False
    return truncate(output, max_output_chars), not output.startswith(ERROR_PREFIX)


def truncate(text: str, max_chars: int) -> str:
    """Cut `text` to `max_chars`, marking the cut with "..." so the agent knows output was lost."""
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - 3)] + "..."[:max_chars]


def _text(value: object) -> str | None:
    """str(value), or None when that raises.

    A user tool may return an int past Python's 4300-digit str() limit, or an object (or raise an exception) whose
    __str__ fails; neither may crash the episode.
    """
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:
        return None


def _start(fn: Callable, arguments: dict) -> Future:
    """Run the call on a worker thread: a hung tool cannot block the episode, nor interpreter exit."""
    future: Future = Future()
    future.set_running_or_notify_cancel()
    _WORKERS.submit(fn, arguments, future)
    return future


class _WorkerPool:
    """Daemon threads reused from call to call (starting a thread per call cost ~0.2 ms, 25x a calculator call).

    A worker returns to the idle list only after its tool returned, so a hung tool keeps its thread out of the pool
    (for good, if it never returns) and the next call gets a fresh worker; at most `max_idle` idle workers are kept.
    A forked child starts with an empty pool: the parent's threads do not exist there.
    """

    def __init__(self, max_idle: int = 8):
        self.max_idle = max_idle
        self._idle: list[queue.SimpleQueue] = []
        self._lock = threading.Lock()

    def forget_workers(self) -> None:
        self._idle, self._lock = [], threading.Lock()

    def submit(self, fn: Callable, arguments: dict, future: Future) -> None:
        with self._lock:
            jobs = self._idle.pop() if self._idle else None
        if jobs is None:
            jobs = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(jobs,), name="tool-worker", daemon=True).start()
        jobs.put((fn, arguments, future))

    def _work(self, jobs: queue.SimpleQueue) -> None:
        while True:
            fn, arguments, future = jobs.get()
            try:
                # A fresh context per call, as a new thread would have: a tool that changes e.g. decimal's
                # precision must not change it for the next call (threading.local state does carry over).
                result, exc = contextvars.Context().run(fn, **arguments), None
            except BaseException as error:  # the worker must report every failure, not die silently
                result, exc = None, error
            with self._lock:  # idle again BEFORE the caller wakes up, so back-to-back calls reuse this thread
                keep = len(self._idle) < self.max_idle
                if keep:
                    self._idle.append(jobs)
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)
            if not keep:
                return


_WORKERS = _WorkerPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKERS.forget_workers)


def _signature_and_hints(fn: Callable) -> tuple[inspect.Signature, dict[str, object]]:
    """A tool's signature and resolved type hints, cached per function (~20 us a call otherwise)."""
    try:
        return _cached_signature_and_hints(fn)
    except TypeError:  # an unhashable callable (a class instance defining __eq__ only): no cache
        return inspect.signature(fn), _type_hints(fn)


@functools.lru_cache(maxsize=256)
def _cached_signature_and_hints(fn: Callable) -> tuple[inspect.Signature, dict[str, object]]:
    return inspect.signature(fn), _type_hints(fn)


def _type_hints(fn: Callable) -> dict[str, object]:
    """The function's resolved annotations, or {} when they cannot be resolved."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references just mean "don't type-check"
        return {}
