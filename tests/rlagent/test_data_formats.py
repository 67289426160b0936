"""SFT conversations and preference pairs from every source rlagent.common.data.iter_records reads: JSONL, Parquet,
JSON, a save_to_disk folder (Dataset and DatasetDict), in TRL's conversational formats; each read back exactly."""

import json

import pytest
from datasets import Dataset, DatasetDict

from reward_models.pairs import read_pairs
from rlagent.common.data import DataError, check_input_file, iter_conversations, read_conversations
from tests.conftest import CALCULATOR_SCHEMA, addition_conversation

SEARCH_SCHEMA = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the knowledge base.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


def conversations() -> list[dict]:
    """Rows whose messages and tool schemas differ in shape (Arrow unifies them, filling the gaps with nulls)."""
    search = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Who founded Acme?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "search", "arguments": {"query": "Acme founder"}}}]},
            {"role": "tool", "name": "search", "content": "Ada Lovelace"},
            {"role": "assistant", "content": "Ada Lovelace."},
        ],
        "tools": [SEARCH_SCHEMA],
    }  # fmt: skip
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    return [addition_conversation(2, 3), search, plain]


def write_all(rows: list[dict], tmp_path, stem: str) -> dict[str, str]:
    """The same rows as JSONL, Parquet, JSON (one array), JSON Lines named .json, a Dataset folder and a DatasetDict
    folder."""
    suffixes = {"jsonl": ".jsonl", "parquet": ".parquet", "json": ".json", "folder": "_ds", "dict": "_dd"}
    paths = {name: str(tmp_path / f"{stem}{suffix}") for name, suffix in suffixes.items()}
    with open(paths["jsonl"], "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    with open(paths["json"], "w") as handle:
        json.dump(rows, handle)
    paths["json_lines"] = str(tmp_path / f"{stem}_lines.json")
    with open(paths["json_lines"], "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    dataset = Dataset.from_list(rows)
    dataset.to_parquet(paths["parquet"])
    dataset.save_to_disk(paths["folder"])
    DatasetDict({"train": dataset}).save_to_disk(paths["dict"])
    return paths


def without_where(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "where"} for row in rows]


def test_conversations_read_back_exactly_from_every_source(tmp_path):
    rows = conversations()
    expected = [{"messages": row["messages"], "tools": row.get("tools")} for row in rows]
    for name, path in write_all(rows, tmp_path, "sft").items():
        check_input_file(path)  # a save_to_disk folder is accepted like a file
        read = read_conversations(path)
        assert without_where(read) == expected, name
        assert read[1]["where"] == (f"{path}:2" if name in ("jsonl", "json_lines") else f"{path}[1]")


def test_prompt_completion_rows_and_tools_as_a_json_string(tmp_path):
    row = addition_conversation(4, 5)
    trl_row = {"prompt": row["messages"][:1], "completion": row["messages"][1:], "tools": json.dumps(row["tools"])}
    path = str(tmp_path / "pc.parquet")
    Dataset.from_list([trl_row]).to_parquet(path)
    assert without_where(read_conversations(path)) == [{"messages": row["messages"], "tools": [CALCULATOR_SCHEMA]}]


def test_rows_stream_one_by_one_and_errors_name_the_row(tmp_path):
    """Row 2 lacks messages: rows 0 and 1 are yielded before the error (streamed, not loaded and checked whole)."""
    rows = [addition_conversation(1, 1), addition_conversation(2, 2), {"text": "not a conversation"}]
    path = str(tmp_path / "bad.parquet")
    Dataset.from_list([{"messages": r.get("messages"), "tools": r.get("tools"), "text": r.get("text")}
                       for r in rows]).to_parquet(path)  # fmt: skip
    stream = iter_conversations(path)
    assert next(stream)["where"] == f"{path}[0]" and next(stream)["where"] == f"{path}[1]"
    with pytest.raises(DataError, match=rf"{path}\[2\]: missing field 'messages'"):
        next(stream)


def test_unreadable_inputs_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="broken.parquet: cannot read it with `datasets`"):
        read_conversations(str(broken))
    DatasetDict({"validation": Dataset.from_list(conversations())}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"without a 'train' split \(it has \['validation'\]\)"):
        read_conversations(str(tmp_path / "dd"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="is a directory, not a JSONL file"):
        check_input_file(str(tmp_path / "plain"))


def preference_rows() -> list[dict]:
    good, other = addition_conversation(2, 3)["messages"], addition_conversation(2, 3)["messages"]
    wrong = [*other[:-1], {"role": "assistant", "content": "The answer is 6."}]
    return [
        {"prompt": good[:1], "chosen": good[1:], "rejected": wrong[1:], "tools": [CALCULATOR_SCHEMA]},  # explicit
        {"chosen": good, "rejected": wrong[:1] + [{"role": "assistant", "content": "6"}]},  # implicit prompt
    ]


def test_pairs_read_back_exactly_from_every_source(tmp_path):
    rows = preference_rows()
    expected = read_pairs(write_all(rows, tmp_path, "jsonl_only")["jsonl"])
    assert expected[0]["prompt"] == rows[0]["prompt"] and expected[1]["prompt"] == []
    for name, path in write_all(rows, tmp_path, "pairs").items():
        assert read_pairs(path) == expected, name
