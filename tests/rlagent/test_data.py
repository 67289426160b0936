"""SFT data through `datasets`: an Arrow table on disk, token-for-token equal to direct tokenisation, cached."""

import json

import pytest

from rlagent.common.data import (
    DataError,
    check_tools,
    iter_conversations,
    iter_jsonl,
    read_conversations,
    tokenize_conversation,
    tokenized_dataset,
)
from rlagent.common.tiny import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_arrow_table_equals_direct_tokenisation(tmp_path, demo_jsonl, tokenizer):
    rows = read_conversations(demo_jsonl)
    data = tokenized_dataset(iter_conversations(demo_jsonl), tokenizer, 40, str(tmp_path / "cache"), "key")
    assert len(data) == len(rows) == 200
    assert data.table.cache_files, "the table must live on disk (memory-mapped), not in RAM"
    direct = [tokenize_conversation(tokenizer, r["messages"], r["tools"], 40) for r in rows]
    assert [data[i] for i in range(len(data))] == direct
    assert data[3:7] == direct[3:7]
    truncated, mean_tokens = data.column_stats()
    assert truncated == sum(t.truncated for t in direct) > 0  # max_length 40 cuts every demo: counted, not dropped
    assert mean_tokens == pytest.approx(sum(len(t.input_ids) for t in direct) / len(direct))
    subset = data.subset([5, 0])
    assert len(subset) == 2 and subset[0] == direct[5] and subset[1] == direct[0]


def test_same_key_reuses_the_table_and_a_new_key_rebuilds(tmp_path, demo_jsonl, tokenizer):
    cache = str(tmp_path / "cache")
    tokenized_dataset(iter_conversations(demo_jsonl), tokenizer, 64, cache, "key")

    def must_not_be_read():
        raise AssertionError("the cached table should have been reused")
        yield  # pragma: no cover

    again = tokenized_dataset(must_not_be_read(), tokenizer, 64, cache, "key")
    assert len(again) == 200
    with pytest.raises(Exception, match="should have been reused"):
        tokenized_dataset(must_not_be_read(), tokenizer, 64, cache, "other key")


def test_malformed_line_keeps_its_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "robot"}]}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: 'messages\[0\].role'"):
        tokenized_dataset(iter_conversations(str(path)), tokenizer, 64, str(tmp_path / "cache"), "k")


def test_byte_order_mark_crlf_and_blank_lines_read_like_plain_lines(tmp_path):
    """Not errors: a UTF-8 BOM on line 1 (Windows editors), CRLF line ends, blank lines (skipped, counted in the
    line numbers)."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n{"a": 2}\r\n')
    assert list(iter_jsonl(str(path))) == [(1, {"a": 1}), (3, {"a": 2})]


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b'{"a": 1}\n{"a": [1, 2\n',
            ":2: malformed JSON (Expecting ',' delimiter at column 12)",
        ),  # not column 1 of line 3
        (b'{"a": 1}\r\n{"a": }\r\n', ":2: malformed JSON (Expecting value at column 7)"),
        (
            b'{"a": "\xc3\xa9\xff"}\n',
            ":1: not valid UTF-8 (byte 0xff at column 9)",
        ),  # columns count characters, not bytes
        (
            b'{"a": "\xef\xbb\xbf"}\n{"b": 1}\n\xef\xbb\xbf{"c": 1}\n',
            ":3: malformed JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) at column 1)",
        ),  # BOM only on line 1
        (b'{"n": ' + b"7" * 4301 + b"}\n", ":1: unreadable JSON value (Exceeds the limit (4300 digits)"),
        (b'{"n": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n", ":1: malformed JSON (nested too deeply to read)"),
        (b'"just a string"\n', ":1: expected a JSON object, got string"),
    ],
)
def test_bad_jsonl_line_names_file_line_and_column(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        list(iter_jsonl(str(path)))
    assert str(err.value).startswith(f"{path}{message}")


def test_line_over_the_limit_is_an_error_not_a_memory_blowup(tmp_path, monkeypatch):
    import rlagent.common.data

    monkeypatch.setattr(rlagent.common.data, "MAX_LINE_BYTES", 100)
    path = tmp_path / "long.jsonl"
    path.write_text('{"a": 1}\n' + "x" * 101 + "\n")
    with pytest.raises(DataError, match=rf"^{path}:2: line longer than 100 bytes"):
        list(iter_jsonl(str(path)))


@pytest.mark.parametrize(
    "line, message",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "'messages[0]' has no 'content'"),
        ({"messages": ["hi"]}, "'messages[0]' must be an object with 'role' and 'content', got string"),
        ({"messages": [{"role": "assistant", "tool_calls": "calc"}]}, "'messages[0].tool_calls' must be a list"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}, "'messages[0].tool_calls[0]'"),
        ({"messages": [{"role": "assistant", "content": "x"}], "tools": "calculator"}, "'tools' must be a list"),
    ],
)
def test_bad_conversation_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError) as err:
        read_conversations(str(path))
    assert str(err.value).startswith(f"{path}:1: ") and message in str(err.value)


def test_tool_call_without_content_and_empty_tools_are_valid(tmp_path):
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "1+1"}}}
    line = {"messages": [{"role": "assistant", "tool_calls": [call]}, {"role": "assistant", "content": "2"}]}
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({**line, "tools": []}) + "\n")
    assert read_conversations(str(path)) == [{**line, "tools": None, "where": f"{path}:1"}]
    assert check_tools(None, "x") is None and check_tools([{"name": "f"}], "x") == [{"name": "f"}]


def test_template_failure_names_the_line(tmp_path, tokenizer):
    """A schema the checks accept but the tiny template cannot render (properties is not a mapping)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"properties": 3}}}
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "tools": [tool]}) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:2: the chat template cannot render this conversation"):
        tokenized_dataset(iter_conversations(str(path)), tokenizer, 64, str(tmp_path / "cache"), "k")
