"""ToolUseEnv: Gymnasium API compliance, message bookkeeping, rewards, and robustness to any action text."""

import dataclasses
import json
import math
import time
import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs
from envs import ENV_IDS, ToolUseEnv
from envs.parsing import format_tool_call
from envs.tasks import sample_task

CALL = format_tool_call("calculator", {"expression": "23+45"})


def make_calc(**kwargs) -> ToolUseEnv:
    return ToolUseEnv("arithmetic", **kwargs)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(gym.make(env_id).unwrapped, skip_render_check=True)
        check_env(gym.make(env_id, split="test", render_mode="ansi").unwrapped)


def test_make_and_register():
    env = gym.make("rlagent/Calculator-v0", split="test")
    assert env.unwrapped.split == "test" and env.unwrapped.task_family == "arithmetic"
    assert gym.make("rlagent/KBSearch-v0").unwrapped.task_family == "knowledge"
    envs.register_envs()  # idempotent
    assert set(ENV_IDS) <= set(gym.registry)


def test_reset_returns_prompt_messages_tools_and_task():
    env = make_calc(split="test")
    observation, info = env.reset(seed=5)
    task = sample_task("arithmetic", 5, "test", "mixed")
    assert observation == task.prompt and info["task"] == task.to_dict()
    assert [m["role"] for m in info["messages"]] == ["system", "user"]
    assert info["messages"][1]["content"] == task.prompt
    assert [t["function"]["name"] for t in info["tools"]] == ["calculator"]
    assert env.reset(seed=5)[0] == observation
    assert make_calc(system_prompt=None).reset(seed=5)[1]["messages"][0]["role"] == "user"


def test_reset_options_difficulty_and_task():
    env = make_calc()
    for level in (1, 2, 3):
        assert env.reset(seed=1, options={"difficulty": level})[1]["task"]["difficulty"] == level
    task = sample_task("knowledge", 3, "train", 2)
    assert ToolUseEnv("knowledge").reset(options={"task": task.to_dict()})[0] == task.prompt
    with pytest.raises(ValueError, match="difficulty"):
        env.reset(options={"difficulty": 9})


def test_unseeded_resets_are_reproducible_after_a_seeded_one():
    first, second = make_calc(), make_calc()
    assert [first.reset(seed=3)[0]] + [first.reset()[0] for _ in range(3)] == [second.reset(seed=3)[0]] + [
        second.reset()[0] for _ in range(3)
    ]


def test_valid_call_then_correct_answer():
    env = make_calc()
    env.reset(options={"task": dataclasses.replace(sample_task("arithmetic", 0, "train", 1), answer="68")})
    observation, reward, terminated, truncated, info = env.step(CALL)
    assert (observation, reward, terminated, truncated) == ("68", 0.0, False, False)
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "23+45"}}}
    assert info["messages"][-2] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert info["env_messages"] == [{"role": "tool", "name": "calculator", "content": "68"}]
    assert info["messages"][-1] == info["env_messages"][0]
    assert info["tool_calls"] == 1 and not info["invalid_tool_call"] and info["reward_components"] == {"valid_call": 0}
    assert set(info) == {"messages", "env_messages", "reward_components", "success", "tool_calls",
                         "invalid_tool_call", "action_truncated", "turn"}  # fmt: skip
    observation, reward, terminated, truncated, info = env.step("The answer is 68.")
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    assert info["messages"][-1] == {"role": "assistant", "content": "The answer is 68."} and info["env_messages"] == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step("again")


def test_wrong_answer():
    env = make_calc()
    _, info = env.reset(seed=0)
    wrong = str(int(info["task"]["answer"]) + 1)
    _, reward, terminated, _, info = env.step(f"The answer is {wrong}.")
    assert (reward, terminated, info["success"], info["reward_components"]) == (0.0, True, False, {"wrong": 0.0})


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ('<tool_call>{"name": "calculator", "arguments": {}}', "unclosed"),
        (format_tool_call("python", {"code": "1"}), "unknown tool 'python'"),
        (CALL * 5, "at most 4 tool calls"),
    ],
)
def test_invalid_calls_are_error_observations(action, message):
    env = make_calc()
    env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step(action)
    assert observation.startswith("Error:") and message in observation
    assert (reward, terminated, truncated, info["invalid_tool_call"]) == (-0.1, False, False, True)
    assert info["messages"][-2] == {"role": "assistant", "content": action}
    assert info["env_messages"] == [{"role": "tool", "name": "error", "content": observation}]


def test_bad_arguments_are_penalised_but_recorded_as_a_call():
    env = make_calc()
    env.reset(seed=0)
    observation, reward, _, _, info = env.step(format_tool_call("calculator", {"expr": "1+1"}))
    assert observation.startswith("Error: bad arguments") and reward == -0.1 and info["invalid_tool_call"]
    assert info["messages"][-2]["tool_calls"][0]["function"]["arguments"] == {"expr": "1+1"}


def test_several_calls_join_outputs():
    env = make_calc()
    env.reset(seed=0)
    observation, _, _, _, info = env.step(CALL + format_tool_call("calculator", {"expression": "2*3"}))
    assert observation == "68\n6" and info["tool_calls"] == 2
    assert [m["content"] for m in info["env_messages"]] == ["68", "6"]


def test_truncation_at_max_turns_adds_its_penalty():
    env = make_calc(max_turns=2, rewards={"truncated": -1.0})
    env.reset(seed=0)
    assert env.step(CALL)[3] is False
    _, reward, terminated, truncated, info = env.step("<tool_call>oops</tool_call>")
    assert (terminated, truncated) == (False, True)
    assert info["reward_components"] == {"invalid_call": -0.1, "truncated": -1.0} and reward == pytest.approx(-1.1)


def test_default_turn_limits():
    assert gym.make("rlagent/Calculator-v0").unwrapped.max_turns == 4
    assert gym.make("rlagent/KBSearch-v0").unwrapped.max_turns == 5


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="rewards"):
        make_calc(rewards={"corect": 1.0})
    with pytest.raises(ValueError, match="task_family"):
        ToolUseEnv("poetry")
    with pytest.raises(ValueError, match="max_turns"):
        make_calc(max_turns=0)
    with pytest.raises(ValueError, match="unknown tool"):
        make_calc(tools=["calc"])


def slow_echo(text: str) -> str:
    """Echo text slowly.

    Args:
        text: What to echo.
    """
    time.sleep(5)
    return text


def accented(text: str) -> str:
    """Return accented text.

    Args:
        text: Ignored.
    """
    return "café ☕"


def test_user_tools_are_bounded_and_fit_the_space():
    env = make_calc(tools=["envs.tools.calculator:calculator", slow_echo, accented], tool_timeout_s=0.2)
    _, info = env.reset(seed=0)
    assert [t["function"]["name"] for t in info["tools"]] == ["calculator", "slow_echo", "accented"]
    start = time.perf_counter()
    observation = env.step(format_tool_call("slow_echo", {"text": "hi"}))[0]
    assert observation.startswith("Error: slow_echo timed out") and time.perf_counter() - start < 0.5
    observation = env.step(format_tool_call("accented", {"text": "x"}))[0]
    assert observation == "caf? ?" and env.observation_space.contains(observation)


def test_search_top_k_and_observation_bound():
    env = ToolUseEnv("knowledge", top_k=4, max_observation_chars=100)
    _, info = env.reset(seed=0)
    query = info["task"]["hops"][0]
    observation = env.step(format_tool_call("search", {"query": query}))[0]
    assert len(observation) <= 100 and observation.startswith(query)


# ----- property test: no action text makes the env raise -------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
TOOL_NAMES = st.sampled_from(["calculator", "search", "", "CALCULATOR"]) | st.text(max_size=8)
ARGUMENTS = st.dictionaries(
    st.sampled_from(["expression", "query", "x"]) | st.text(max_size=5), JSON_VALUES, max_size=3
)
FRAGMENTS = st.sampled_from(
    ["<tool_call>", "</tool_call>", "{", "}", '"name": ', '"arguments": ', '"calculator"', "9**9**9**9", "\n", " 5"]
)
ACTIONS = st.one_of(
    st.text(max_size=200),
    st.builds(format_tool_call, TOOL_NAMES, ARGUMENTS),
    st.builds(lambda value: f"<tool_call>{json.dumps(value)}</tool_call>", JSON_VALUES),
    st.builds(lambda body: f"<tool_call>\n{body}\n</tool_call>", st.text(max_size=80)),
    st.lists(FRAGMENTS | st.text(max_size=6), max_size=16).map("".join),
)
PROPERTY_ENVS = {family: ToolUseEnv(family, max_turns=3) for family in ("arithmetic", "knowledge")}


@settings(
    max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    family=st.sampled_from(sorted(PROPERTY_ENVS)),
    seed=st.integers(0, 10**6),
    actions=st.lists(ACTIONS, min_size=1, max_size=4),
)
def test_any_action_text_is_handled(family, seed, actions):
    env = PROPERTY_ENVS[family]
    env.reset(seed=seed)
    for action in actions:
        observation, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(observation)
        assert isinstance(reward, float) and math.isfinite(reward)
        assert reward == pytest.approx(sum(info["reward_components"].values()))
        assert info["messages"][-len(info["env_messages"]) - 1]["role"] == "assistant"
        if terminated or truncated:
            break


HOSTILE = {"tower": "9**9**9**9", "power": "10**100000", "dunder": "().__class__", "unicode digits": "\u0661+1"}


@pytest.mark.parametrize("expression", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_call_the_tool_rejects_is_an_invalid_call(expression):
    env = make_calc()
    env.reset(seed=0)
    action = format_tool_call("calculator", {"expression": expression})
    start = time.perf_counter()
    observation, reward, terminated, _, info = env.step(action)
    assert time.perf_counter() - start < 0.1
    assert observation.startswith("Error:") and info["env_messages"][0]["content"] == observation
    assert (reward, terminated, info["invalid_tool_call"], info["tool_calls"]) == (-0.1, False, True, 1)
    assert info["reward_components"] == {"invalid_call": -0.1}
    # Still recorded as the structured call it was (the template renders it as the model wrote it).
    assert info["messages"][-2]["tool_calls"][0]["function"]["arguments"] == {"expression": expression}


def test_one_rejected_call_makes_the_turn_invalid():
    env = make_calc()
    env.reset(seed=0)
    observation, reward, _, _, info = env.step(CALL + format_tool_call("calculator", {"expression": "1/0"}))
    assert observation == "68\nError: division by zero" and reward == -0.1 and info["invalid_tool_call"]


def test_no_results_is_a_valid_search():
    env = ToolUseEnv("knowledge")
    env.reset(seed=0)
    observation, reward, _, _, info = env.step(format_tool_call("search", {"query": "zzz in qqq"}))
    assert observation.startswith("No results") and reward == 0.0 and not info["invalid_tool_call"]
    observation, reward, _, _, info = env.step(format_tool_call("search", {"query": "?!"}))
    assert observation == "Error: empty query" and reward == -0.1 and info["invalid_tool_call"]


@pytest.mark.parametrize("length", [envs.env.MAX_ACTION_CHARS + 1, 200_000])
def test_an_action_over_the_limit_is_an_invalid_turn_cut_to_the_limit(length):
    env = make_calc()
    _, info = env.reset(seed=0)
    # A correct final answer padded past the limit: it must not be graded (nor a call in it run).
    action = (CALL + f"The answer is {info['task']['answer']}.").rjust(length)
    observation, reward, terminated, truncated, info = env.step(action)
    assert observation == "Error: reply longer than 4096 characters; nothing in it was run or graded"
    assert (reward, terminated, truncated) == (-0.1, False, False)
    assert info["action_truncated"] and info["invalid_tool_call"] and info["tool_calls"] == 0
    assert info["messages"][-2] == {"role": "assistant", "content": action[: envs.env.MAX_ACTION_CHARS]}
    assert env.action_space.max_length == envs.env.MAX_ACTION_CHARS == 4096


def test_an_action_at_the_limit_is_played():
    env = make_calc()
    env.reset(options={"task": dataclasses.replace(sample_task("arithmetic", 0, "train", 1), answer="68")})
    action = "The answer is 68.".rjust(envs.env.MAX_ACTION_CHARS)
    _, reward, terminated, _, info = env.step(action)
    assert (reward, terminated, info["success"], info["action_truncated"]) == (1.0, True, True, False)
