"""Preference pairs built by hand for the reward-model tests: addition tasks solved with the calculator tool.

chosen = the correct episode (call, result, right answer); rejected = the same task failed in one of three ways.
"""

from __future__ import annotations

import json
import random

from tests.conftest import CALCULATOR_SCHEMA, addition_conversation


def failed_episode(a: int, b: int, how: str, rng: random.Random) -> list[dict]:
    """A failed attempt at `a + b`: a wrong answer after the tool result, a guess without the tool, or a bad call."""
    messages = addition_conversation(a, b)["messages"]
    wrong = a + b + rng.choice([-1, 1]) * rng.randint(1, 9)
    if how == "wrong_answer":
        return messages[:3] + [{"role": "assistant", "content": f"The answer is {wrong}."}]
    if how == "guess":
        return messages[:1] + [{"role": "assistant", "content": f"The answer is {wrong}."}]
    body = json.dumps({"name": "calculator", "arguments": {"expression": f"{a}+{b}"}})
    call = f"<tool_call>{body[:-1]}</tool_call>"  # the closing brace is missing
    return messages[:1] + [{"role": "assistant", "content": call}]


def addition_pairs(n: int, seed: int = 0, prompt_split: bool = True) -> list[dict]:
    """`n` pairs; with prompt_split the user turn is the shared `prompt` (TRL's explicit-prompt format)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        chosen = addition_conversation(a, b)["messages"]
        rejected = failed_episode(a, b, ["wrong_answer", "guess", "malformed"][i % 3], rng)
        if prompt_split:
            pairs.append(
                {"prompt": chosen[:1], "chosen": chosen[1:], "rejected": rejected[1:], "tools": [CALCULATOR_SCHEMA]}
            )
        else:
            pairs.append({"chosen": chosen, "rejected": rejected, "tools": [CALCULATOR_SCHEMA]})
    return pairs


def write_pairs(path, pairs: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair) + "\n")
    return str(path)
