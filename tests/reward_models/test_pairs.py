"""Pair files (TRL conventions, line-numbered errors) and rule-built negatives."""

import json
import random

import pytest

from reward_models.pairs import RULES, pair_conversations, read_pairs, rule_negative_pairs
from rlagent.common.data import DataError
from tests.conftest import CALCULATOR_SCHEMA, addition_conversation
from tests.reward_models.pair_data import addition_pairs, write_pairs

CONV = addition_conversation(23, 45)["messages"]  # user, call 23+45, tool 68, "The answer is 68."


def test_both_trl_formats_read_the_same(tmp_path):
    split = read_pairs(write_pairs(tmp_path / "a.jsonl", addition_pairs(6, prompt_split=True)))
    whole = read_pairs(write_pairs(tmp_path / "b.jsonl", addition_pairs(6, prompt_split=False)))
    assert [pair_conversations(p) for p in split] == [pair_conversations(p) for p in whole]
    assert split[0]["tools"] == [CALCULATOR_SCHEMA] and split[0]["kind"] == "file"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prompt": CONV[:1], "rejected": CONV[1:]}, "missing field 'chosen'"),
        ({"chosen": CONV, "rejected": "The answer is 7."}, "'rejected' must be a non-empty list of messages"),
        ({"chosen": CONV, "rejected": [{"role": "robot", "content": "x"}]}, "'rejected[0].role' must be one of"),
        ({"prompt": CONV[:1], "chosen": CONV[1:], "rejected": CONV[1:]}, "'chosen' and 'rejected' are identical"),
        ({"chosen": CONV, "rejected": CONV[:2], "margin": "big"}, "'margin' must be a finite number"),
        ({"chosen": CONV, "rejected": CONV[:2], "margin": float("nan")}, "'margin' must be a finite number"),
        ({"chosen": CONV, "rejected": CONV[:2], "tools": "calculator"}, "'tools' must be a list of JSON schemas"),
        ({"chosen": CONV, "rejected": CONV[:2], "tools": [{"type": "function"}]}, "'tools[0]' must be a JSON schema"),
    ],
)
def test_bad_pair_names_file_line_and_field(tmp_path, bad, message):
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, addition_pairs(2) + [bad])
    with pytest.raises(DataError) as err:
        read_pairs(str(path))
    assert str(err.value).startswith(f"{path}:3: ") and message in str(err.value)


def test_each_rule_breaks_one_thing():
    rng = random.Random(0)
    wrong = RULES["wrong_number"](CONV, rng)
    assert wrong[:3] == CONV[:3] and wrong[3]["content"] != CONV[3]["content"]
    assert wrong[3]["content"].startswith("The answer is ") and abs(int(wrong[3]["content"][14:-1]) - 68) <= 10
    assert RULES["no_tool_call"](CONV, rng) == [CONV[0], CONV[3]]
    malformed = RULES["malformed_call"](CONV, rng)
    assert malformed[2:] == CONV[2:] and "tool_calls" not in malformed[1]
    body = malformed[1]["content"].removeprefix("<tool_call>").removesuffix("</tool_call>")
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    assert payload is None or "arguments" not in payload  # not valid JSON, or valid JSON without "arguments"
    ignored = RULES["ignores_tool_result"](CONV, rng)
    assert ignored[:3] == CONV[:3] and ignored[3]["content"] in ("The answer is 23.", "The answer is 45.")
    typo = RULES["mistyped_argument"](CONV, rng)
    expression = typo[1]["tool_calls"][0]["function"]["arguments"]["expression"]
    a, b = map(int, expression.split("+"))
    assert (a == 23) != (b == 45) and 23 <= a <= 32 and 45 <= b <= 54  # one operand off by 1..9
    result = typo[2]["content"]
    assert result != "68" and typo[3]["content"] == f"The answer is {result}."  # result and answer follow the call


def test_rules_skip_what_does_not_apply_and_keep_the_input():
    no_tools = [CONV[0], CONV[3]]
    assert RULES["no_tool_call"](no_tools, random.Random(0)) is None
    assert RULES["malformed_call"](no_tools, random.Random(0)) is None
    assert RULES["wrong_number"](CONV[:2], random.Random(0)) is None  # no final answer
    before = json.dumps(CONV)
    pairs = rule_negative_pairs([{"prompt": CONV[:1], "chosen": CONV[1:], "rejected": CONV[1:2], "tools": None}], 0)
    assert json.dumps(CONV) == before
    assert sorted(p["kind"] for p in pairs) == sorted(f"rule:{k}" for k in RULES)
    assert all(p["chosen"] == CONV and p["rejected"] != CONV for p in pairs)


def test_rule_kinds_choose_and_weight_the_rules():
    pair = {"prompt": CONV[:1], "chosen": CONV[1:], "rejected": CONV[1:2], "tools": None}
    twice = rule_negative_pairs([pair], 0, None, ["mistyped_argument", "mistyped_argument", "no_tool_call"])
    assert [p["kind"] for p in twice] == ["rule:mistyped_argument", "rule:mistyped_argument", "rule:no_tool_call"]
    with pytest.raises(ValueError, match=r"unknown rule\(s\) \['mistyped'\]"):
        rule_negative_pairs([pair], 0, None, ["mistyped", "no_tool_call"])
