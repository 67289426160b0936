"""Preference pairs: reading TRL-style JSONL with line-numbered errors, and rule-built negatives.

A pair is `{"prompt": [msgs], "chosen": [msgs], "rejected": [msgs], "tools": [...]}` (TRL's explicit prompt:
continuations of a shared prompt) or `{"chosen": [msgs], "rejected": [msgs]}` (TRL's implicit prompt: whole
conversations whose shared prefix is the prompt; kept whole, as the reward model scores whole conversations), as in
TRL's conversational preference datasets, from any source rlagent.common.data.iter_records reads (JSONL, Parquet, JSON,
a save_to_disk folder).
Optional fields: `tools` (JSON schemas), `margin` (a number, TRL's per-pair margin), `kind` (where the pair came
from); other fields are ignored.

Rule-built negatives take a successful conversation and break it in one known way, giving a rejected conversation
that differs from the chosen one only in that way (see RULES).
"""

from __future__ import annotations

import copy
import json
import math
import random
import re

from rlagent.common.data import DataError, check_messages, check_tools, iter_records

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
NAME = re.compile(r"\b[A-Z][a-z]+\b")


def read_pairs(path: str) -> list[dict]:
    """Validated pairs from JSONL, a Parquet/JSON/Arrow file or a save_to_disk folder
    (rlagent.common.data.iter_records); any problem raises DataError naming the file, line (or row) and field."""
    pairs = []
    for where, obj in iter_records(path):
        pairs.append(check_pair(obj, where))
    if not pairs:
        raise DataError(f"{path}: no preference pairs found (the file is empty or blank)")
    return pairs


def check_pair(obj: dict, where: str) -> dict:
    """One pair in normal form: prompt ([] when absent), chosen, rejected, tools (None when absent), margin, kind."""
    for name in ("chosen", "rejected"):
        if name not in obj:
            raise DataError(f"{where}: missing field '{name}'")
        check_messages(obj[name], where, name)
    if "prompt" in obj:
        check_messages(obj["prompt"], where, "prompt")
    if obj["chosen"] == obj["rejected"]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are identical")
    tools = check_tools(obj.get("tools"), where)
    margin = obj.get("margin")
    if margin is not None and not _is_finite_number(margin):
        raise DataError(f"{where}: 'margin' must be a finite number, got {margin!r:.40}")
    pair = {"prompt": obj.get("prompt", []), "chosen": obj["chosen"], "rejected": obj["rejected"], "tools": tools}
    if margin is not None:
        pair["margin"] = float(margin)
    pair["kind"] = str(obj.get("kind", "file"))
    return pair


def _is_finite_number(value) -> bool:
    """JSON allows huge integers and Python's reader NaN/Infinity; a margin must be an ordinary float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def pair_conversations(pair: dict) -> tuple[list[dict], list[dict]]:
    """(prompt + chosen, prompt + rejected): the two whole conversations the reward model scores."""
    prompt = pair.get("prompt") or []
    return prompt + pair["chosen"], prompt + pair["rejected"]


# ---------------------------------------------------------------------------------------------------------------------
# Rule-built negatives. Each takes a successful conversation (ending in the final answer) and returns a broken copy,
# or None when the rule does not apply (e.g. no tool call to remove).


def _final_answer(messages: list[dict]) -> int | None:
    """Index of the final answer: a last assistant message with text and no tool calls."""
    last = messages[-1] if messages else {}
    if last.get("role") == "assistant" and not last.get("tool_calls") and isinstance(last.get("content"), str):
        return len(messages) - 1
    return None


def _with_answer(messages: list[dict], index: int, start: int, end: int, value: str) -> list[dict]:
    out = copy.deepcopy(messages)
    content = out[index]["content"]
    out[index]["content"] = content[:start] + value + content[end:]
    return out


def _other_number(text: str, rng: random.Random, spread: int) -> str:
    """A different number with the same formatting (integer or decimals), at most `spread`·|x| (≥ 10) away."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    value = float(text)
    reach = max(10.0, abs(value) * spread)
    while True:
        shifted = value + rng.uniform(-reach, reach)
        candidate = f"{abs(shifted) if value >= 0 else shifted:.{decimals}f}"  # counts stay non-negative
        if candidate != text and float(candidate) != value:
            return candidate


def wrong_final_number(messages: list[dict], rng: random.Random) -> list[dict] | None:
    """The last number in the final answer is changed slightly (68 -> 71): right procedure, wrong result."""
    index = _final_answer(messages)
    matches = list(NUMBER.finditer(messages[index]["content"])) if index is not None else []
    if not matches:
        return None
    match = matches[-1]
    value = _other_number(match.group(), rng, spread=0)
    return _with_answer(messages, index, match.start(), match.end(), value)


def without_tool_calls(messages: list[dict], rng: random.Random) -> list[dict] | None:
    """Every tool call and tool reply removed, the final answer kept: a guess (even a lucky one) is still a guess."""
    kept = [m for m in messages if not m.get("tool_calls") and m.get("role") != "tool"]
    if len(kept) == len(messages) or _final_answer(messages) is None:
        return None
    return copy.deepcopy(kept)


def malformed_tool_call(messages: list[dict], rng: random.Random) -> list[dict] | None:
    """The first tool call written as broken JSON text; the rest unchanged, so only the call's syntax differs."""
    for i, message in enumerate(messages):
        if message.get("role") == "assistant" and message.get("tool_calls"):
            call = message["tool_calls"][0]
            function = call.get("function", call)
            arguments = function.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    pass
            body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
            broken = rng.choice([body[:-1], body.replace('"', "'"), body.replace('"arguments"', '"args"')])
            out = copy.deepcopy(messages)
            out[i] = {
                "role": "assistant",
                "content": (message.get("content") or "") + f"<tool_call>{broken}</tool_call>",
            }
            return out
    return None


def ignoring_tool_result(messages: list[dict], rng: random.Random) -> list[dict] | None:
    """The final answer taken from the question instead of the tool results: one of the question's numbers (or,
    failing that, a number of another size), or a name from the question."""
    index = _final_answer(messages)
    tool_text = " ".join(m.get("content") or "" for m in messages if m.get("role") == "tool")
    if index is None or not tool_text:
        return None
    content = messages[index]["content"]
    question = " ".join(m.get("content") or "" for m in messages if m.get("role") == "user")
    numbers = list(NUMBER.finditer(content))
    if numbers:
        match = numbers[-1]
        decoys = sorted({n for n in NUMBER.findall(question) if n not in tool_text and n != match.group()})
        value = rng.choice(decoys) if decoys else match.group()
        while value in tool_text or value == match.group():
            value = _other_number(match.group(), rng, spread=3)
        return _with_answer(messages, index, match.start(), match.end(), value)
    names = [m for m in NAME.finditer(content) if m.group() in tool_text]
    decoys = sorted({n for n in NAME.findall(question) if n not in tool_text})
    if not names or not decoys:
        return None
    match = names[-1]
    return _with_answer(messages, index, match.start(), match.end(), rng.choice(decoys))


def mistyped_argument(messages: list[dict], rng: random.Random) -> list[dict] | None:
    """A number from the question copied wrong into the first tool call (12+48 -> 15+48); the tool result and the
    answer change with it, so the only tell is the call disagreeing with the question."""
    question = " ".join(m.get("content") or "" for m in messages if m.get("role") == "user")
    given = set(NUMBER.findall(question))
    call_index = next(
        (i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("tool_calls")), None
    )
    if call_index is None or call_index + 1 >= len(messages) or messages[call_index + 1].get("role") != "tool":
        return None
    function = messages[call_index]["tool_calls"][0].get("function", {})
    arguments = function.get("arguments")
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    copied = [m for m in re.finditer(r"\d+", text) if m.group() in given]
    results = list(NUMBER.finditer(messages[call_index + 1].get("content") or ""))
    if not copied or not results:
        return None
    match, result = rng.choice(copied), results[-1].group()
    typo = str(int(match.group()) + rng.randint(1, 9))
    out = copy.deepcopy(messages)
    typed = text[: match.start()] + typo + text[match.end() :]
    out[call_index]["tool_calls"][0]["function"]["arguments"] = (
        typed if isinstance(arguments, str) else json.loads(typed)
    )
    new_result = _other_number(result, rng, spread=0)
    for message in out[call_index + 1 :]:
        if message.get("role") in ("tool", "assistant") and isinstance(message.get("content"), str):
            message["content"] = re.sub(rf"(?<![\d.]){re.escape(result)}(?!\.?\d)", new_result, message["content"])
    return out


RULES = {
    "wrong_number": wrong_final_number,
    "no_tool_call": without_tool_calls,
    "malformed_call": malformed_tool_call,
    "ignores_tool_result": ignoring_tool_result,
    "mistyped_argument": mistyped_argument,
}


def rule_negative_pairs(
    pairs: list[dict], seed: int, per_pair: int | None = None, kinds: list[str] | tuple = tuple(RULES)
) -> list[dict]:
    """Extra whole-conversation pairs from each pair's chosen conversation: up to `per_pair` rules (drawn at random
    among those that apply) per pair, or every rule that applies when per_pair is None."""
    unknown = sorted(set(kinds) - set(RULES))
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; known: {sorted(RULES)}")
    rng = random.Random(seed)
    out = []
    for pair in pairs:
        chosen, _ = pair_conversations(pair)
        broken = [(kind, RULES[kind](chosen, rng)) for kind in kinds]
        broken = [(kind, rejected) for kind, rejected in broken if rejected is not None and rejected != chosen]
        if per_pair is not None and len(broken) > per_pair:
            broken = rng.sample(broken, per_pair)
        for kind, rejected in broken:
            out.append({"prompt": [], "chosen": chosen, "rejected": rejected, "tools": pair.get("tools"),
                        "kind": f"rule:{kind}"})  # fmt: skip
    return out
