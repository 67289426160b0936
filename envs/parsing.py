"""Parse assistant text into content and Hermes/Qwen calls: `<tool_call>{"name": .., "arguments": ..}</tool_call>`.

Parsing never raises: a malformed call is reported in `ParsedAction.error`, so the environment can answer it
with an error observation and a penalty instead of an exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


@dataclass
class ParsedAction:
    """One assistant turn: text outside the calls, the well-formed calls, and the first problem found (if any)."""

    content: str
    tool_calls: list[dict] = field(default_factory=list)
    error: str | None = None


def format_tool_call(name: str, arguments: dict) -> str:
    """The exact text a chat template renders for a structured tool call (experts must produce exactly this)."""
    return OPEN_TAG + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + CLOSE_TAG


def parse_assistant(text: str) -> ParsedAction:
    """Split `text` into content and tool calls; `error` describes the first malformed call, if any."""
    outside: list[str] = []
    calls: list[dict] = []
    errors: list[str] = []
    position = 0
    while True:
        start = text.find(OPEN_TAG, position)
        if start < 0:
            outside.append(text[position:])
            break
        outside.append(text[position:start])
        end = text.find(CLOSE_TAG, start + len(OPEN_TAG))
        if end < 0:
            errors.append(f"unclosed {OPEN_TAG} tag")
            outside.append(text[start:])  # keep the raw text: nothing in it was a call
            break
        call, problem = parse_call_body(text[start + len(OPEN_TAG) : end])
        calls += [call] if call else []
        errors += [problem] if problem else []
        position = end + len(CLOSE_TAG)
    content = "".join(outside)
    if CLOSE_TAG in content and not errors:
        errors.append(f"{CLOSE_TAG} without a matching {OPEN_TAG}")
    return ParsedAction(content=content.strip(), tool_calls=calls, error=errors[0] if errors else None)


def parse_call_body(body: str) -> tuple[dict | None, str | None]:
    """The JSON between the tags as {"name", "arguments"}, or None and a short reason."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested brackets
        return None, "tool call is not valid JSON"
    if not isinstance(payload, dict):
        return None, "tool call must be a JSON object"
    name, arguments = payload.get("name"), payload.get("arguments")
    if not isinstance(name, str) or not name:
        return None, 'tool call is missing "name"'
    if "arguments" not in payload:
        return None, f'tool call to {name!r} is missing "arguments"'
    if not isinstance(arguments, dict):
        return None, f'"arguments" of {name!r} must be an object'
    return {"name": name, "arguments": arguments}, None
