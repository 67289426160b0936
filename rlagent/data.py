"""Conversation data: JSONL reading with line-numbered errors, and tokenisation with an assistant-only loss mask."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
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


def iter_conversations(path: str) -> Iterator[dict]:
    """Stream SFT conversations `{"messages": [...], "tools": [...]}` from JSONL, validating every line."""
    found = False
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "messages" not in obj:
            raise DataError(f"{where}: missing field 'messages'")
        check_messages(obj["messages"], where)
        if not any(m["role"] == "assistant" for m in obj["messages"]):
            raise DataError(f"{where}: conversation has no assistant message to learn from")
        found = True
        yield {"messages": obj["messages"], "tools": obj.get("tools") or None}
    if not found:
        raise DataError(f"{path}: no conversations found")


def read_conversations(path: str) -> list[dict]:
    """All SFT conversations of a JSONL file (small files; large ones go through `tokenized_dataset`)."""
    return list(iter_conversations(path))


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


class TokenizedDataset:
    """Tokenised conversations in an Arrow table (`datasets`), memory-mapped from disk so that a large JSONL file is
    never held in RAM; item i is a TokenizedConversation."""

    def __init__(self, table, indices: list[int] | None = None) -> None:
        self.table = table
        self.indices = list(range(len(table))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int | slice) -> TokenizedConversation | list[TokenizedConversation]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self.table[self.indices[i]]
        return TokenizedConversation(row["input_ids"], row["assistant_mask"], row["truncated"])

    def subset(self, indices: list[int]) -> TokenizedDataset:
        return TokenizedDataset(self.table, [self.indices[i] for i in indices])

    def column_stats(self) -> tuple[int, float]:
        """(conversations truncated, mean tokens per conversation), read column-wise from the table."""
        lengths = self.table["length"]
        return sum(self.table["truncated"]), sum(lengths) / max(1, len(lengths))


def tokenized_dataset(rows: Iterable[dict], tokenizer, max_length: int, cache_dir: str, key: str) -> TokenizedDataset:
    """Tokenise `rows` (an iterator is consumed lazily, row by row) into an Arrow file under `cache_dir`.

    `key` identifies the input (file path + size + mtime, or the expert settings); with the tokenizer and max_length
    it fingerprints the table, so a rerun or a resume with the same input reuses the file instead of re-tokenising.
    """
    import datasets

    def generate():
        for row in rows:
            t = tokenize_conversation(tokenizer, row["messages"], row["tools"], max_length)
            yield {"input_ids": t.input_ids, "assistant_mask": t.assistant_mask, "truncated": t.truncated,
                   "length": len(t.input_ids)}  # fmt: skip

    template = getattr(tokenizer, "chat_template", "") or ""
    fingerprint = hashlib.sha256(f"{key}|{len(tokenizer)}|{template}|{max_length}".encode()).hexdigest()[:32]
    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "assistant_mask": datasets.Sequence(datasets.Value("int8")),
            "truncated": datasets.Value("bool"),
            "length": datasets.Value("int32"),
        }
    )
    progress = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one line per stage is enough; the stage prints its own summary
    try:
        table = datasets.Dataset.from_generator(
            generate, features=features, cache_dir=cache_dir, fingerprint=fingerprint
        )
    except datasets.exceptions.DatasetGenerationError as err:  # surface the real error (e.g. our file:line one)
        cause = err.__cause__ or err.__context__
        if cause is None:
            raise
        raise cause from None
    finally:
        if progress:
            datasets.enable_progress_bars()
    return TokenizedDataset(table)


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
