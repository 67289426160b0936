"""The Python API (rlagent/api.py): `from rlagent import SFTTrainer, RewardTrainer, PPOTrainer` with in-memory
objects, each `.train()` running the stage's own code path on the tiny default (a step or an iteration each)."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from datasets import Dataset

from examples.trl_counter import Counter, rows, said_the_count
from rlagent import PPOTrainer, RewardTrainer, SFTTrainer
from rlagent.api import resolve_config
from rlagent.common.config import ConfigError, TinyModelConfig
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
from rlagent.train_ppo import PPOConfig
from tests.conftest import ROOT, SMALL_MODEL, addition_conversation, assert_metrics_documented, read_metrics
from tests.envs.byo_plugin import UnitsEnv, turns_bonus
from tests.reward_models.pair_data import addition_pairs

SMALL = {key.partition("=")[0]: yaml.safe_load(key.partition("=")[2]) for key in SMALL_MODEL}
PPO_FAST = {"progress": False, "max_steps": 1, "save_every": 0, "env.episodes": 4, "optim.batch_size": 4,
            "optim.micro_batch_size": 4, "rollout.max_new_tokens": 16, "rollout.max_total_tokens": 256,
            "reward": {"model_path": None, "rm_weight": 0.0}}  # fmt: skip


def test_a_config_is_a_yaml_path_a_dict_or_the_config_object(tmp_path):
    path = tmp_path / "ppo.yaml"
    path.write_text(f"output_dir: {tmp_path}/a\nalgo:\n  kl_coef: 0.5\n")
    from_file = resolve_config(PPOConfig, str(path))
    nested = resolve_config(PPOConfig, {"output_dir": f"{tmp_path}/a", "algo": {"kl_coef": 0.5}})
    dotted = resolve_config(PPOConfig, {"output_dir": f"{tmp_path}/a", "algo.kl_coef": 0.5})
    assert from_file == nested == dotted and dotted.algo.kl_coef == 0.5
    given = resolve_config(PPOConfig, dotted)
    assert given == dotted and given is not dotted  # a copy: the trainer's path edits never reach the caller
    with pytest.raises(ConfigError, match=r"unknown key 'algo.kl_cof'; did you mean 'algo.kl_coef'"):
        resolve_config(PPOConfig, {"algo.kl_cof": 0.5})
    with pytest.raises(TypeError, match="config must be a YAML path, a dict or a PPOConfig"):
        resolve_config(PPOConfig, 3)


def test_import_rlagent_is_lazy():
    """`import rlagent` (and so `import rlagent.common`) pulls in neither torch nor the trainers until one is used."""
    code = ("import sys, rlagent; assert 'torch' not in sys.modules and 'rlagent.api' not in sys.modules; "
            "from rlagent import PPOTrainer; print(PPOTrainer.__module__)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "rlagent.api"
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        import rlagent

        rlagent.Trainer  # noqa: B018


def test_ppo_trains_a_trl_environment_class_on_a_dataset_like_grpo(tmp_path):
    """TRL's GRPO-with-environment shape: model + tokenizer objects, the class, a TRL reward function, a Dataset."""
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
                             tokenizer, seed=0)  # fmt: skip
    config = {"output_dir": str(tmp_path), "model.dtype": "float32", **PPO_FAST}
    trainer = PPOTrainer(config, model=model, tokenizer=tokenizer, env=Counter, reward_funcs=said_the_count,
                         train_dataset=Dataset.from_list(rows("train")))  # fmt: skip
    summary = trainer.train()
    env_id = trainer.config.env.ids[0]
    assert env_id.startswith("rlagent-api/Counter-v") and summary["steps"] == 1
    (row,) = read_metrics(tmp_path)
    for key in ("reward/said_the_count/mean", "reward/said_the_count/std", "reward/Counter/mean",
                f"env/{env_id}/success_rate", "policy/approxkl_avg", "num_tokens"):  # fmt: skip
        assert key in row, key
    assert_metrics_documented(tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["name_or_path"] == str(tmp_path / "input_model") and saved["env"]["ids"] == [env_id]
    assert (tmp_path / "input_model" / "config.json").is_file() and (tmp_path / "final" / "config.json").is_file()
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples and {s["step"] for s in samples} == {1}  # the last iteration is logged whatever the period


def test_ppo_passes_a_gym_env_class_and_both_reward_signatures(tmp_path):
    """A TRL batch function sees the environment instances that played the episodes; a per-episode one runs too."""
    seen = []

    def env_types(completions, environments, **kwargs):
        seen.append([type(env).__name__ for env in environments])
        return [0.0] * len(completions)

    config = {"output_dir": str(tmp_path), **SMALL, **PPO_FAST}
    PPOTrainer(config, model="tiny", env=UnitsEnv, reward_funcs=[env_types, turns_bonus]).train()
    assert seen == [["UnitsEnv"] * 4]
    (row,) = read_metrics(tmp_path)
    assert row["reward/env_types/mean"] == 0.0 and row["reward/turns_bonus/mean"] == 0.25 * row["env/turns"]
    assert row["reward/function_errors"] == 0


def one_step(output_dir) -> dict:
    """An SFT / reward config of one optimizer step of 4 examples on the small tiny model, nothing saved mid-run."""
    return {"output_dir": str(output_dir), **SMALL, "max_steps": 1, "progress": False,
            "optim": {"batch_size": 4, "micro_batch_size": 4}, "save_every": 0}  # fmt: skip


def test_sft_and_reward_model_train_on_datasets(tmp_path):
    convs = [addition_conversation(a, a + 1) for a in range(1, 11)]
    sft = SFTTrainer(
        one_step(tmp_path / "sft"),
        model="tiny",
        train_dataset=Dataset.from_list(convs[:8]),
        eval_dataset=convs[8:],
    )
    summary = sft.train()
    assert (summary["data/train"], summary["data/eval"], summary["steps"]) == (8, 2, 1)
    assert sft.config.data.source == "file" and os.path.isdir(sft.config.data.path)
    pairs = addition_pairs(10)
    reward = RewardTrainer(
        {**one_step(tmp_path / "rm"), "data.rule_negatives": False, "normalize.reference_samples": 8},
        model=str(tmp_path / "sft" / "final"),
        train_dataset=pairs[:8],
        eval_dataset=pairs[8:],
    )
    summary = reward.train()
    assert (summary["data/pairs"], summary["data/rule_pairs"], summary["data/eval"]) == (8, 0, 2)
    assert (tmp_path / "rm" / "final" / "reward_normalization.json").is_file()


def test_objects_that_do_not_fit_are_named(tmp_path):
    with pytest.raises(TypeError, match="pass its tokenizer= too"):
        PPOTrainer({"output_dir": str(tmp_path)}, model=build_tiny_model(TinyModelConfig(), build_tiny_tokenizer(), 0))
    with pytest.raises(TypeError, match="task rows of env="):
        PPOTrainer({"output_dir": str(tmp_path)}, train_dataset=rows("train"))
    with pytest.raises(TypeError, match="a TRL environment class's task rows; this env is not one"):
        PPOTrainer({"output_dir": str(tmp_path)}, env=UnitsEnv, train_dataset=rows("train"))
