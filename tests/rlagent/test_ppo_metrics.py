"""rlagent.training.ppo_metrics: TRL GRPO's batch metrics, per-environment success and the TRL-name aliases, on
hand-computed numbers (one process; the gather over processes is the accelerator's)."""

import math
from types import SimpleNamespace

import pytest
import torch

from rlagent.training.ppo_metrics import RENAMED, completion_metrics, group_metrics, per_env_success, with_trl_names

ONE_PROCESS = SimpleNamespace(num_processes=1, device=torch.device("cpu"))


def test_group_metrics_by_hand():
    """Scores [1, 1, 0, 2] in groups of 2: mean 1, unbiased std sqrt((0 + 0 + 1 + 1) / 3); group 1 has no spread."""
    out = group_metrics(ONE_PROCESS, torch.tensor([1.0, 1.0, 0.0, 2.0]), group=2)
    assert out["reward"] == 1.0 and out["reward_std"] == pytest.approx(math.sqrt(2 / 3), abs=1e-6)
    assert out["frac_reward_zero_std"] == 0.5
    assert "frac_reward_zero_std" not in group_metrics(ONE_PROCESS, torch.tensor([1.0, 2.0]), group=1)


def test_completion_metrics_by_hand():
    """Policy tokens per episode [2, 0, 3]; one of three episodes hit max_new_tokens; 4 + 5 + 6 tokens in all."""
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    traj = SimpleNamespace(missing_eos=torch.tensor([0.0, 0.0, 1.0]), attention_mask=attention)
    out = completion_metrics(ONE_PROCESS, traj, mask)
    assert out["completions/mean_length"] == pytest.approx(5 / 3)
    assert (out["completions/min_length"], out["completions/max_length"]) == (0.0, 3.0)
    assert out["completions/clipped_ratio"] == pytest.approx(1 / 3) and out["tokens_this_iteration"] == 15.0


def test_per_env_success_splits_by_environment_id():
    traj = SimpleNamespace(success=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    out = per_env_success(ONE_PROCESS, traj, ["a/X-v0", "a/X-v0", "m:make", "m:make"])
    assert out == {"env/a/X-v0/success_rate": 0.5, "env/m:make/success_rate": 1.0}


def test_renamed_metrics_are_logged_under_both_names():
    row = with_trl_names({"policy/approx_kl": 0.01, "val/loss": 2.0, "env/success_rate": 0.5})
    assert row["policy/approxkl_avg"] == 0.01 and row["loss/value_avg"] == 2.0
    assert row["policy/approx_kl"] == 0.01 and "loss/policy_avg" not in row  # only what was logged is renamed
    assert set(RENAMED.values()) >= {"policy/approx_kl", "policy/clipfrac", "policy/loss", "val/loss"}
