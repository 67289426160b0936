"""reward_models.functions and combine_rewards: user reward functions, weighted into the score; failures -> NaN."""

import math
from types import SimpleNamespace

import pytest
import torch

from reward_models.combine import combine_rewards
from reward_models.functions import RewardFunctionError, call_reward_functions, load_reward_functions
from rlagent.common.config import load_config
from rlagent.train_ppo import PPOConfig
from rlagent.training.episode_scores import score_episodes

PLUGIN = "tests.envs.byo_plugin"


class Traj(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.messages)


def make_traj(turns: list[int], env_reward: list[float], seeds: list[int]) -> Traj:
    """A Trajectory stand-in: episode i has turns[i] assistant messages."""
    n = len(turns)
    return Traj(
        messages=[[{"role": "user", "content": "q"}] + [{"role": "assistant", "content": "a"}] * t for t in turns],
        tools=[None] * n, tasks=[{}] * n, success=torch.zeros(n), env_reward=torch.tensor(env_reward),
        reward_components=[{}] * n, turns=torch.tensor(turns, dtype=torch.float32), tool_calls=torch.zeros(n),
        truncated=torch.zeros(n), seeds=seeds, missing_eos=torch.zeros(n), policy_mask=torch.ones(n, 2),
    )  # fmt: skip


def test_combine_rewards_by_hand():
    env, rm = torch.tensor([1.0, 0.0]), torch.tensor([0.5, -1.0])
    functions = {"a": (torch.tensor([2.0, 4.0]), 0.5), "b": (torch.tensor([1.0, 1.0]), -1.0)}
    # 2 x env + 0.1 x rm + 0.5 x a - 1 x b = [2 + 0.05 + 1 - 1, 0 - 0.1 + 2 - 1]
    assert combine_rewards(env, rm, 2.0, 0.1, functions).tolist() == pytest.approx([2.05, 0.9], abs=1e-6)
    assert combine_rewards(env, None, 1.0, 0.0, functions).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    zero_weight_nan = {"c": (torch.tensor([math.nan, 1.0]), 0.0)}
    scores = combine_rewards(env, None, 1.0, 0.0, zero_weight_nan)
    assert math.isnan(scores[0]) and scores[1] == 0.0  # a failed function drops its episode even at weight 0
    with pytest.raises(ValueError, match="reward function 'a' gave"):
        combine_rewards(env, None, 1.0, 0.0, {"a": (torch.zeros(3), 1.0)})


def test_load_errors_name_the_entry():
    for specs, weights, expected in [
        (["nocolon"], None, "is not 'module:function'"),
        (["no_such_module_xyz:f"], None, "importing 'no_such_module_xyz'"),
        ([f"{PLUGIN}:missing"], None, "has no attribute 'missing'"),
        ([f"{PLUGIN}:turns_bonus"], [1.0, 2.0], "has 2 entries but reward.functions has 1"),
        ([f"{PLUGIN}:turns_bonus", f"{PLUGIN}:turns_bonus"], None, "two functions are named 'turns_bonus'"),
    ]:
        with pytest.raises(RewardFunctionError, match=expected):
            load_reward_functions(specs, weights)


def test_failures_become_nan_with_a_reason():
    functions = load_reward_functions([f"{PLUGIN}:turns_bonus", f"{PLUGIN}:broken_on_odd_seeds"], [2.0, 0.0])
    scores, errors = call_reward_functions(functions, make_traj([1, 2, 3, 1], [0.0] * 4, seeds=[2, 3, 4, 6]))
    values, weight = scores["turns_bonus"]
    assert values.tolist() == [0.25, 0.5, 0.75, 0.25] and weight == 2.0
    broken = scores["broken_on_odd_seeds"][0].tolist()
    assert broken[0] == 1.0 and math.isnan(broken[1]) and math.isnan(broken[2]) and broken[3] == 1.0
    assert errors == [
        "reward function 'broken_on_odd_seeds' on episode 1: raised RuntimeError: odd seed",
        "reward function 'broken_on_odd_seeds' on episode 2: returned nan",
    ]


def test_score_episodes_adds_logs_and_drops(capsys):
    """env 1 x [1, 0, 1, 0] + 2 x turns_bonus [0.25, 0.5, 0.75, 0.25]; episodes 1 and 2 fail the broken function."""
    reward = load_config(PPOConfig, None, []).reward
    functions = load_reward_functions([f"{PLUGIN}:turns_bonus", f"{PLUGIN}:broken_on_odd_seeds"], [2.0, 0.0])
    traj = make_traj([1, 2, 3, 1], [1.0, 0.0, 1.0, 0.0], seeds=[2, 3, 4, 6])
    scores, mask, stats = score_episodes(reward, traj, None, None, reward_functions=functions)
    assert scores.tolist() == pytest.approx([1.5, 0.0, 0.0, 0.5], abs=1e-6)
    assert mask.sum(1).tolist() == [2.0, 0.0, 0.0, 2.0]
    assert stats["reward/turns_bonus"] == pytest.approx(0.4375, abs=1e-6)  # (0.25 + 0.5 + 0.75 + 0.25) / 4
    assert stats["reward/broken_on_odd_seeds"] == 1.0 and stats["reward/function_errors"] == 2
    assert stats["objective/nonfinite_scores"] == 2
    assert "on episode 1: raised RuntimeError: odd seed (2 failure(s)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "returned, expected",
    [("0.5", None), (b"1", None), (None, None), ([1.0], None), (0.5, 0.5), (True, 1.0), (torch.tensor(0.25), 0.25)],
)
def test_only_numbers_are_scores(returned, expected):
    """A string such as "0.5" is a bug in the function, not a score: the episode is dropped with a reason."""
    from reward_models.functions import _call

    value, error = _call(lambda messages, tools, info: returned, [], None, {})
    if expected is None:
        assert math.isnan(value) and "not a number" in error
    else:
        assert value == expected and error is None
