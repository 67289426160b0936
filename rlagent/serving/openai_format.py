"""OpenAI chat-completions wire format <-> rlagent's chat messages, and the parsing of generated text.

Requests: OpenAI messages become the Hugging Face messages the chat template renders (assistant `tool_calls` with
their JSON-string `arguments` decoded to objects, `tool` messages kept with their content, content parts joined).
Responses: the generated text is split by envs.parsing.parse_assistant, the same parser the environments use, so a
Hermes `<tool_call>{...}</tool_call>` the policy writes comes back as an OpenAI `tool_calls` entry exactly when the
environments would have run it as a call.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from envs.parsing import parse_assistant

ROLES = ("system", "user", "assistant", "tool")


class RequestError(ValueError):
    """A malformed request: answered with HTTP 400 and an OpenAI-style error naming the field."""


@dataclass
class ChatRequest:
    """The fields of a chat-completions request rlagent serves (others, e.g. `top_p`, are accepted and ignored)."""

    messages: list[dict]  # Hugging Face format, ready for the chat template
    tools: list[dict] | None  # OpenAI/HF function schemas; None with tool_choice "none"
    max_tokens: int
    temperature: float  # 0 = greedy
    n: int
    stream: bool
    user: str | None
    model: str | None


def parse_request(body: dict, default_max_tokens: int) -> ChatRequest:
    """Validate and convert a request body; RequestError names the first bad field."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError("messages: must be a non-empty list")
    messages = [to_hf_message(m, f"messages[{i}]") for i, m in enumerate(raw)]
    choice = body.get("tool_choice", "auto")
    if choice not in ("auto", "none", None):
        raise RequestError("tool_choice: only 'auto' and 'none' are supported")
    tools = body.get("tools") or None
    if tools is not None and not isinstance(tools, list):
        raise RequestError("tools: must be a list of function schemas")
    max_tokens = _number(body, "max_tokens", default_max_tokens, int, 1)
    temperature = _number(body, "temperature", 1.0, float, 0.0)
    n = _number(body, "n", 1, int, 1)
    user = body.get("user")
    return ChatRequest(
        messages,
        None if choice == "none" else tools,
        max_tokens,
        temperature,
        n,
        bool(body.get("stream", False)),
        str(user) if user else None,
        body.get("model"),
    )


def _number(body: dict, key: str, default, kind: type, minimum: float):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise RequestError(f"{key}: must be {'an integer' if kind is int else 'a number'}")
    if value < minimum:
        raise RequestError(f"{key}: must be >= {minimum}")
    return kind(value)


def to_hf_message(message, where: str) -> dict:
    """One OpenAI message as the chat template expects it."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise RequestError(f"{where}: a message needs a role among {', '.join(ROLES)}")
    content = message.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    out = {"role": message["role"], "content": content or ""}
    calls = message.get("tool_calls")
    if message["role"] == "assistant" and calls:
        out["tool_calls"] = [_hf_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls)]
    return out


def _hf_tool_call(call, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RequestError(f"{where}: needs function.name")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            raise RequestError(f"{where}: function.arguments is not valid JSON") from None
    return {"type": "function", "function": {"name": function["name"], "arguments": arguments}}


def assistant_message(text: str, parse_tools: bool) -> tuple[dict, str]:
    """(OpenAI assistant message, finish reason) for generated text. With tools, well-formed Hermes calls become
    `tool_calls` (finish reason "tool_calls") and the text outside them is the content; a malformed call is left
    in the content as written (the environments would answer it with an error, not run it)."""
    if not parse_tools:
        return {"role": "assistant", "content": text}, "stop"
    parsed = parse_assistant(text)
    if parsed.error is not None or not parsed.tool_calls:
        return {"role": "assistant", "content": text}, "stop"
    calls = [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
        }
        for c in parsed.tool_calls
    ]
    return {"role": "assistant", "content": parsed.content or None, "tool_calls": calls}, "tool_calls"


def logged_message(message: dict) -> dict:
    """The assistant message in the Hugging Face format `rlagent sft` reads (tool-call arguments as objects)."""
    return to_hf_message(message, "response")


def stream_chunks(response: dict) -> list[dict]:
    """A finished completion as the `chat.completion.chunk` objects of a stream: per choice, its role, its content,
    its tool calls, then its finish reason (the text is generated whole, in a batch, then sent in these pieces)."""
    base = {key: response[key] for key in ("id", "created", "model", "system_fingerprint")}
    chunks = []
    for choice in response["choices"]:
        message, index = choice["message"], choice["index"]
        deltas = [{"role": "assistant", "content": ""}]
        if message.get("content"):
            deltas.append({"content": message["content"]})
        if message.get("tool_calls"):
            deltas.append({"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]})
        for delta in deltas:
            chunks.append(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": index, "delta": delta, "finish_reason": None}],
                }
            )
        chunks.append(
            {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}],
            }
        )
    return chunks
