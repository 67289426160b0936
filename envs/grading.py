"""Checks a final answer against the task's target.

Numbers: the LAST number in the text must equal the target (commas, decimals and the calculator's scientific notation
such as "3.3e-7" parsed; relative tolerance 1e-6),
so "The answer is 12" is wrong for 120 and a hedge that ends on a different number is wrong. Names: the LAST
known entity name mentioned (case and punctuation ignored) must be the target, so answering with the bridge
entity of a two-hop question, or listing the right name before a wrong one, is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from envs.tasks.task import Task
from envs.tools.knowledge_base import get_knowledge_base, tokenize

# Only the end of a reply can hold its final answer; bounding it keeps grading fast on hostile input.
MAX_GRADED_CHARS = 2000
RELATIVE_TOLERANCE = 1e-6
# A minus sign counts only when it cannot be a binary operator ("5-3" is 5 and 3; "is -3" is -3).
NUMBER = re.compile(r"(?:(?<![\w)\].])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


def find_numbers(text: str) -> list[float]:
    """Every number in `text`, in order; "1,234.5" and "3.3e-7" are one number each."""
    return [float(match.replace(",", "")) for match in NUMBER.findall(text)]


def numbers_match(value: float, target: float) -> bool:
    """Equal within a relative tolerance (absolute near zero)."""
    return abs(value - target) <= RELATIVE_TOLERANCE * max(1.0, abs(target))


def last_name_mentioned(text: str, names: Iterable[str]) -> tuple[str, ...] | None:
    """The normalised tokens of the last name in `names` that occurs in `text` (longest wins at a tie)."""
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for name in names:
        tokens = tuple(tokenize(name))
        if tokens:
            by_first.setdefault(tokens[0], []).append(tokens)
    words = tokenize(text)
    for start in range(len(words) - 1, -1, -1):
        found = [name for name in by_first.get(words[start], []) if tuple(words[start : start + len(name)]) == name]
        if found:
            return max(found, key=len)
    return None


def is_correct(task: Task, text: str, known_names: Iterable[str] | None = None) -> bool:
    """Whether the final answer `text` solves `task`; `known_names` defaults to the knowledge base's names."""
    tail = text[-MAX_GRADED_CHARS:]
    if task.answer_kind == "number":
        numbers = find_numbers(tail)
        return bool(numbers) and numbers_match(numbers[-1], float(task.answer))
    names = list(get_knowledge_base().names if known_names is None else known_names) + [task.answer]
    return last_name_mentioned(tail, names) == tuple(tokenize(task.answer))
