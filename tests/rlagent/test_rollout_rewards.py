"""The engine's truncation penalty is the environment's own `rewards["truncated"]`, never a copy of its default."""

import pytest

from envs.parsing import format_tool_call
from rlagent.common.tiny import build_tiny_tokenizer
from rlagent.rollout.engine import make_envs, run_episodes, truncation_penalty
from rlagent.rollout.policies import TextPolicy

CALC = "rlagent/Calculator-v0"


def always_calls(messages, task):
    return format_tool_call("calculator", {"expression": "1+1"})


def test_budget_truncation_charges_the_environments_penalty():
    tokenizer = build_tiny_tokenizer()
    policy = TextPolicy(always_calls, tokenizer)
    envs = make_envs(CALC, 1, rewards={"truncated": -2.0})
    roomy = run_episodes(policy, envs, [0], tokenizer, max_total_tokens=4096)
    first_turn_end = roomy.spans[0][1][1]  # (start, end, "policy") of the first assistant turn
    # One token of room after the first turn: the environment's reply cannot fit, so the engine ends the episode.
    traj = run_episodes(policy, envs, [0], tokenizer, max_total_tokens=first_turn_end + 1)
    assert traj.turns.tolist() == [1.0] and traj.truncated.tolist() == [1.0]
    assert traj.reward_components[0]["truncated"] == -2.0
    # the call itself is valid (valid_call 0.0), so the episode's reward is the penalty alone
    assert traj.env_reward.tolist() == [-2.0]


def test_an_environment_without_a_truncation_reward_is_an_error():
    class NoRewards:
        spec = None

    with pytest.raises(ValueError, match=r"NoRewards has no rewards\['truncated'\]"):
        truncation_penalty(NoRewards())
    assert truncation_penalty(make_envs(CALC, 1)[0]) == -0.5  # envs.env.DEFAULT_REWARDS
