"""Fuzzing: both environments under >= 10,000 malformed actions, and the tools under hostile inputs.

On every step: no exception escapes, the observation is a str in the observation space, the reward is a finite float
equal to the sum of its components, terminated/truncated are bools, info is a dict with the documented keys, the
recorded assistant message fits the action space, and the step returns well within the tool time-out. On every tool
call: a str within the tool's output bound, a number the grader reads back exactly or an "Error:" line, in bounded
time. Hypothesis runs derandomized (the same examples on every machine) with no example database, all in this process
and without a model, so the file takes seconds.

Each environment example is one drawn action plus the names of two hostile tool inputs; `mutations` turns it into
ACTIONS_PER_EXAMPLE actions with the classic fuzzing edits (cut, wrapped in tags, unclosed, repeated, control
characters, at / over / far over the length limit). Drawing every action separately costs hypothesis ~1 ms each.
"""

import json
import math
import re
import time
from collections import Counter

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs  # registers the environments for gym.make
from envs.env import MAX_ACTION_CHARS
from envs.grading import find_numbers
from envs.parsing import CLOSE_TAG, OPEN_TAG, format_tool_call
from envs.tools import calculator, run_tool, search
from envs.tools.calculator import MAX_OUTPUT_CHARS as CALCULATOR_MAX_OUTPUT
from envs.tools.search import MAX_OUTPUT_CHARS as SEARCH_MAX_OUTPUT

MIN_ACTIONS = 10_000
# Tools answer in microseconds; a step that reached the env's 1 s tool time-out would mean a call hung.
STEP_BOUND_S = 1.0
TOOL_BOUND_S = 0.25
INFO_KEYS = {"messages", "env_messages", "reward_components", "success", "tool_calls", "invalid_tool_call",
             "action_truncated", "turn"}  # fmt: skip
NUMBER_OUTPUT = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")

# ----- hostile inputs ----------------------------------------------------------------------------------------------
# Big inputs are drawn by NAME and built inside the tests: hypothesis prints a failing example's arguments in full.

MEGABYTE = "x" * 10**6
HOSTILE_EXPRESSIONS = {
    "tower 9**9**9": "9**9**9", "tower 10**10**10": "10**10**10", "tower of four": "9**9**9**9", "2**64": "2**64",
    "2**-1074": "2**-1074", "overflow": "1e308*10", "underflow": "1e-308/1e308", "inf literal": "1e999",
    "zero to negative power": "0**-1", "negative fractional power": "(-8)**0.5", "division by zero": "1/0",
    "10k parentheses": "(" * 10_000 + "1" + ")" * 10_000, "1.5k parentheses": "(" * 1_500 + "1" + ")" * 1_500,
    "100k brackets": "[" * 100_000, "1 MB sum": "1+" * 500_000 + "1", "1 MB name": MEGABYTE,
    "4400 digits": "9" * 4_400, "3000 minus signs": "-" * 3_000 + "1", "alternating signs": "+-" * 1_000 + "1",
    "arabic-indic digits": "\u0661\u0662\u0663+\u0664", "fullwidth digits": "\uff11\uff12\uff13*\uff12",
    "devanagari digits": "\u0968\u0966", "superscript and fraction": "\u00b2+\u00bd",
    "import": "__import__('os')", "import system": "__import__('os').system('true')", "class": "().__class__",
    "subclasses": "().__class__.__bases__[0].__subclasses__()", "int class": "(1).__class__", "lambda": "lambda: 1",
    "comprehension": "[i for i in range(10**9)]", "walrus": "(x:=1)", "conditional": "1 if 1 else 2", "invert": "~1",
    "True": "True", "None": "None", "string": "'a'*9", "bytes": "b'1'", "complex": "1j", "long hex": "0x" + "f" * 100,
    "underscores": "1_0" * 50, "nul": "\x00", "right-to-left override": "\u202e1+1", "newlines": "1\n+\n1",
    "empty": "", "space": " ", "tab": "\t",
}  # fmt: skip
HOSTILE_QUERIES = {
    "1 MB": MEGABYTE, "200 chars": "a" * 200, "201 chars": "a" * 201, "empty": "", "spaces": "   ",
    "punctuation": "?!",
    "stop-words only": "in the of", "nonsense": "zzz in qqq", "nonsense question": "where was zzz born",
    "nul": "\x00" * 100, "tag characters": "\U000e0001" * 40, "arabic-indic digits": "\u0661\u0662",
    "fullwidth letters": "\uff21\uff22", "import": "__import__('os')", "class": "().__class__",
    "kelvin sign": "K\u212a", "sharp s": "stra\u00dfe" * 20,
}  # fmt: skip

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
EXPRESSION_PIECES = list("0123456789+-*/().e_ ,[]{}'\":=<>~%^@!jx") + [
    "**", "//", "9**9", "__", "import", "class", "\u0661", "\uff11", "\x00", "\n", "lambda", "1e308", "(" * 30,
]  # fmt: skip
EXPRESSIONS = st.one_of(
    st.lists(st.sampled_from(EXPRESSION_PIECES), max_size=30).map("".join),
    st.lists(st.integers(0, 99), min_size=2, max_size=6).map(lambda xs: "**".join(map(str, xs))),
    st.text(max_size=40),
)
QUERIES = st.text(max_size=40) | st.lists(st.sampled_from(["in", "the", "born", "zzz", "Seva", "of"])).map(" ".join)

# ----- malformed actions -------------------------------------------------------------------------------------------

TOOL_NAMES = st.sampled_from(["calculator", "search", "", "CALCULATOR", "python", "__import__"]) | st.text(max_size=8)
ARGUMENTS = st.dictionaries(st.sampled_from(["expression", "query", "x", ""]) | st.text(max_size=5),
                            JSON_VALUES | EXPRESSIONS | QUERIES, max_size=3)  # fmt: skip
GOOD_CALLS = st.sampled_from([
    format_tool_call("calculator", {"expression": "23+45"}), format_tool_call("search", {"query": "Seva"}),
])  # fmt: skip
FRAGMENTS = st.sampled_from(
    [OPEN_TAG, CLOSE_TAG, "{", "}", "[", "]", '"name": ', '"arguments": ', '"calculator"', '"search"', ",", ":", "\n",
     "The answer is ", "9**9**9", "\x00", "\r", "\x1b[31m", "\u200b", "\ufeff", "\U0001f600"]
)  # fmt: skip
ODD_NUMBERS = st.one_of(
    st.sampled_from(["\u0661\u0662\u0663", "\uff16\uff18", "1e3", "1E-7", "-0", "1,,000", "1,000,00", "nan",
                     "inf", "1e999", "1e-99999", "9" * 400, "0x10", "\u00bd", "\u00b2", "6 8", "sixty-eight", "--68",
                     "6.8.1"]),
    st.integers().map(str),
    st.floats().map(repr),
)  # fmt: skip
ANSWER_PREFIXES = st.sampled_from(["The answer is ", "", "answer: ", "= ", "The answer is Seva and ", "\n\n"])
BASE_ACTIONS = st.one_of(
    st.text(max_size=60),  # any Unicode, control characters included
    st.builds(format_tool_call, TOOL_NAMES, ARGUMENTS),  # unknown tools, wrong argument names and types
    st.builds(lambda e: format_tool_call("calculator", {"expression": e}), EXPRESSIONS),
    st.builds(lambda q: format_tool_call("search", {"query": q}), QUERIES),
    st.builds(lambda value: f"{OPEN_TAG}{json.dumps(value)}{CLOSE_TAG}", JSON_VALUES),  # wrong-typed bodies
    st.builds(lambda name, value: OPEN_TAG + json.dumps({"name": name, "arguments": value}) + CLOSE_TAG,
              JSON_VALUES, JSON_VALUES),
    st.tuples(GOOD_CALLS, st.integers(0, 80)).map(lambda t: t[0][: t[1]]),  # truncated calls
    st.tuples(st.sampled_from("[{"), st.sampled_from([1, 10, 1_000, 4_000])).map(
        lambda t: OPEN_TAG + t[0] * t[1] + CLOSE_TAG  # nested brackets (deep enough for a RecursionError)
    ),
    st.tuples(st.sampled_from([OPEN_TAG, CLOSE_TAG, OPEN_TAG + CLOSE_TAG]), st.integers(1, 30)).map(
        lambda t: t[0] * t[1]  # repeated tags
    ),
    st.lists(FRAGMENTS | GOOD_CALLS | st.text(max_size=6), max_size=12).map("".join),
    st.builds(lambda prefix, number: f"{prefix}{number}.", ANSWER_PREFIXES, ODD_NUMBERS),  # answers in odd forms
)  # fmt: skip


# Built once: JSON-encoding the 1 MB arguments for every example would dominate the run time.
HOSTILE_CALLS = {
    **{
        ("calculator", name): format_tool_call("calculator", {"expression": e})
        for name, e in HOSTILE_EXPRESSIONS.items()
    },
    **{("search", name): format_tool_call("search", {"query": query}) for name, query in HOSTILE_QUERIES.items()},
}


def mutations(base: str, expression: str, query: str) -> list[str]:
    """The actions played for one example: edits of `base`, then the hostile calls named `expression` and `query`."""
    return [
        base,
        base[: len(base) // 2],  # cut short
        OPEN_TAG + base + CLOSE_TAG,  # as a call body
        base.replace(CLOSE_TAG, ""),  # unclosed
        base * 3,  # repeated
        "\x00\x1b".join(base[:200]),  # control characters between every character
        base.ljust(MAX_ACTION_CHARS, "\u00e9"),  # exactly at the limit (Unicode padding)
        (base or "y") * (MAX_ACTION_CHARS // max(1, len(base)) + 1),  # just over the limit
        base + MEGABYTE,  # 1 MB
        HOSTILE_CALLS["calculator", expression],
        HOSTILE_CALLS["search", query],
    ]


ACTIONS_PER_EXAMPLE = len(mutations("", "empty", "empty"))

# ----- the environments --------------------------------------------------------------------------------------------


def check_step(env, action: str, result: tuple, elapsed: float) -> None:
    """Every invariant of one step's result."""
    observation, reward, terminated, truncated, info = result
    assert isinstance(observation, str) and env.observation_space.contains(observation), repr(observation[:80])
    assert type(reward) is float and math.isfinite(reward)
    assert type(terminated) is bool and type(truncated) is bool
    assert isinstance(info, dict) and set(info) == INFO_KEYS
    assert reward == pytest.approx(sum(info["reward_components"].values()), abs=1e-12)
    assistant = info["messages"][-len(info["env_messages"]) - 1]
    assert assistant["role"] == "assistant" and len(assistant["content"]) <= MAX_ACTION_CHARS
    assert info["action_truncated"] == (len(action) > MAX_ACTION_CHARS)
    assert elapsed < STEP_BOUND_S, f"step took {elapsed:.3f} s on {action[:80]!r}"


N_EXAMPLES = -(-MIN_ACTIONS // ACTIONS_PER_EXAMPLE)  # enough drawn actions for MIN_ACTIONS steps


def test_both_environments_survive_malformed_actions():
    environments = {env_id: gym.make(env_id, render_mode="ansi") for env_id in envs.ENV_IDS}
    counts: Counter = Counter()

    @settings(max_examples=N_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        env_id=st.sampled_from(envs.ENV_IDS),
        seed=st.integers(0, 2**31 - 1),
        base=BASE_ACTIONS,
        expression=st.sampled_from(sorted(HOSTILE_EXPRESSIONS)),
        query=st.sampled_from(sorted(HOSTILE_QUERIES)),
    )
    def drive(env_id, seed, base, expression, query):  # fmt: skip
        env = environments[env_id]
        env.reset(seed=seed)
        for action in mutations(base, expression, query):
            start = time.perf_counter()
            result = env.step(action)
            check_step(env, action, result, time.perf_counter() - start)
            counts[env_id] += 1
            counts["invalid"] += result[4]["invalid_tool_call"]
            if result[2] or result[3]:
                assert isinstance(env.render(), str)
                env.reset(seed=seed + counts[env_id])

    drive()
    assert counts[envs.ENV_IDS[0]] + counts[envs.ENV_IDS[1]] >= MIN_ACTIONS, counts
    assert min(counts[env_id] for env_id in envs.ENV_IDS) >= MIN_ACTIONS // 4, counts  # both envs were driven
    assert counts["invalid"] >= MIN_ACTIONS // 2, counts  # most actions really were malformed


# ----- the tools ---------------------------------------------------------------------------------------------------


def timed(fn, *args):
    """fn(*args), asserting it returned within TOOL_BOUND_S."""
    start = time.perf_counter()
    output = fn(*args)
    elapsed = time.perf_counter() - start
    assert elapsed < TOOL_BOUND_S, f"{getattr(fn, '__name__', fn)} took {elapsed:.3f} s on {str(args)[:80]}"
    return output


def check_calculator_output(output: str) -> None:
    """An "Error:" line, or a number in the format the grader reads back as exactly that number."""
    assert isinstance(output, str) and output.isascii() and "\n" not in output
    if output.startswith("Error:"):
        assert len(output) < 120, output  # one short line
        return
    assert NUMBER_OUTPUT.fullmatch(output) and len(output) <= CALCULATOR_MAX_OUTPUT, output
    assert math.isfinite(float(output)) and find_numbers(output) == [float(output)]


@settings(max_examples=600, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(EXPRESSIONS)
def test_calculator_on_generated_expressions(expression):
    check_calculator_output(timed(calculator, expression))


@settings(max_examples=100, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 12_000), st.sampled_from(["()", "[]", "{}"]))
def test_calculator_on_nested_brackets(depth, brackets):
    check_calculator_output(timed(calculator, brackets[0] * depth + "1" + brackets[1] * depth))


@pytest.mark.parametrize("name", sorted(HOSTILE_EXPRESSIONS))
def test_calculator_on_hostile_expressions(name):
    check_calculator_output(timed(calculator, HOSTILE_EXPRESSIONS[name]))


@settings(max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(QUERIES)
def test_search_on_generated_queries(query):
    output = timed(search, query)
    assert isinstance(output, str) and 0 < len(output) <= SEARCH_MAX_OUTPUT


@pytest.mark.parametrize("name", sorted(HOSTILE_QUERIES))
def test_search_on_hostile_queries(name):
    output = timed(search, HOSTILE_QUERIES[name])
    assert isinstance(output, str) and 0 < len(output) <= SEARCH_MAX_OUTPUT
    if name in ("stop-words only", "nonsense", "nonsense question"):
        assert output.startswith("No results")


@settings(max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([calculator, search]), ARGUMENTS)
def test_run_tool_on_arguments_of_any_shape(tool, arguments):
    output, ok = timed(run_tool, tool, arguments, 1.0, 300)
    assert isinstance(output, str) and len(output) <= 300 and type(ok) is bool
    assert ok == (not output.startswith("Error:"))


# ----- user tools with hostile results -----------------------------------------------------------------------------


def power_of_ten(n: int) -> int:
    """10**n: past 4300 digits Python refuses to print it.

    Args:
        n: The exponent.
    """
    return 10 ** min(abs(n), 10_000)


def echo(text: str, times: int) -> str:
    """The text repeated (up to a megabyte).

    Args:
        text: What to repeat.
        times: How often.
    """
    return text * max(0, min(times, 10**6 // max(1, len(text))))


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def broken(kind: str) -> object:
    """Fails in odd ways.

    Args:
        kind: "raise", "unprintable", "none" or anything else.
    """
    if kind == "raise":
        raise Unprintable()
    return Unprintable() if kind == "unprintable" else None


USER_TOOL_CALLS = st.one_of(
    st.builds(lambda n: format_tool_call("power_of_ten", {"n": n}), st.integers(-(10**5), 10**5)),
    st.builds(lambda t, k: format_tool_call("echo", {"text": t, "times": k}), st.text(max_size=8), st.integers()),
    st.builds(lambda k: format_tool_call("broken", {"kind": k}), st.sampled_from(["raise", "unprintable", "none"])),
    st.builds(format_tool_call, st.sampled_from(["power_of_ten", "echo", "broken"]), ARGUMENTS),
)


def test_an_environment_with_user_tools_survives_what_they_return():
    env = gym.make("rlagent/Calculator-v0", tools=["calculator", power_of_ten, echo, broken], max_turns=10**9)
    env.reset(seed=0)

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(USER_TOOL_CALLS)
    def drive(action):
        start = time.perf_counter()
        check_step(env, action, env.step(action), time.perf_counter() - start)

    drive()
