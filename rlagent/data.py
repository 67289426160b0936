"""Conversation data: JSONL reading with line-numbered errors, and tokenisation with an assistant-only loss mask."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import torch

ROLES = {"system", "user", "assistant", "tool"}


class DataError(ValueError):
    """Malformed input data; the message names the file and line."""


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a malformed line raises DataError naming file:line."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def check_messages(messages, where: str, field: str = "messages") -> None:
    """Validate an HF-format chat list; errors name the place and the field."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: '{field}' must be a non-empty list of messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise DataError(f"{where}: '{field}[{i}].role' must be one of {sorted(ROLES)}")
        if not isinstance(msg.get("content", ""), str | type(None)):
            raise DataError(f"{where}: '{field}[{i}].content' must be a string")


def read_conversations(path: str) -> list[dict]:
    """Read SFT conversations `{"messages": [...], "tools": [...]}` from JSONL, validating every line."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "messages" not in obj:
            raise DataError(f"{where}: missing field 'messages'")
        check_messages(obj["messages"], where)
        if not any(m["role"] == "assistant" for m in obj["messages"]):
            raise DataError(f"{where}: conversation has no assistant message to learn from")
        rows.append({"messages": obj["messages"], "tools": obj.get("tools") or None})
    if not rows:
        raise DataError(f"{path}: no conversations found")
    return rows


@dataclass
class TokenizedConversation:
    """One conversation as token ids with its assistant-only loss mask (1 = the model is trained on this token)."""

    input_ids: list[int]
    assistant_mask: list[int]
    truncated: bool


def tokenize_conversation(tokenizer, messages: list[dict], tools, max_length: int) -> TokenizedConversation:
    """Render with the chat template; the mask comes from its {% generation %} spans, never from token ids."""
    out = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if sum(mask) == 0:
        raise DataError("the chat template marked no assistant tokens; it needs {% generation %} blocks")
    truncated = len(ids) > max_length
    return TokenizedConversation(ids[:max_length], mask[:max_length], truncated)


def collate_right_padded(rows: list[TokenizedConversation], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; labels are -100 wherever the assistant mask is 0 (prompt, tool output, padding)."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        attention[i, :n] = 1
        mask = torch.tensor(row.assistant_mask, dtype=torch.bool)
        labels[i, :n] = torch.where(mask, input_ids[i, :n], torch.full_like(input_ids[i, :n], -100))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
