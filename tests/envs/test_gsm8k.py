"""GSM8K-format data with the calculator: records -> tasks, the expert replays the annotations, splits, sources."""

import json
import os

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers rlagent/GSM8K-v0)
from envs.experts import ScriptedExpert, generate_demonstrations, run_expert_episode
from envs.gsm8k import GSM8KError, load_source, make_env, record_to_task
from envs.registry import EnvSpecError
from envs.registry import make_env as make_any_env
from envs.tasks.task import item_split

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "gsm8k_sample.jsonl")
RECORDS = [json.loads(line) for line in open(FIXTURE, encoding="utf-8")]


def test_record_becomes_calculator_calls_and_the_final_answer():
    task = record_to_task(RECORDS[5], "train")  # the train: 60*3, 45*2, 180+90, #### 270
    assert task.answer == "270" and task.family == "gsm8k" and task.prompt == RECORDS[5]["question"]
    assert [call["arguments"]["expression"] for call in task.solution] == ["60*3", "45*2", "180+90"]
    assert all(call["name"] == "calculator" for call in task.solution)
    assert record_to_task(RECORDS[10], "train").answer == "17.5"  # decimals
    assert record_to_task({"question": "q?", "answer": "2+2=<<2+2=4>>4\n#### 1,234"}, "train").answer == "1234"


@pytest.mark.parametrize(
    "answer",
    [
        "no final line <<2+2=4>>4",  # no "#### N"
        "<<2+2=5>>5\n#### 5",  # the calculator disagrees with the annotation
        "<<50%*2=1>>1\n#### 1",  # an operator the calculator rejects
        "".join(f"<<1+{i}={1 + i}>>" for i in range(12)) + "\n#### 1",  # more steps than turns
    ],
)
def test_records_the_expert_cannot_replay_are_left_out(answer):
    assert record_to_task({"question": "How many?", "answer": answer}, "train") is None


def test_expert_solves_every_fixture_task_in_both_splits():
    for split in ("train", "test"):
        env = make_env(path=FIXTURE, split=split)
        episodes = [run_expert_episode(env, ScriptedExpert(0.0), seed) for seed in range(30)]
        assert all(e["success"] and e["reward"] == 1.0 for e in episodes)
        # one calculator call per annotation, one turn each, then the answer
        assert all(e["turns"] == len(e["task"]["solution"]) + 1 for e in episodes)


def test_single_file_splits_by_question_hash_and_is_deterministic():
    train, test = load_source(FIXTURE, "train"), load_source(FIXTURE, "test")
    assert len(train.tasks) + len(test.tasks) == len(RECORDS) and train.skipped == test.skipped == 0
    assert not {t.prompt for t in train.tasks} & {t.prompt for t in test.tasks}
    assert all(item_split(t.prompt) == t.split for t in train.tasks + test.tasks)
    env_a, env_b = make_env(path=FIXTURE, split="train"), make_env(path=FIXTURE, split="train")
    assert [env_a.reset(seed=s)[1]["task"] for s in range(10)] == [env_b.reset(seed=s)[1]["task"] for s in range(10)]


def test_folder_with_named_splits_parquet_and_the_env_spec_ways_in(tmp_path):
    import datasets

    datasets.Dataset.from_list(RECORDS[:9]).to_parquet(str(tmp_path / "train.parquet"))
    datasets.Dataset.from_list(RECORDS[9:]).to_parquet(str(tmp_path / "test.parquet"))
    assert len(load_source(str(tmp_path), "test").tasks) == 3  # named files are the splits: no hashing
    by_id = gym.make("rlagent/GSM8K-v0", path=str(tmp_path), split="test")
    by_spec = make_any_env("envs.gsm8k:make_env", path=str(tmp_path), split="test")
    assert by_id.reset(seed=4)[1]["task"] == by_spec.reset(seed=4)[1]["task"]
    assert by_id.reset(seed=4)[1]["task"]["prompt"] in {r["question"] for r in RECORDS[9:]}


def test_demonstrations_from_the_env_var_source(monkeypatch):
    monkeypatch.setenv("RLAGENT_GSM8K", FIXTURE)
    rows = generate_demonstrations("envs.gsm8k:make_env", 5, seed=0)
    assert len(rows) == 5
    for row in rows:
        calls = [m for m in row["messages"] if m.get("tool_calls")]
        assert calls and row["messages"][-1]["content"].startswith("The answer is")


def test_bad_sources_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GSM8KError, match="offline") as info:
        load_source("no-such-user/no-such-gsm8k", "train")
    assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GSM8KError, match="no .jsonl"):
        load_source(str(tmp_path / "empty"), "train")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?", "answer": "no annotations"}) + "\n")
    with pytest.raises(GSM8KError, match="no usable"):
        load_source(str(bad), "train")
    with pytest.raises(EnvSpecError, match="GSM8K source"):
        make_any_env("rlagent/GSM8K-v0", path=str(tmp_path / "empty"))
