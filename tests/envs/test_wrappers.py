"""envs.wrappers: PromptInjection and ToolFaults at rates 0 and 1 exactly, determinism by seed, consistent history."""

import pytest

from envs import PromptInjection, ToolFaults, make_env, wrap_env
from envs.experts import ScriptedExpert
from envs.parsing import format_tool_call
from envs.wrappers import DEFAULT_INJECTION, DEFAULT_RATE
from rlagent.common.tiny import build_tiny_tokenizer
from rlagent.rollout.engine import run_episodes
from rlagent.rollout.policies import TextPolicy

CALC = "rlagent/Calculator-v0"
UNITS = "examples.unit_conversion:make_env"


def play(env, seed: int) -> list[dict]:
    """One scripted-expert episode; the info of every step."""
    _, info = env.reset(seed=seed)
    expert, task, infos, done = ScriptedExpert(), info["task"], [], False
    while not done:
        _, _, terminated, truncated, info = env.step(expert.act(info, task))
        infos.append(info)
        done = terminated or truncated
    return infos


@pytest.mark.parametrize("spec", [CALC, UNITS])
def test_injection_rate_one_hits_every_tool_result_and_stays_in_history(spec):
    env = PromptInjection(make_env(spec), rate=1.0)
    _, info = env.reset(seed=4)
    observation, reward, _, _, info = env.step(ScriptedExpert().act(info))
    tool = info["env_messages"][0]
    assert tool["role"] == "tool" and tool["content"].endswith("\n" + DEFAULT_INJECTION)
    assert observation == tool["content"] and info["injected"] == 1 and reward == 0.0
    assert info["messages"][-1] == tool
    _, _, terminated, _, final = env.step("The answer is 0.")
    assert terminated and final["injected"] == 0
    assert final["messages"][len(info["messages"]) - 1] == tool  # later histories show what the agent saw


def test_rate_zero_changes_nothing():
    plain, wrapped = make_env(CALC), ToolFaults(PromptInjection(make_env(CALC), rate=0.0), rate=0.0)
    for a, b in zip(play(plain, 9), play(wrapped, 9)):
        assert a["messages"] == b["messages"] and a["env_messages"] == b["env_messages"]
        assert b["injected"] == 0 and b["tool_fault"] == 0


def test_env_error_feedback_is_not_a_tool_result():
    env = PromptInjection(make_env(CALC), rate=1.0)
    env.reset(seed=0)
    _, _, _, _, info = env.step("<tool_call>{broken</tool_call>")
    assert info["env_messages"][0]["name"] == "error" and info["injected"] == 0
    assert DEFAULT_INJECTION not in info["env_messages"][0]["content"]


@pytest.mark.parametrize(
    ("kind", "text"),
    [("timeout", "Error: calculator timed out"), ("error", "Error: calculator failed: the service is unavailable")],
)
def test_tool_faults_rate_one(kind, text):
    env = ToolFaults(make_env(CALC), rate=1.0, kind=kind)
    _, info = env.reset(seed=2)
    observation, _, _, _, info = env.step(ScriptedExpert().act(info))
    assert info["tool_fault"] == 1 and info["env_messages"][0]["content"].startswith(text)
    assert observation == info["env_messages"][0]["content"] and info["messages"][-1] == info["env_messages"][0]


def test_hits_are_a_function_of_the_seeds():
    def pattern(wrapper_seed: int, seeds) -> list[int]:
        env = PromptInjection(make_env(CALC), rate=0.5, seed=wrapper_seed)
        env.reset(seed=123)  # an earlier episode must not shift the next one's draws
        return [play(env, seed)[0]["injected"] for seed in seeds]

    seeds = range(40)
    first = pattern(0, seeds)
    assert pattern(0, seeds) == first
    assert pattern(0, list(seeds)[::-1]) == first[::-1]  # per episode, not per call order
    assert 8 <= sum(first) <= 32  # rate 0.5 over 40 episodes (binomial: outside this range p < 1e-4)
    assert pattern(1, seeds) != first


def test_engine_tokens_match_the_rewritten_history():
    tokenizer = build_tiny_tokenizer()
    envs = [PromptInjection(ToolFaults(make_env(CALC), rate=0.5), rate=1.0, seed=s) for s in range(4)]
    policy = TextPolicy(lambda seed: ScriptedExpert(seed=seed).act, tokenizer, per_episode=True)
    traj = run_episodes(policy, envs, seeds=[0, 1, 2, 3], tokenizer=tokenizer)
    assert traj.render_mismatch == [False] * 4
    assert all(any(DEFAULT_INJECTION in str(m.get("content")) for m in messages) for messages in traj.messages)


def test_wrap_env_spec():
    env = wrap_env(make_env(CALC), "prompt_injection:0.3, tool_faults:0.2:timeout", seed=5)
    assert isinstance(env, ToolFaults) and env.rate == 0.2 and env.kind == "timeout" and env.seed == 5
    assert isinstance(env.env, PromptInjection) and env.env.rate == 0.3
    bare = wrap_env(make_env(CALC), "tool_faults")  # DESIGN's `--wrapper prompt_injection|tool_faults`
    assert isinstance(bare, ToolFaults) and bare.rate == DEFAULT_RATE and bare.kind == "error"
    plain = make_env(CALC)
    assert wrap_env(plain, None) is plain and wrap_env(plain, "") is plain
    for bad, expected in [
        ("injection:0.3", "cannot read"),
        ("prompt_injection:0.1:x", "cannot read"),
        ("prompt_injection:lots", "is not a number"),
        ("prompt_injection:1.5", r"rate must be in \[0, 1\]"),
        ("tool_faults:0.1:crash", "kind"),
    ]:
        with pytest.raises(ValueError, match=expected):
            wrap_env(make_env(CALC), bad)


def test_wrappers_work_on_a_trl_style_env():
    from envs import TRLEnvironment
    from examples.trl_counter import Counter, rows

    env = ToolFaults(TRLEnvironment(Counter, tasks=rows), rate=1.0)
    env.reset(seed=0)
    _, _, _, _, info = env.step(format_tool_call("increment", {"by": 1}))
    assert info["tool_fault"] == 1 and env.unwrapped.environment.count == 1  # the call ran; its result was lost
