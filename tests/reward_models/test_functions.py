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


# ---------------------------------------------------------------------------------------------------------------------
# TRL's batch signature: fn(completions, environments, **columns) -> one value per episode


class Shop:
    """A stand-in environment instance with state a TRL reward function reads."""

    def __init__(self, bought: int) -> None:
        self.bought = bought


class GymLike(SimpleNamespace):
    """A played env: `unwrapped.environment` is the TRL instance (as under envs.TRLEnvironment), `row` its task row."""

    @property
    def unwrapped(self):
        return self


def batch_traj() -> Traj:
    """Three episodes: user prompt, then one or two assistant turns with a tool message between."""
    traj = make_traj([1, 2, 1], [0.0, 0.0, 0.0], seeds=[0, 1, 2])
    traj.messages[1].insert(2, {"role": "tool", "content": "ok"})
    traj.input_ids, traj.policy_mask = torch.arange(6).view(3, 2), torch.tensor([[1, 0], [1, 1], [0, 1]])
    return traj


def test_the_signature_tells_the_forms_apart():
    from reward_models.functions import is_batch_function

    def per_episode(messages, tools, info):
        return 0.0

    def trl(completions, environments, **kwargs):
        return []

    def keywords_only(**kwargs):
        return []

    def prompts_only(prompts, completions):
        return []

    assert [is_batch_function(f) for f in (per_episode, trl, keywords_only, prompts_only)] == [False, True, True, True]
    assert not is_batch_function(len)  # a builtin without a signature is called per episode


def test_a_trl_function_gets_completions_environments_and_columns():
    seen = {}

    def bought(completions, environments, prompts, completion_ids, success, target, **kwargs):
        seen.update(completions=completions, prompts=prompts, ids=completion_ids, target=target, success=success)
        seen["trainer_state"], seen["log_metric"] = kwargs["trainer_state"], kwargs["log_metric"]
        return [float(env.bought) for env in environments]

    envs = [GymLike(environment=Shop(b), row={"target": t, "prompt": "p"}) for b, t in ((2, 5), (0, 6), (1, 7))]
    functions = load_reward_functions([bought], [0.5])
    scores, errors = call_reward_functions(functions, batch_traj(), envs)
    values, weight = scores["bought"]
    assert values.tolist() == [2.0, 0.0, 1.0] and weight == 0.5 and errors == []
    assert seen["prompts"] == [[{"role": "user", "content": "q"}]] * 3  # the messages before the first assistant turn
    assert [len(c) for c in seen["completions"]] == [1, 3, 1] and seen["completions"][1][1]["role"] == "tool"
    assert seen["ids"] == [[0], [2, 3], [5]]  # the policy tokens only
    assert seen["target"] == [5, 6, 7] and seen["success"] == [False] * 3  # the row's columns, then the info keys
    assert seen["trainer_state"] is None and seen["log_metric"]("x", 1.0) is None


def test_a_closed_trl_signature_gets_only_what_it_names_and_none_counts_zero():
    def only_completions(completions):
        return [None, 1.0, 2.0]

    scores, errors = call_reward_functions(load_reward_functions([only_completions]), batch_traj())
    assert scores["only_completions"][0].tolist() == [0.0, 1.0, 2.0] and errors == []  # None: does not apply


@pytest.mark.parametrize(
    "returned, expected_error",
    [([1.0, 2.0], "returned list, not a list of 3 values"), (1.0, "returned float, not a list of 3 values")],
)
def test_a_trl_function_with_the_wrong_shape_fails_every_episode(returned, expected_error):
    def wrong(completions, **kwargs):
        return returned

    scores, errors = call_reward_functions(load_reward_functions([wrong]), batch_traj())
    assert all(math.isnan(v) for v in scores["wrong"][0].tolist())
    assert len(errors) == 3 and expected_error in errors[0]


def test_a_raising_trl_function_drops_the_batch_and_one_bad_value_only_its_episode():
    def raises(completions, **kwargs):
        raise KeyError("target")

    def one_bad(completions, **kwargs):
        return [1.0, "x", 0.5]

    scores, errors = call_reward_functions(load_reward_functions([raises, one_bad]), batch_traj())
    assert all(math.isnan(v) for v in scores["raises"][0].tolist()) and "raised KeyError" in errors[0]
    bad = scores["one_bad"][0].tolist()
    assert bad[0] == 1.0 and math.isnan(bad[1]) and bad[2] == 0.5
    assert errors[-1] == "reward function 'one_bad' on episode 1: returned str, not a number"


def test_score_episodes_logs_mean_and_std_of_every_component():
    """turns_bonus on turns [1, 2, 3, 1] = [0.25, 0.5, 0.75, 0.25]: mean 0.4375, unbiased std
    sqrt(((-0.1875)^2 + 0.0625^2 + 0.3125^2 + (-0.1875)^2) / 3) = sqrt(0.171875 / 3) = 0.239357...
    The environment's own components (a TRL environment's reward functions, or correct/wrong) are logged the same
    way, an episode without one counting 0: "correct" on [1, 0, 1, 0] has mean 0.5, std sqrt(1/3)."""
    reward = load_config(PPOConfig, None, []).reward
    traj = make_traj([1, 2, 3, 1], [1.0, 0.0, 1.0, 0.0], seeds=[2, 3, 4, 6])
    traj.reward_components = [{"correct": 1.0}, {}, {"correct": 1.0}, {"wrong": 0.0}]
    functions = load_reward_functions([f"{PLUGIN}:turns_bonus"])
    _, _, stats = score_episodes(reward, traj, None, None, reward_functions=functions)
    assert stats["reward/turns_bonus/mean"] == pytest.approx(0.4375, abs=1e-6)
    assert stats["reward/turns_bonus/std"] == pytest.approx(math.sqrt(0.171875 / 3), abs=1e-6)
    assert stats["reward/turns_bonus"] == stats["reward/turns_bonus/mean"]  # the old name, an alias for one release
    assert stats["reward/correct/mean"] == 0.5 and stats["reward/correct/std"] == pytest.approx(math.sqrt(1 / 3))
    assert stats["reward/wrong/mean"] == 0.0 and stats["reward/wrong/std"] == 0.0
