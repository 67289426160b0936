"""Scripted experts: perfect without noise, worse with it; demonstrations and preference pairs."""

import json

import gymnasium as gym
import pytest

from envs import ENV_IDS
from envs.experts import (
    FAILURE_MODES,
    ScriptedExpert,
    generate_demonstrations,
    generate_preference_pairs,
    run_expert_episode,
)
from envs.parsing import format_tool_call
from envs.tasks import levels

N_EPISODES = 200


def success_rate(env_id, noise, options=None, split="test", seed=0):
    env = gym.make(env_id, split=split)
    expert = ScriptedExpert(noise=noise, seed=seed)
    episodes = [run_expert_episode(env, expert, s, options) for s in range(N_EPISODES)]
    return sum(e["success"] for e in episodes) / len(episodes), episodes


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_noise_free_expert_solves_every_test_episode(env_id):
    family = gym.make(env_id).unwrapped.task_family
    for level in levels(family):
        rate, episodes = success_rate(env_id, 0.0, options={"difficulty": level})
        assert rate == 1.0, f"{env_id} level {level}"
        assert all(e["reward"] == 1.0 for e in episodes)
    rate, episodes = success_rate(env_id, 0.0)
    assert rate == 1.0 and {e["task"]["difficulty"] for e in episodes} == set(levels(family))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_noisy_expert_succeeds_less(env_id):
    rate, _ = success_rate(env_id, 0.3)
    print(f"{env_id}: success at noise 0.3 = {rate:.3f}")
    assert 0.55 <= rate <= 0.85  # every noisy episode fails, so about 1 - 0.3


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_every_failure_mode_fails(env_id, mode):
    env = gym.make(env_id, split="train")
    expert = ScriptedExpert(noise=1.0, seed=1, modes=(mode,))
    assert not any(run_expert_episode(env, expert, s)["success"] for s in range(30))


def test_expert_call_is_the_template_string():
    env = gym.make("rlagent/Calculator-v0")
    _, info = env.reset(seed=0)
    text = ScriptedExpert().act(info["messages"], info["task"])
    assert text == format_tool_call("calculator", {"expression": info["task"]["expression"]})


def test_demonstrations():
    rows = generate_demonstrations("rlagent/KBSearch-v0", 40, noise=0.5, seed=3)
    assert len(rows) == 40 and rows == generate_demonstrations("rlagent/KBSearch-v0", 40, noise=0.5, seed=3)
    assert all(set(row) == {"messages", "tools"} for row in rows)
    assert json.loads(json.dumps(rows)) == rows
    good = generate_demonstrations("rlagent/KBSearch-v0", 40, noise=0.5, seed=3, only_successful=True)
    assert 0 < len(good) < 40 and all(row["messages"][-1]["role"] == "assistant" for row in good)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_preference_pairs_share_the_task(env_id):
    pairs = generate_preference_pairs(env_id, 20, noise=0.2, seed=4)
    env = gym.make(env_id)
    assert len(pairs) == 20
    for pair in pairs:
        assert pair["prompt"][-1]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
        assert pair["chosen_reward"] == 1.0 and pair["rejected_reward"] <= 0.0
        assert env.reset(seed=pair["seed"])[1]["messages"] == pair["prompt"]  # same task for both
        assert pair["chosen"] != pair["rejected"]


def test_render_through_the_tiny_chat_template():
    """The expert's call text is exactly what the tiny chat template renders for the structured call."""
    tiny = pytest.importorskip("rlagent.common.tiny")
    template = getattr(tiny, "CHAT_TEMPLATE", None)
    if template is None:
        pytest.skip("rlagent.common.tiny has no CHAT_TEMPLATE")
    from transformers.utils.chat_template_utils import render_jinja_template

    env = gym.make("rlagent/Calculator-v0")
    expert = ScriptedExpert()
    _, info = env.reset(seed=0)
    call_text = expert.act(info, info["task"])
    messages = env.step(call_text)[4]["messages"]
    rendered, _ = render_jinja_template([messages], tools=info["tools"], chat_template=template)
    assert f"<|im_start|>assistant\n{call_text}<|im_end|>" in rendered[0]
