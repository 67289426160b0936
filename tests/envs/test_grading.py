"""Final-answer checking: last number for numeric targets, last known name for name targets."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.grading import find_numbers, is_correct
from envs.tasks import Task
from envs.tools.calculator import format_number
from envs.tools.knowledge_base import get_knowledge_base


def task(answer, kind):
    return Task("q?", answer, kind, 1, "arithmetic" if kind == "number" else "knowledge", "test", "k", "p/0")


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        ("The answer is 68.", "68", True),
        ("68", "68", True),
        ("The answer is 12", "120", False),
        ("The answer is 120", "12", False),
        ("The answer is 1,234.", "1234", True),
        ("The answer is 2.5", "2.5", True),
        ("The answer is 2.50000001", "2.5", True),
        ("The answer is 1e3.", "1000", True),  # the calculator's scientific notation
        ("The answer is 3.33333333333e-7", "0.000000333333333333", True),
        ("The answer is 1.2E5", "120000", True),
        ("The answer is 1e3", "3", False),
        ("The answer is -3.", "-3", True),
        ("5-3 gives 2", "2", True),
        ("It is 68, or maybe 69.", "68", False),
        ("no number here", "68", False),
        ("", "68", False),
    ],
)
def test_numbers(text, target, expected):
    assert is_correct(task(target, "number"), text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is Thatu.", True),
        ("the answer is thatu", True),
        ("THATU!", True),
        ("The answer is Seva.", False),
        ("Thatu or Seva", False),
        ("Not Seva but Thatu.", True),
        ("The answer is Thatus.", False),
        ("", False),
    ],
)
def test_names(text, expected):
    assert is_correct(task("Thatu", "name"), text, known_names=["Thatu", "Seva"]) is expected


def test_names_default_to_the_knowledge_base():
    city = get_knowledge_base().of_kind("city")[0]
    country = city.facts["country"]
    assert is_correct(task(city.name, "name"), f"The answer is {city.name}.")
    assert not is_correct(task(city.name, "name"), f"{city.name} is in {country}")
    assert is_correct(task(country, "name"), f"{city.name} is in {country}")


def test_find_numbers():
    assert find_numbers("1,234.5 and 12,345 then 7.") == [1234.5, 12345.0, 7.0]
    assert find_numbers("5e-7, 2E+3, 1e12 and 3-2") == [5e-7, 2e3, 1e12, 3.0, 2.0]


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.floats(-1e12, 1e12, allow_nan=False) | st.integers(-(10**12), 10**12))
def test_a_calculator_result_copied_as_the_answer_reads_back_as_its_value(value):
    shown = format_number(value)
    read = find_numbers(f"The answer is {shown}.")[-1]
    # 12 significant digits: rounding moves the value by at most half a unit in the 12th digit, i.e. by 5e-12 of
    # it; the 0.0001 allows for the float parse's own rounding (~1e-16).
    assert abs(read - value) <= 5.0001e-12 * abs(value)
    assert is_correct(task(shown, "number"), f"The answer is {shown}.")
