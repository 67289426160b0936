"""The tool runner: argument checks, time-outs, exceptions, output bounds; and tool resolution."""

import multiprocessing
import os
import threading
import time

import pytest

from envs.tools import TOOLS, calculator, resolve_tool, run_tool


def slow_tool(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "done"


def failing_tool(x: int) -> str:
    """Always raises.

    Args:
        x: Anything.
    """
    raise RuntimeError(f"boom {x}")


def chatty_tool() -> str:
    """Returns a lot of text."""
    return "y" * 100_000


def test_runs_a_tool():
    assert run_tool(calculator, {"expression": "23+45"}) == ("68", True)


def test_time_out_returns_an_error_within_bound():
    start = time.perf_counter()
    output, ok = run_tool(slow_tool, {"seconds": 10}, timeout_s=0.2)
    elapsed = time.perf_counter() - start
    assert not ok and output.startswith("Error:") and "timed out" in output
    assert elapsed < 0.5


@pytest.mark.parametrize(
    "arguments",
    [{"expr": "1+1"}, {}, {"expression": "1", "extra": 2}, {"expression": 5}, {"expression": ["1"]}, "1+1", None],
)
def test_bad_arguments_are_errors(arguments):
    output, ok = run_tool(calculator, arguments)
    assert not ok and output.startswith("Error:")


def test_type_checks_follow_the_hints():
    assert run_tool(slow_tool, {"seconds": 0})[1], "an int is a fine float"
    assert not run_tool(slow_tool, {"seconds": True})[1], "a bool is not a number here"
    assert not run_tool(failing_tool, {"x": 1.5})[1]


def test_exceptions_become_errors():
    output, ok = run_tool(failing_tool, {"x": 3})
    assert not ok and output == "Error: failing_tool failed: RuntimeError: boom 3"


def test_output_is_truncated():
    output, ok = run_tool(chatty_tool, {}, max_output_chars=50)
    assert ok and len(output) == 50 and output.endswith("...")


def test_resolve_tool_accepts_names_paths_and_callables():
    assert resolve_tool("calculator") is TOOLS["calculator"]
    assert resolve_tool("envs.tools.search:search") is TOOLS["search"]
    assert resolve_tool(slow_tool) is slow_tool
    with pytest.raises(ValueError, match="unknown tool 'calc'"):
        resolve_tool("calc")
    with pytest.raises(ValueError, match="does not name a function"):
        resolve_tool("envs.tools:nothing_here")


def thread_name_tool() -> str:
    """Returns the name and id of the thread it runs on."""
    import threading

    return f"{threading.current_thread().name}:{threading.get_ident()}"


@pytest.fixture
def fresh_pool(monkeypatch):
    """A pool of its own: idle workers left by other tests (timed-out calls that finished later) must not count."""
    from envs.tools import runner

    monkeypatch.setattr(runner, "_WORKERS", runner._WorkerPool())


def test_back_to_back_calls_reuse_one_worker_thread(fresh_pool):
    first, ok = run_tool(thread_name_tool, {})
    assert ok and first.startswith("tool-worker:")
    assert {run_tool(thread_name_tool, {})[0] for _ in range(20)} == {first}


def test_a_hung_tool_does_not_block_the_next_calls(fresh_pool):
    gate = threading.Event()

    def stuck() -> str:
        """Blocks until released."""
        gate.wait(5)
        return "late"

    try:
        hung_on = run_tool(thread_name_tool, {})[0]
        assert run_tool(stuck, {}, timeout_s=0.1) == ("Error: stuck timed out after 0.1 s", False)
        start = time.perf_counter()
        output, ok = run_tool(calculator, {"expression": "6*7"}, timeout_s=2.0)
        assert (output, ok) == ("42", True) and time.perf_counter() - start < 1.0  # the stuck call waits 5 s
        assert run_tool(thread_name_tool, {})[0] != hung_on  # the stuck worker is not handed new calls
    finally:
        gate.set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_tools_work_in_a_forked_child():
    run_tool(calculator, {"expression": "1+1"})  # the parent now has an idle worker, which a child would not
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(run_tool, (calculator, {"expression": "2+3"}, 2.0)) == ("5", True)


def decimal_tool(precision: int) -> str:
    """Divides 1 by 7 with decimal, optionally changing the context's precision first.

    Args:
        precision: New precision, or 0 to keep the current one.
    """
    import decimal

    if precision:
        decimal.getcontext().prec = precision
    return str(decimal.Decimal(1) / decimal.Decimal(7))


def test_a_call_does_not_leak_context_into_the_next():
    assert run_tool(decimal_tool, {"precision": 3}) == ("0.143", True)
    assert run_tool(decimal_tool, {"precision": 0}) == ("0.1428571428571428571428571429", True)


class NoSignature:
    """A callable whose signature cannot be read."""

    @property
    def __signature__(self):
        raise TypeError("no signature here")

    def __call__(self, **kwargs) -> str:
        return "called"


def test_a_tool_without_a_readable_signature_is_an_error_not_a_crash():
    output, ok = run_tool(NoSignature(), {"x": 1})
    assert not ok and output.startswith("Error: bad arguments for tool")


def test_an_error_string_from_the_tool_is_a_failed_call():
    assert run_tool(calculator, {"expression": "9**9**9"}) == ("Error: exponent larger than 64", False)
    assert run_tool(calculator, {"expression": "1/3000000"}) == ("3.33333333333e-7", True)


def huge_int_tool() -> int:
    """Returns an int too long for str() (Python limits int-to-str conversion to 4300 digits)."""
    return 10**5000


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def unprintable_tool() -> object:
    """Returns an object whose str() raises."""
    return BadStr()


def raises_unprintable_tool() -> str:
    """Raises an exception whose str() raises."""
    raise BadStr()


def test_results_and_exceptions_that_cannot_be_printed_are_errors():
    for tool in (huge_int_tool, unprintable_tool):
        output, ok = run_tool(tool, {})
        assert (output, ok) == (f"Error: {tool.__name__} returned a value that cannot be printed", False)
    assert run_tool(raises_unprintable_tool, {}) == ("Error: raises_unprintable_tool failed: BadStr: ", False)
