"""envs.trl_adapter.TRLEnvironment: a TRL environment_factory class played with scripted turns, and through TRL."""

import asyncio

import pytest

from envs import TRLEnvironment, check_env, check_step, make_env
from envs.parsing import format_tool_call
from examples.trl_counter import Counter, rows, said_the_count
from rlagent.common.tiny import build_tiny_tokenizer
from rlagent.rollout.engine import run_episodes
from rlagent.rollout.policies import TextPolicy

SPEC = "examples.trl_counter:make_env"


def increment(by) -> str:
    return format_tool_call("increment", {"by": by})


def test_multi_turn_episode_with_tools_and_final_answer():
    env = make_env(SPEC, split="train")
    _, info = env.reset(seed=11)  # row 11 % 10 = 1: target 3
    assert info["messages"] == rows("train")[1]["prompt"]
    assert [schema["function"]["name"] for schema in info["tools"]] == ["increment", "read"]
    assert info["tools"][0]["function"]["parameters"]["properties"]["by"]["type"] == "integer"
    _, reward, terminated, _, info = env.step(increment(2))
    assert info["env_messages"] == [{"role": "tool", "name": "increment", "content": "The counter is at 2."}]
    assert (reward, terminated, info["tool_calls"], info["invalid_tool_call"]) == (0.0, False, 1, False)
    check_step(env.step(format_tool_call("read", {})), SPEC)
    _, reward, terminated, truncated, info = env.step(increment(1))
    _, reward, terminated, truncated, info = env.step("The count is 3.")
    assert terminated and not truncated and info["success"]
    assert info["reward_components"] == {"said_the_count": 0.5, "Counter": 1.0} and reward == 1.5
    assert env.unwrapped.environment.count == 3


def test_reward_functions_get_trl_arguments():
    seen = {}

    def record(prompts, completions, completion_ids, environments, trainer_state, log_extra, log_metric, **columns):
        seen.update(prompts=prompts, completions=completions, environments=environments, columns=columns)
        log_metric("x", 1.0)  # TRL's hooks exist and do nothing here
        return [None]  # None: not applicable, no component

    env = TRLEnvironment(Counter, tasks=rows("test"), reward_funcs=[record], split="test")
    env.reset(seed=0)
    env.step(increment(5))
    _, reward, _, _, info = env.step("Done: 5")
    assert seen["columns"] == {"target": [12]} and seen["environments"] == [env.environment]
    assert seen["prompts"] == [rows("test")[0]["prompt"]]
    assert [m["role"] for m in seen["completions"][0]] == ["assistant", "tool", "assistant"]
    assert seen["completions"][0][-1]["content"] == "Done: 5"
    assert info["reward_components"] == {"Counter": 0.0} and reward == 0.0 and not info["success"]


def test_turn_limit_truncates_and_still_scores():
    env = TRLEnvironment(Counter, tasks=[{"prompt": "Count to 2.", "target": 2}], max_turns=2, reward_funcs=[])
    env.reset(seed=0)
    env.step(increment(1))
    _, reward, terminated, truncated, info = env.step(increment(1))
    assert truncated and not terminated and info["success"]
    assert info["reward_components"] == {"valid_call": 0.0, "truncated": -0.5, "Counter": 1.0}
    assert reward == pytest.approx(0.5)


def test_tool_errors_are_invalid_calls_not_exceptions():
    env = TRLEnvironment(Counter, tasks=rows("train"))
    env.reset(seed=0)
    _, reward, _, _, info = env.step(increment(9))
    assert info["env_messages"][0]["content"] == "Error: increment failed: ValueError: by must be between 1 and 5"
    assert info["invalid_tool_call"] and reward == pytest.approx(-0.1)
    _, _, _, _, info = env.step(format_tool_call("reset", {}))  # reset and get_reward are not tools
    assert info["invalid_tool_call"] and "unknown tool 'reset'" in info["env_messages"][0]["content"]
    _, _, _, _, info = env.step(increment("two"))
    assert "must be of type int" in info["env_messages"][0]["content"]


class OwnData:
    """An environment that owns its data: reset(seed) returns the prompt (TRL's dataset-free mode)."""

    def reset(self, seed: int, split: str) -> str:
        self.target = seed % 7
        return f"Say {self.target} ({split})."

    def noop(self) -> str:
        """Do nothing."""
        return ""

    def get_reward(self) -> float:
        return 2.0


def test_env_that_owns_its_data_gets_seed_and_split():
    env = TRLEnvironment(OwnData, split="test", system_prompt="Be brief.")
    _, info = env.reset(seed=10)
    assert info["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say 3 (test)."},
    ]
    check_env(env, "OwnData")
    assert env.step("3")[1] == 2.0


def test_prompt_row_string_and_reset_string_are_joined():
    class Suffix(OwnData):
        def reset(self, **row) -> str:
            return " Go."

    env = TRLEnvironment(Suffix, tasks=[{"prompt": "Count."}])
    assert env.reset(seed=0)[1]["messages"] == [{"role": "user", "content": "Count. Go."}]


def test_construction_errors():
    class Silent(OwnData):
        def reset(self, **row) -> None:
            return None

    class NoReward:
        def reset(self, **row):
            return "x"

        def tool(self) -> str:
            """A tool."""
            return ""

    with pytest.raises(ValueError, match="no prompt"):
        TRLEnvironment(Silent).reset(seed=0)
    with pytest.raises(ValueError, match="NoReward: no reward source; pass reward_funcs or define get_reward"):
        TRLEnvironment(NoReward)
    with pytest.raises(ValueError, match="2 weights for 1 reward functions"):
        TRLEnvironment(Counter, reward_funcs=[said_the_count], reward_weights=[1, 2])
    with pytest.raises(ValueError, match="no rows for split 'test'"):
        TRLEnvironment(Counter, tasks=lambda split: rows(split) if split == "train" else [], split="test")
    with pytest.raises(ValueError, match="split must be one of"):
        TRLEnvironment(Counter, split="dev")


def test_weights_and_async_tools_and_rewards():
    class AsyncCounter(Counter):
        async def add_later(self, by: int) -> str:
            """Add asynchronously.

            Args:
                by: How much.
            """
            await asyncio.sleep(0)
            return self.increment(by)

    async def half(environments, **_):
        return [0.5 * environments[0].count]

    env = TRLEnvironment(AsyncCounter, tasks=[{"prompt": "p", "target": 4}], reward_funcs=[half], reward_weights=[3])
    env.reset(seed=0)
    _, _, _, _, info = env.step(format_tool_call("add_later", {"by": 4}))
    assert info["env_messages"][0]["content"] == "The counter is at 4."
    assert env.step("4")[4]["reward_components"] == {"half": 6.0, "AsyncCounter": 1.0}


def test_engine_plays_it_and_tokens_match_the_template():
    tokenizer = build_tiny_tokenizer()
    script = {0: increment(3), 1: "The count is 3."}

    def act(messages, task):
        return script[sum(m["role"] == "assistant" for m in messages)]

    envs = [make_env(SPEC) for _ in range(2)]
    traj = run_episodes(TextPolicy(act, tokenizer), envs, seeds=[1, 2], tokenizer=tokenizer)  # targets 3 and 4
    assert traj.success.tolist() == [1.0, 0.0] and traj.env_reward.tolist() == [1.5, 0.5]
    assert traj.tool_calls.tolist() == [1.0, 1.0] and traj.render_mismatch == [False, False]


@pytest.mark.slow
def test_same_class_trains_one_step_in_trl_grpo(tmp_path):
    """The unchanged class, rows and reward function through TRL's GRPOTrainer(environment_factory=...)."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rlagent.common.config import TinyModelConfig
    from rlagent.common.tiny import build_tiny_model

    resets = []

    class RecordingCounter(Counter):
        def reset(self, target: int = 3, **row) -> None:
            resets.append((target, row["prompt"][0]["content"]))
            super().reset(target, **row)

    tokenizer = build_tiny_tokenizer()  # carries its response_template: GRPOTrainer parses tool calls with it
    cfg = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    model = build_tiny_model(cfg, tokenizer, seed=0).to(torch.float32)
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=48, max_tool_calling_iterations=2, report_to=[], save_strategy="no",
                      disable_tqdm=True, use_cpu=True, bf16=False, logging_steps=1)  # fmt: skip
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=said_the_count,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows("train")),
        environment_factory=RecordingCounter,
    )
    assert [tool.__name__ for tool in trainer._env_tools[None]] == ["increment", "read"]
    trainer.train()
    assert len(resets) == 2 and all(f"to {target}," in prompt for target, prompt in resets)
    assert any("rewards/RecordingCounter/mean" in row for row in trainer.state.log_history)
