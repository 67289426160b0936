"""Arithmetic word problems solved with the calculator tool.

Levels (for curricula): 1 = one operation on 1-2-digit numbers, 2 = one operation on up to 3-digit numbers,
3 = two operations on 2-digit numbers. Divisions are always exact and subtractions never go negative, so every
answer is a whole number.
"""

from __future__ import annotations

import random

from envs.tasks.task import Task, choose_phrasing, draw_item, make_rng, phrasing_id
from envs.tools.calculator import evaluate, format_number

FAMILY = "arithmetic"
LEVELS = (1, 2, 3)
_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}

# Per operation: (templates shared by both splits, templates held out for the test split).
ONE_OP_TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "add": (
        ["What is {a} plus {b}?", "Compute {a} + {b}.", "Mia has {a} stamps and gets {b} more. How many now?"],
        ["Find the sum of {a} and {b}.", "A bus has {a} riders and {b} more get on. How many riders?"],
    ),
    "sub": (
        ["What is {a} minus {b}?", "Compute {a} - {b}.", "A tank holds {a} liters and {b} leak out. How many remain?"],
        ["Subtract {b} from {a}.", "Leo had {a} coins and spent {b}. How many coins are left?"],
    ),
    "mul": (
        ["What is {a} times {b}?", "Compute {a} * {b}.", "There are {a} boxes with {b} pens each. How many pens?"],
        ["Multiply {a} by {b}.", "A farm has {a} rows of {b} trees. How many trees?"],
    ),
    "div": (
        ["What is {a} divided by {b}?", "Compute {a} / {b}.", "{a} cookies are shared by {b} kids. How many each?"],
        ["Divide {a} by {b}.", "{a} books fill {b} shelves equally. How many per shelf?"],
    ),
}
TWO_OP_TEMPLATES = (
    ["What is {expr}?", "Compute {expr}.", "Use the calculator to evaluate {expr}."],
    ["Work out the value of {expr}.", "How much is {expr}?"],
)
TWO_OP_FORMS = ["({a}+{b})*{c}", "({a}-{b})*{c}", "{a}*{b}+{c}", "{a}*{b}-{c}", "{a}+{b}-{c}"]


def sample_task(rng_or_seed: random.Random | int, split: str = "train", difficulty: int | str = 1) -> Task:
    """A deterministic arithmetic task for (seed, split, difficulty); difficulty may be "mixed"."""
    rng = make_rng(rng_or_seed, split)
    level = rng.choice(LEVELS) if difficulty == "mixed" else difficulty
    if level not in LEVELS:
        raise ValueError(f"difficulty for {FAMILY} must be one of {LEVELS} or 'mixed', got {difficulty!r}")
    if level == 3:
        return _two_op_task(rng, split)
    return _one_op_task(rng, split, level)


def _one_op_task(rng: random.Random, split: str, level: int) -> Task:
    op, a, b = draw_item(rng, split, lambda r: _one_op_operands(r, 99 if level == 1 else 999), _one_op_key)
    shared, held_out = ONE_OP_TEMPLATES[op]
    index, template = choose_phrasing(rng, split, shared, held_out)
    expression = _one_op_key((op, a, b))
    prompt = template.format(a=a, b=b)
    return _task(prompt, expression, level, split, phrasing_id(op, index, len(shared)))


def _one_op_operands(rng: random.Random, max_operand: int) -> tuple[str, int, int]:
    """(operation, a, b) with an exact quotient for division and a >= b for subtraction."""
    op = rng.choice(list(_SYMBOLS))
    if op == "div":
        divisor = rng.randint(2, min(99, max_operand // 2))
        return op, divisor * rng.randint(2, max_operand // divisor), divisor
    a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
    return (op, max(a, b), min(a, b)) if op == "sub" else (op, a, b)


def _one_op_key(item: tuple[str, int, int]) -> str:
    op, a, b = item
    return f"{a}{_SYMBOLS[op]}{b}"


def _two_op_task(rng: random.Random, split: str) -> Task:
    expression = draw_item(rng, split, _two_op_expression, lambda expr: expr)
    shared, held_out = TWO_OP_TEMPLATES
    index, template = choose_phrasing(rng, split, shared, held_out)
    return _task(template.format(expr=expression), expression, 3, split, phrasing_id("two_ops", index, len(shared)))


def _two_op_expression(rng: random.Random) -> str:
    """Two operations on 1-2-digit numbers; a > b keeps "(a-b)*c" positive."""
    b, c = rng.randint(2, 98), rng.randint(2, 99)
    a = rng.randint(b + 1, 99)
    return rng.choice(TWO_OP_FORMS).format(a=a, b=b, c=c)


def _task(prompt: str, expression: str, level: int, split: str, phrasing: str) -> Task:
    answer = format_number(evaluate(expression))
    return Task(prompt, answer, "number", level, FAMILY, split, expression, phrasing, expression=expression)
