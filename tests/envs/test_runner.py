"""The tool runner: argument checks, time-outs, exceptions, output bounds; and tool resolution."""

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
