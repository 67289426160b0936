"""Conversation data: reading with located errors, and tokenisation with an assistant-only loss mask.

Where data can come from (`iter_records`; SFT conversations and preference pairs alike):
- a JSONL file (any name but the ones below; also a `.json` file in JSON Lines): read line by line here, errors say
  `file:line`;
- a `.parquet` or `.arrow` file: streamed through `datasets` (`load_dataset(..., streaming=True)`), record by
  record, never loaded whole; errors say `file[row]`;
- a `.json` file holding one JSON array of records: parsed whole with `json` (an array cannot be streamed, and
  `datasets`' JSON reader turns nested objects of differing shapes into strings); use JSONL or Parquet for large
  data;
- a folder written by `Dataset.save_to_disk` (or `DatasetDict.save_to_disk`: its "train" split): memory-mapped
  Arrow (`datasets.load_from_disk`), read row by row;
- a Hugging Face Hub dataset id (`owner/name`, nothing of that name here): `datasets.load_dataset(id, split="train")`
  (offline, HF_HUB_OFFLINE=1, only what the local cache holds: otherwise one line says so).
Arrow stores a list of dicts with one schema, filling keys a dict lacks with null; those nulls are dropped again
(`drop_nulls`), so a message or tool schema comes back as it was written (a key written as an explicit null is lost).
A `tools` column holding a JSON string (as some Hub datasets store it) is parsed (in Parquet/Arrow/folders only: in
JSONL, `tools` must be a list).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from envs.protocol import json_type, message_problem
from rlagent.common.chat_templates import ChatTemplateError, assistant_token_mask


class DataError(ValueError):
    """Malformed input data; the message names the file and line."""


# A conversation is kilobytes; a line this long is almost surely a wrong file (a binary, a JSON array of the whole
# data set), and reading it whole could exhaust memory before any error is shown.
MAX_LINE_BYTES = 64 * 2**20


DATASETS_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}


def is_saved_dataset(path: str) -> bool:
    """A folder written by `datasets` `save_to_disk` (a Dataset or a DatasetDict)."""
    return os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))


def is_hub_id(path: str) -> bool:
    """`owner/name` with nothing of that name on disk and no data-file suffix: a Hugging Face Hub dataset id."""
    suffix = os.path.splitext(path)[1].lower()
    known = suffix in (".jsonl", ".json", ".txt", *DATASETS_SUFFIXES)
    return not os.path.exists(path) and not known and re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None


def check_input_file(path: str, key: str = "data.path") -> None:
    """A data path must be a readable regular file, a `save_to_disk` folder or a Hub dataset id; the error says what
    it is instead."""
    if (os.path.isdir(path) and is_saved_dataset(path)) or is_hub_id(path):
        return
    if os.path.isdir(path):
        raise DataError(f"{key}: {path} is a directory, not a JSONL file")
    if not os.path.exists(path):
        raise DataError(f"{key}: file not found: {path}")
    if not os.access(path, os.R_OK):
        raise DataError(f"{key}: {path} is not readable (permission denied)")


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a bad line raises DataError naming file:line (and column).

    Bytes are read and decoded line by line, so invalid UTF-8 is reported at its line; a UTF-8 byte-order mark on
    the first line is dropped (editors on Windows add one).
    """
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror})") from None
    with handle:
        for lineno in itertools.count(1):
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES:,} bytes; is this a JSONL file?")
            text = _decode_line(raw, f"{path}:{lineno}")
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            yield lineno, parse_json_line(text, f"{path}:{lineno}")


def _decode_line(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        column = len(raw[: err.start].decode("utf-8", errors="replace")) + 1
        raise DataError(
            f"{where}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {column}); save the file as UTF-8"
        ) from None


def parse_json_line(text: str, where: str) -> dict:
    """One JSON object from one line. Every way json.loads can fail on hostile input becomes a DataError: syntax
    (with the column, counted without the line's newline), integers over Python's digit limit, deep nesting."""
    text = text.rstrip("\r\n")  # else an error at the end of the line is reported at column 1 of the next line
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: malformed JSON ({err.msg.removesuffix(' at')} at column {err.pos + 1})") from None
    except RecursionError:
        raise DataError(f"{where}: malformed JSON (nested too deeply to read)") from None
    except ValueError as err:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise DataError(f"{where}: unreadable JSON value ({str(err).split(';')[0]})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {json_type(obj)}")
    return obj


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def check_messages(messages, where: str, field: str = "messages") -> None:
    """Validate a non-empty HF-format chat list (envs.protocol.message_problem); errors name the place and field."""
    problem = message_problem(messages, field)
    if problem:
        raise DataError(f"{where}: {problem}")


def check_tools(tools, where: str) -> list[dict] | None:
    """The optional `tools` field: a list of JSON schemas ({"type": "function", "function": {...}} or the function
    object itself), each with a name; None or [] means no tools. Returns the tools, None when there are none."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise DataError(f"{where}: 'tools' must be a list of JSON schemas, got {json_type(tools)}")
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise DataError(f"{where}: 'tools[{i}]' must be a JSON schema with a function name, got {tool!r:.60}")
        if not isinstance(function.get("parameters", {}), dict):
            raise DataError(f"{where}: 'tools[{i}]' parameters must be a JSON schema object")
    return tools


def iter_records(path: str) -> Iterator[tuple[str, dict]]:
    """(where, record) for each record of a JSONL file, a Parquet/JSON/Arrow file or a save_to_disk folder (see the
    module doc); `where` is `file:line` for JSONL, `path[row]` (0-based) otherwise."""
    suffix = os.path.splitext(path)[1].lower()
    if is_hub_id(path):
        yield from ((f"{path}[{i}]", drop_nulls(row)) for i, row in enumerate(hub_rows(path)))
        return
    if suffix == ".json" and not os.path.isdir(path) and _starts_with_array(path):
        yield from _json_array_rows(path)
        return
    if not os.path.isdir(path) and suffix not in DATASETS_SUFFIXES:
        for lineno, obj in iter_jsonl(path):
            yield f"{path}:{lineno}", obj
        return
    for i, row in enumerate(_dataset_rows(path, suffix)):
        where, row = f"{path}[{i}]", drop_nulls(row)
        parse_tools_field(row, where)
        yield where, row


def hub_rows(dataset_id: str):
    """The train split of a Hub dataset through `datasets.load_dataset`; offline without a cached copy, one line."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, split="train")
    except Exception as err:
        offline = {os.environ.get(name, "0").lower() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
        if offline & {"1", "true", "yes"}:
            raise DataError(f"data.path: {dataset_id!r} is no local file or folder, and as a Hugging Face Hub "
                            "dataset it needs the network: HF_HUB_OFFLINE is set and no cached copy was found "
                            "(download it once online, or give a local file)") from None  # fmt: skip
        raise DataError(f"data.path: Hub dataset {dataset_id!r} cannot be loaded: {type(err).__name__}: "
                        f"{str(err)[:200]}") from None  # fmt: skip


def _starts_with_array(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4096).lstrip().removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"[")


def _json_array_rows(path: str) -> Iterator[tuple[str, dict]]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            rows = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise DataError(f"{path}: not a readable JSON array ({str(err)[:120]})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}[{i}]: expected a JSON object, got {json_type(row)}")
        yield f"{path}[{i}]", row


def _dataset_rows(path: str, suffix: str) -> Iterable[dict]:
    """Rows of a datasets folder (memory-mapped) or file (streamed); unreadable input is a DataError."""
    import datasets

    try:
        if os.path.isdir(path):
            data = datasets.load_from_disk(path)
            if isinstance(data, datasets.DatasetDict):
                if "train" not in data:
                    raise DataError(f"{path}: a DatasetDict without a 'train' split (it has {sorted(data)})")
                data = data["train"]
            return data
        builder = DATASETS_SUFFIXES[suffix]
        return datasets.load_dataset(builder, data_files=path, split="train", streaming=True)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types (FileNotFoundError, ArrowInvalid, DatasetGenerationError)
        raise DataError(f"{path}: cannot read it with `datasets`: {type(err).__name__}: {str(err)[:200]}") from None


def drop_nulls(value):
    """`value` without the null entries of its dicts, recursively (undoes Arrow's schema unification)."""
    if isinstance(value, dict):
        return {key: drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [drop_nulls(item) for item in value]
    return value


def parse_tools_field(obj: dict, where: str) -> None:
    """A `tools` value stored as a JSON string (some Hub datasets do, Arrow having no type for schemas) is parsed
    in place."""
    if isinstance(obj.get("tools"), str):
        try:
            obj["tools"] = json.loads(obj["tools"])
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: 'tools' is a string but not JSON ({err.msg} at column {err.pos + 1})") from None


def iter_conversations(path: str) -> Iterator[dict]:
    """Stream SFT conversations `{"messages": [...], "tools": [...], "where": "file:line"}` from any source of
    `iter_records`, validating every record (the same checks as preference pairs).

    TRL's conversational formats: `messages` (+ `tools`), or `prompt` + `completion` message lists (joined)."""
    found = False
    for where, obj in iter_records(path):
        if "messages" not in obj and isinstance(obj.get("prompt"), list) and isinstance(obj.get("completion"), list):
            obj = {**obj, "messages": obj["prompt"] + obj["completion"]}
        if "messages" not in obj:
            raise DataError(f"{where}: missing field 'messages'")
        check_messages(obj["messages"], where)
        tools = check_tools(obj.get("tools"), where)
        if not any(m["role"] == "assistant" for m in obj["messages"]):
            raise DataError(f"{where}: conversation has no assistant message to learn from")
        found = True
        yield {"messages": obj["messages"], "tools": tools, "where": where}
    if not found:
        raise DataError(f"{path}: no conversations found (the file is empty or blank)")


def read_conversations(path: str) -> list[dict]:
    """All SFT conversations of a file or folder (small files; large ones go through `tokenized_dataset`)."""
    return list(iter_conversations(path))


@dataclass
class TokenizedConversation:
    """One conversation as token ids with its assistant-only loss mask (1 = the model is trained on this token)."""

    input_ids: list[int]
    assistant_mask: list[int]
    truncated: bool


def tokenize_conversation(tokenizer, messages: list[dict], tools, max_length: int) -> TokenizedConversation:
    """Render with the chat template; the mask marks what the assistant wrote, never inferred from token ids: the
    template's {% generation %} spans, else the prefix derivation
    (rlagent.common.chat_templates.assistant_token_mask)."""
    try:
        ids, mask = assistant_token_mask(tokenizer, messages, tools)
    except ChatTemplateError as err:
        raise DataError(str(err)) from None
    truncated = len(ids) > max_length
    return TokenizedConversation(ids[:max_length], mask[:max_length], truncated)


def tokenize_row(tokenizer, row: dict, max_length: int, where: str) -> TokenizedConversation:
    """tokenize_conversation, with a template failure (a field the checks let through but this model's template
    cannot render) reported at the row's file:line instead of as a traceback from inside Jinja."""
    import jinja2

    try:
        return tokenize_conversation(tokenizer, row["messages"], row["tools"], max_length)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    except (jinja2.TemplateError, ValueError, TypeError, KeyError) as err:
        detail = " ".join(str(err).split())  # one line, whatever Jinja put in the message
        raise DataError(f"{where}: the chat template cannot render this conversation ({detail})") from None


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
        for n, row in enumerate(rows, start=1):
            t = tokenize_row(tokenizer, row, max_length, row.get("where", f"conversation {n}"))
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


def right_pad(rows: Sequence[Sequence], pad_value, dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, ...]:
    """(padded, attention_mask), both (B, T) with T the longest row: every batch of rows in the project (SFT
    micro-batches, reward-model inputs, rollout trajectories and their masks) is right-padded by this one function.
    Right padding keeps position ids 0..n-1 for every row (docs/ppo.md A.2)."""
    width = max(len(row) for row in rows)
    padded = torch.full((len(rows), width), pad_value, dtype=dtype)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = torch.tensor(row, dtype=dtype)
        attention_mask[i, : len(row)] = 1
    return padded, attention_mask


def collate_right_padded(rows: list[TokenizedConversation], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; labels are -100 wherever the assistant mask is 0 (prompt, tool output, padding)."""
    input_ids, attention = right_pad([row.input_ids for row in rows], pad_id)
    assistant, _ = right_pad([row.assistant_mask for row in rows], False, torch.bool)
    labels = torch.where(assistant, input_ids, torch.full_like(input_ids, -100))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
