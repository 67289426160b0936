"""The calculator: correct on ordinary expressions, and fast `Error:` strings on hostile ones."""

import time

import pytest
from transformers.utils import get_json_schema

from envs.tools import calculator
from envs.tools.calculator import format_number

CASES = [
    ("23+45", "68"),
    ("99-74", "25"),
    ("2-5", "-3"),
    ("-3", "-3"),
    ("--3", "3"),
    ("+7", "7"),
    ("12*34", "408"),
    ("84/4", "21"),
    ("5/2", "2.5"),
    ("7/2", "3.5"),
    ("1/3", "0.333333333333"),  # 12 significant digits
    ("2/3", "0.666666666667"),
    ("-1/3", "-0.333333333333"),
    ("1/8", "0.125"),
    ("2**10", "1024"),
    ("2**-1", "0.5"),
    ("2**0.5", "1.41421356237"),
    ("1/3000000", "3.33333333333e-7"),  # small values keep their digits (six fixed decimals printed 0)
    ("2**-64", "5.42101086243e-20"),
    ("0.0001", "0.0001"),
    ("1/100000", "1e-5"),  # scientific notation below 1e-4
    ("100000000000+0.5", "100000000000"),  # 12 significant digits: the .5 is the 13th
    ("999999999999.5*1", "1e12"),  # rounds up to 1e12, printed in scientific notation
    ("0.1*3", "0.3"),  # no float noise (0.30000000000000004)
    ("(78+51)*99", "12771"),
    ("2+3*4", "14"),
    ("(2+3)*4", "20"),
    ("0.1+0.2", "0.3"),
    ("1.5*4", "6"),
    ("  17 - 4 \n", "13"),
    ("1e3+1", "1001"),
    ("1000000*1000000", "1000000000000"),
]


@pytest.mark.parametrize(("expression", "expected"), CASES)
def test_calculator_is_correct(expression, expected):
    assert calculator(expression) == expected


HOSTILE = {
    "power tower": "9**9**9**9",
    "huge power": "10**100000",
    "deep parentheses": "(" * 10_000 + "1" + ")" * 10_000,
    "moderately deep parentheses": "(" * 60 + "1" + ")" * 60,
    "import": "__import__('os')",
    "import system": "__import__('os').system('echo hi')",
    "attribute": "(1).__class__",
    "one megabyte": "1+" * 500_000 + "1",
    "name": "x",
    "builtin call": "abs(-3)",
    "lambda": "lambda: 1",
    "list comprehension": "[i for i in range(10**9)]",
    "string": "'a'*10",
    "bool": "True+1",
    "complex": "1j*2",
    "division by zero": "1/0",
    "zero to negative power": "0**-1",
    "big operand": "9" * 30,
    "big product": "999999*999999*999999",
    "negative fractional power": "(-8)**0.5",
    "tiny base huge negative exponent": "0.001**-60",
    "empty": "",
    "syntax": "2+*3",
    "xor": "2^3",
    "floor division by zero": "7//0",
    "modulo": "7%2",
    "not a string": 42,
    "walrus": "(x:=1)",
    "subscript": "[1][0]",
    "arabic-indic digits": "\u0661\u0662+\u0663",
    "fullwidth digits": "\uff11\uff12*\uff13",
    "dunder class": "().__class__",
    "dunder subclasses": "().__class__.__bases__[0].__subclasses__()",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_is_a_fast_error(name):
    start = time.perf_counter()
    output = calculator(HOSTILE[name])
    elapsed = time.perf_counter() - start
    assert output.startswith("Error:"), output
    assert elapsed < 0.1, f"{name} took {elapsed:.3f} s"


def test_unicode_digits_are_named_in_the_error():
    assert calculator("\u0661\u0662+1") == "Error: non-ASCII character U+0661; write numbers with the digits 0-9"


def test_format_number():
    assert format_number(68) == "68"
    assert format_number(2.0) == "2"
    assert format_number(-0.0) == "0"
    assert format_number(-0.0000001) == "-1e-7"
    assert format_number(123.4567891) == "123.4567891"
    assert format_number(1e12) == "1000000000000"  # a whole float prints as an integer
    assert format_number(0.1 + 0.2) == "0.3"
    assert format_number(5e-324) == "4.94065645841e-324"


def test_schema_comes_from_the_docstring():
    schema = get_json_schema(calculator)["function"]
    assert schema["name"] == "calculator"
    assert schema["parameters"]["properties"]["expression"]["type"] == "string"
    assert schema["parameters"]["required"] == ["expression"]


@pytest.mark.parametrize(
    "expression, expected", [("25//4", "6"), ("7.5//2", "3"), ("-7//2", "-4"), ("100//3*3", "99")]
)
def test_floor_division_as_in_gsm8k_annotations(expression, expected):
    assert calculator(expression) == expected


def test_wrapped_environments_pass_gymnasiums_checker_and_rebuild_from_their_spec():
    import warnings

    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import envs  # noqa: F401  (registers the ids)
    from envs.wrappers import PromptInjection, ToolFaults

    wrapped = ToolFaults(PromptInjection(gym.make("rlagent/Calculator-v0"), 0.3, seed=1), 0.2, kind="timeout", seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the environment is different from the unwrapped version": that is the point
        check_env(wrapped, skip_render_check=True)
    rebuilt = gym.make(wrapped.spec)
    assert isinstance(rebuilt, ToolFaults) and (rebuilt.rate, rebuilt.kind, rebuilt.seed) == (0.2, "timeout", 2)
    assert isinstance(rebuilt.env, PromptInjection) and (rebuilt.env.rate, rebuilt.env.seed) == (0.3, 1)
    assert rebuilt.reset(seed=5)[0] == wrapped.reset(seed=5)[0]
