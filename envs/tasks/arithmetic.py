"""Arithmetic word problems solved with the calculator tool.

Levels (for curricula): 1 = one operation on 1-2-digit numbers, 2 = one operation on up to 3-digit numbers,
3 = two operations on 2-digit numbers. Divisions are always exact and subtractions never go negative, so every
answer is a whole number. "mixed" draws from these three.

The hard level (4, or "hard"; `rlagent/Calculator-hard-v0`) is never part of "mixed": word problems with 2-4
operations, prices with cents and percentages (discounts, tips, growth, savings), so answers may be decimals.
"""

from __future__ import annotations

import random

from envs.tasks.task import Task, choose_phrasing, draw_item, make_rng, phrasing_id
from envs.tools.calculator import evaluate, format_number

FAMILY = "arithmetic"
LEVELS = (1, 2, 3)
HARD_LEVEL = 4  # not in LEVELS: "mixed" and curricula keep to 1-3
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
    """A deterministic arithmetic task for (seed, split, difficulty); difficulty may be "mixed" or "hard"."""
    rng = make_rng(rng_or_seed, split)
    level = rng.choice(LEVELS) if difficulty == "mixed" else HARD_LEVEL if difficulty == "hard" else difficulty
    if level == HARD_LEVEL:
        return _hard_task(rng, split)
    if level not in LEVELS:
        raise ValueError(f"difficulty for {FAMILY} must be one of {LEVELS}, {HARD_LEVEL}, 'hard' or 'mixed', "
                         f"got {difficulty!r}")  # fmt: skip
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


# ----- the hard level: word problems with 2-4 operations, decimals and percentages --------------------------------
# Every form: (expression template, phrasings shared by both splits, phrasings held out for the test split). The
# calculator has no "%" operator, so a percentage q% appears in the expression as q/100; the expert makes one
# calculator call with the whole expression, then answers with its result.
HARD_FORMS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "discount": (
        "{n}*{p}*(1-{q}/100)",
        ("A jacket costs ${p} and is {q}% off. How much do {n} jackets cost?",
         "Shoes are priced ${p}, minus a {q}% discount. What do {n} pairs cost?"),
        ("With {q}% off a ${p} lamp, how much would {n} lamps cost?",),
    ),
    "savings": (
        "{w}*{h}*{k}*{q}/100",
        ("Ana earns ${w} an hour for {h} hours a week and saves {q}% of it. How much does she save in {k} weeks?",
         "A worker is paid ${w} per hour, {h} hours a week, and keeps {q}% as savings. Savings after {k} weeks?"),
        ("Saving {q}% of pay at ${w}/hour for {h} hours a week, how much is saved in {k} weeks?",),
    ),
    "stock": (
        "{a}-{b}-{c}+{d}",
        ("A shop has {a} apples, sells {b} in the morning and {c} in the afternoon, then gets {d} more. How many now?",
         "A library owns {a} books; {b} are lost, {c} are given away and {d} are bought. How many books now?"),
        ("Start with {a} cups, break {b}, lend out {c}, then buy {d}. How many cups are left?",),
    ),
    "growth": (
        "{p}*(1+{q}/100)-{m}",
        ("A town of {p} people grows by {q}% and then {m} people move away. What is its population?",
         "A farm has {p} chickens, the flock grows {q}% and {m} are sold. How many chickens remain?"),
        ("After {q}% growth from {p} members and {m} leaving, how many members are there?",),
    ),
    "tip": (
        "{b}*(1+{q}/100)/{n}",
        ("{n} friends share a ${b} bill and add a {q}% tip. How much does each pay?",
         "A ${b} dinner gets a {q}% tip, split evenly among {n} people. What is each share?"),
        ("Splitting ${b} plus a {q}% tip between {n} people, what does each person pay?",),
    ),
    "tickets": (
        "{a}*{x}+{c}*{y}-{d}",
        ("Adult tickets cost ${a}, child tickets ${c}. What do {x} adults and {y} children pay with ${d} off?",
         "Pens cost ${a} and pencils ${c}. How much are {x} pens and {y} pencils with a ${d} coupon?"),
        ("With a ${d} voucher, what do {x} items at ${a} and {y} items at ${c} cost?",),
    ),
}  # fmt: skip
_PERCENTS = (5, 10, 15, 20, 25, 30, 40, 50)


def _hard_task(rng: random.Random, split: str) -> Task:
    form, values = draw_item(rng, split, _hard_item, lambda item: HARD_FORMS[item[0]][0].format(**item[1]))
    expression_template, shared, held_out = HARD_FORMS[form]
    index, template = choose_phrasing(rng, split, shared, held_out)
    expression = expression_template.format(**values)
    return _task(template.format(**values), expression, HARD_LEVEL, split, phrasing_id(form, index, len(shared)))


def _hard_item(rng: random.Random) -> tuple[str, dict[str, str]]:
    """A form and its numbers; prices have cents (.25, .5, .75), every quantity stays positive."""
    form = rng.choice(list(HARD_FORMS))
    q = rng.choice(_PERCENTS)
    if form == "stock":
        a = rng.randint(150, 900)
        values = {"a": a, "b": rng.randint(10, a // 3), "c": rng.randint(10, a // 3), "d": rng.randint(5, 99)}
    elif form == "savings":
        values = {"w": _price(rng, 8, 30), "h": rng.randint(10, 40), "k": rng.randint(2, 12), "q": q}
    elif form == "growth":
        values = {"p": rng.randint(2, 90) * 100, "q": q, "m": rng.randint(10, 199)}
    elif form == "tickets":
        values = {"a": _price(rng, 5, 30), "c": _price(rng, 2, 15), "x": rng.randint(2, 9), "y": rng.randint(2, 9),
                  "d": rng.randint(2, 10)}  # fmt: skip
    else:  # discount, tip
        values = {"p" if form == "discount" else "b": _price(rng, 10, 200), "q": q, "n": rng.randint(2, 8)}
    return form, {key: str(value) for key, value in values.items()}


def _price(rng: random.Random, low: int, high: int) -> str:
    return f"{rng.randint(low, high)}.{rng.choice(['25', '5', '75'])}"
