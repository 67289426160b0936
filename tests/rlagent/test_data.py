"""SFT data through `datasets`: an Arrow table on disk, token-for-token equal to direct tokenisation, cached."""

import json

import pytest

from rlagent.data import DataError, iter_conversations, read_conversations, tokenize_conversation, tokenized_dataset
from rlagent.tiny import build_tiny_tokenizer


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
