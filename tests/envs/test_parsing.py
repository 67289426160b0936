"""Parsing assistant text into content and Hermes/Qwen tool calls."""

import json

import pytest

from envs.parsing import format_tool_call, parse_assistant


def test_format_tool_call_is_the_exact_template_string():
    text = format_tool_call("calculator", {"expression": "23+45"})
    assert text == '<tool_call>{"name": "calculator", "arguments": {"expression": "23+45"}}</tool_call>'
    assert format_tool_call("search", {"query": "Zoë"}) == (
        '<tool_call>{"name": "search", "arguments": {"query": "Zoë"}}</tool_call>'
    )


def test_valid_call_round_trips():
    parsed = parse_assistant(format_tool_call("calculator", {"expression": "2*3"}))
    assert parsed.error is None and parsed.content == ""
    assert parsed.tool_calls == [{"name": "calculator", "arguments": {"expression": "2*3"}}]


def test_whitespace_inside_tags_and_content_outside():
    body = json.dumps({"name": "search", "arguments": {"query": "Thatu"}})
    parsed = parse_assistant(f"Let me look.\n<tool_call>\n{body}\n</tool_call>\n")
    assert parsed.error is None and parsed.content == "Let me look."
    assert parsed.tool_calls == [{"name": "search", "arguments": {"query": "Thatu"}}]


def test_several_calls():
    text = format_tool_call("a", {}) + "\n" + format_tool_call("b", {"x": 1})
    assert [call["name"] for call in parse_assistant(text).tool_calls] == ["a", "b"]


def test_plain_text_is_a_final_answer():
    assert parse_assistant("  The answer is 68.  ") == parse_assistant("The answer is 68.")
    parsed = parse_assistant("The answer is 68.")
    assert parsed.content == "The answer is 68." and parsed.tool_calls == [] and parsed.error is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "1"}</tool_call>', "not valid JSON"),
        ("<tool_call></tool_call>", "not valid JSON"),
        ('<tool_call>["calculator"]</tool_call>', "JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'missing "name"'),
        ('<tool_call>{"name": "calculator"}</tool_call>', 'missing "arguments"'),
        ('<tool_call>{"name": "calculator", "arguments": "1+1"}</tool_call>', "must be an object"),
        ('<tool_call>{"name": "calculator", "arguments": {}}', "unclosed"),
        ("oops </tool_call>", "without a matching"),
        ("<tool_call>" + "[" * 100_000 + "</tool_call>", "not valid JSON"),
    ],
)
def test_malformed_calls_are_reported(text, error):
    parsed = parse_assistant(text)
    assert parsed.error is not None and error in parsed.error


def test_unknown_tool_names_parse_the_env_rejects_them():
    parsed = parse_assistant(format_tool_call("nope", {}))
    assert parsed.error is None and parsed.tool_calls[0]["name"] == "nope"
