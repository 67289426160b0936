"""envs.protocol: check_env / check_step accept the built-in envs and name the missing piece of a broken one."""

import gymnasium as gym
import pytest
from gymnasium import spaces

from envs import EnvProtocolError, check_env, check_step, make_env

PROMPT = [{"role": "user", "content": "What is 2+2?"}]


class MinimalEnv(gym.Env):
    """The least an environment needs: messages at reset, messages + env_messages at step."""

    action_space = spaces.Text(100)
    observation_space = spaces.Text(100)

    def __init__(self, reset_info=None, step_info=None):
        self.reset_info = {"messages": list(PROMPT)} if reset_info is None else reset_info
        self.step_info = step_info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "", self.reset_info

    def step(self, action):
        tool = {"role": "tool", "name": "calc", "content": "4"}
        info = self.step_info or {"messages": PROMPT + [{"role": "assistant", "content": action}, tool],
                                  "env_messages": [tool]}  # fmt: skip
        return "4", 0.0, False, False, info


@pytest.mark.parametrize("spec", ["rlagent/Calculator-v0", "rlagent/KBSearch-v0"])
def test_builtin_envs_pass(spec):
    env = make_env(spec)
    info = check_env(env, spec)
    check_step(env.step("<tool_call>{bad</tool_call>"), spec)
    assert info["messages"][-1]["role"] == "user"


def test_minimal_env_passes():
    env = MinimalEnv()
    check_env(env, "mine:MinimalEnv")
    check_step(env.step("x"), "mine:MinimalEnv")


@pytest.mark.parametrize(
    ("reset_info", "expected"),
    [
        ({}, "reset() info lacks 'messages' (the chat history"),
        ({"messages": []}, "is empty"),
        ({"messages": "hi"}, "must be a list of messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "info['messages'][0].role' must be one of"),
        ({"messages": [{"role": "user", "content": 3}]}, "[0].content' must be a string"),
        ({"messages": PROMPT + [{"role": "assistant", "content": "4"}]}, "ends with an assistant message"),
        ({"messages": PROMPT, "tools": {"name": "calc"}}, "info['tools'] must be a list"),
        ({"messages": PROMPT, "tools": [{"name": "calc"}]}, "info['tools'][0] is not a tool schema"),
        ({"messages": PROMPT, "task": "2+2"}, "info['task'] must be a dict"),
        ({"messages": PROMPT, "task": {"f": object()}}, "not JSON-serialisable"),
    ],
)
def test_broken_reset_info_is_named(reset_info, expected):
    with pytest.raises(EnvProtocolError) as error:
        check_env(MinimalEnv(reset_info=reset_info), "mypkg:MyEnv")
    message = str(error.value)
    assert message.startswith("rlagent: environment 'mypkg:MyEnv' ") and expected in message


def test_text_action_space_required():
    env = MinimalEnv()
    env.action_space = spaces.Discrete(3)
    with pytest.raises(EnvProtocolError, match="action_space is Discrete; it must be gymnasium.spaces.Text"):
        check_env(env, "mypkg:MyEnv")


def test_reset_that_raises_is_named():
    class Broken(MinimalEnv):
        def reset(self, *, seed=None, options=None):
            raise KeyError("data.csv")

    with pytest.raises(EnvProtocolError, match=r"'mypkg:Broken' reset\(seed=0\) raised KeyError: 'data.csv'"):
        check_env(Broken(), "mypkg:Broken")


@pytest.mark.parametrize(
    ("step_info", "expected"),
    [
        ({"env_messages": []}, "step() info lacks 'messages'"),
        ({"messages": PROMPT}, "step() info lacks 'env_messages'"),
        ({"messages": PROMPT, "env_messages": [{"role": "tool", "content": "4"}]}, "must end with info['env_mess"),
        ({"messages": PROMPT, "env_messages": [], "reward_components": {"x": "1"}}, "reward_components"),
    ],
)
def test_broken_step_info_is_named(step_info, expected):
    env = MinimalEnv(step_info=step_info)
    env.reset()
    with pytest.raises(EnvProtocolError) as error:
        check_step(env.step("x"), "mypkg:MyEnv")
    assert "'mypkg:MyEnv'" in str(error.value) and expected in str(error.value)


def test_step_shape_and_reward_type():
    with pytest.raises(EnvProtocolError, match="must return"):
        check_step(("obs", 0.0, False, {}), "m:E")
    with pytest.raises(EnvProtocolError, match="reward must be a number"):
        check_step(("obs", "high", True, False, {"messages": PROMPT}), "m:E")
    check_step(("obs", 1, True, False, {"messages": PROMPT}), "m:E")  # env_messages not needed at the end
