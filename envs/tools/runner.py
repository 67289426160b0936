"""Runs one tool call with bounds: argument checks, a wall-clock time-out and an output length limit.

Tools are plain Python functions, possibly written by users, so everything that can go wrong (wrong argument
names or types, exceptions, hanging) becomes an `Error: ...` string that the agent sees as the tool's output.
"""

from __future__ import annotations

import inspect
import threading
import typing
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

# Only plain JSON-like annotations are type-checked; anything fancier is left to the tool itself.
_CHECKED_TYPES: dict[object, tuple[type, ...]] = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}


def check_arguments(fn: Callable, arguments: object) -> str | None:
    """None when `arguments` fit `fn`'s signature and simple type hints, else an `Error: ...` message."""
    name = getattr(fn, "__name__", "tool")
    if not isinstance(arguments, dict):
        return f"Error: arguments for {name} must be an object"
    try:
        inspect.signature(fn).bind(**arguments)
    except TypeError as exc:
        return f"Error: bad arguments for {name}: {exc}"
    hints = _type_hints(fn)
    for key, value in arguments.items():
        expected = _CHECKED_TYPES.get(hints.get(key))
        wrong_bool = isinstance(value, bool) and bool not in (expected or ())
        if expected and (not isinstance(value, expected) or wrong_bool):
            return f"Error: argument {key!r} of {name} must be of type {hints[key].__name__}"
    return None


def run_tool(fn: Callable, arguments: dict, timeout_s: float = 1.0, max_output_chars: int = 300) -> tuple[str, bool]:
    """Call `fn(**arguments)` in a worker thread; returns (output, ok) and never raises for tool errors."""
    name = getattr(fn, "__name__", "tool")
    problem = check_arguments(fn, arguments)
    if problem is not None:
        return truncate(problem, max_output_chars), False
    future = _start(fn, arguments, name)
    try:
        exc = future.exception(timeout=timeout_s)  # returns the tool's exception instead of raising it
    except FutureTimeout:
        return truncate(f"Error: {name} timed out after {timeout_s:g} s", max_output_chars), False
    if exc is not None:
        return truncate(f"Error: {name} failed: {type(exc).__name__}: {exc}", max_output_chars), False
    result = future.result()
    return truncate(result if isinstance(result, str) else str(result), max_output_chars), True


def truncate(text: str, max_chars: int) -> str:
    """Cut `text` to `max_chars`, marking the cut with "..." so the agent knows output was lost."""
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - 3)] + "..."[:max_chars]


def _start(fn: Callable, arguments: dict, name: str) -> Future:
    """Run the call in a daemon thread: a hung tool cannot block the episode, nor interpreter exit."""
    future: Future = Future()
    future.set_running_or_notify_cancel()

    def work() -> None:
        try:
            future.set_result(fn(**arguments))
        except BaseException as exc:  # the worker thread must report every failure, not die silently
            future.set_exception(exc)

    threading.Thread(target=work, name=f"tool-{name}", daemon=True).start()
    return future


def _type_hints(fn: Callable) -> dict[str, object]:
    """The function's resolved annotations, or {} when they cannot be resolved."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references just mean "don't type-check"
        return {}
