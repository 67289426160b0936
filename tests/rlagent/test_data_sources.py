"""Where SFT and reward-model data come from: data.path alone means that file (said in one line), a Hub dataset id
goes through `datasets` (offline: one line saying so), a held-out file, and rule-built negatives announced."""

import pytest

from rlagent.common.config import ConfigError, DataSourceConfig, load_config
from rlagent.common.data import DataError, is_hub_id, iter_records
from rlagent.common.tiny import build_tiny_tokenizer
from rlagent.train_reward import RewardConfig, prepare_data
from rlagent.train_sft import SFTConfig, train
from tests.conftest import SMALL_MODEL
from tests.reward_models.pair_data import addition_pairs, write_pairs


def test_a_path_alone_means_that_file_and_says_so(capsys):
    data = DataSourceConfig(path="demos.jsonl")
    data.resolve_source("rlagent sft")
    assert data.source == "file"
    assert capsys.readouterr().out.strip() == (
        "rlagent sft: data: reading data.path=demos.jsonl (data.source=file, inferred from data.path)"
    )
    bare = DataSourceConfig()
    bare.resolve_source("rlagent sft")
    assert bare.source == "expert" and capsys.readouterr().out == ""
    with pytest.raises(ConfigError, match="data.path=x.jsonl is set but data.source=expert ignores it"):
        DataSourceConfig(source="expert", path="x.jsonl").resolve_source("rlagent sft")


def test_sft_with_only_data_path_trains_on_the_file(tmp_path, demo_jsonl, capsys):
    """The file has 200 conversations; the experts would have made data.episodes=400 of their own."""
    cfg = load_config(SFTConfig, None, [f"output_dir={tmp_path}", f"data.path={demo_jsonl}", "max_steps=1",
                                        "progress=false", "save_every=0", "eval_every=0", *SMALL_MODEL])  # fmt: skip
    summary = train(cfg)
    assert summary["data/conversations"] == 200 and "inferred from data.path" in capsys.readouterr().out


def test_hub_ids_are_told_from_paths(tmp_path):
    (tmp_path / "org").mkdir()
    assert is_hub_id("someone/some-dataset") and is_hub_id("org_1/name.v2")
    assert not is_hub_id("data/demos.jsonl") and not is_hub_id("demos") and not is_hub_id("a/b/c")
    assert not is_hub_id(str(tmp_path / "org"))  # something of that name exists here: a path


def test_a_hub_id_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"'nobody-xyz/no-such-set' is no local file or folder.*HF_HUB_OFFLINE is set"):
        next(iter_records("nobody-xyz/no-such-set"))


def test_held_out_file_and_rule_negatives_announced(tmp_path, capsys):
    train_path, eval_path = write_pairs(tmp_path / "t.jsonl", addition_pairs(6)), tmp_path / "e.jsonl"
    write_pairs(eval_path, addition_pairs(3, seed=1))
    cfg = load_config(RewardConfig, None, [f"output_dir={tmp_path}", f"data.path={train_path}",
                                           f"data.eval_path={eval_path}", "optim.batch_size=2"])  # fmt: skip
    cfg.data.resolve_source("rlagent reward")
    _, eval_set, _, stats = prepare_data(cfg, build_tiny_tokenizer())
    assert (stats["data/pairs"], len(eval_set), stats["data/rule_pairs"]) == (6, 3, 6)  # one rule negative per pair
    out = capsys.readouterr().out
    assert "6 rule-built negative pair(s) added to 6 training pairs (data.rule_negatives=true" in out
