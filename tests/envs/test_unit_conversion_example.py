"""examples/unit_conversion.py: a user task family on ToolUseEnv, built from its spec and played by the engine.

The CLI tests run `rlagent rollout --env examples.unit_conversion:make_env` and one `rlagent ppo` iteration on it.
"""

import json

import pytest

from envs import check_env, check_step, make_env
from envs.experts import ScriptedExpert, run_expert_episode
from examples.unit_conversion import METRES_PER_UNIT, convert, sample_task
from rlagent.common.tiny import build_tiny_tokenizer
from rlagent.rollout.engine import run_episodes
from rlagent.rollout.policies import TextPolicy
from tests.conftest import SMALL_MODEL, read_metrics, run_cli

SPEC = "examples.unit_conversion:make_env"


def test_convert_tool_numbers():
    assert convert(3, "km", "m") == "3000"
    assert convert(1, "mi", "ft") == "5280"  # 1609.344 / 0.3048 = 5280 exactly
    assert convert(12, "in", "ft") == "1"
    assert convert(1, "ft", "cm") == "30.48"
    assert convert(1, "km", "parsec").startswith("Error:")


def test_tasks_are_deterministic_and_splits_disjoint():
    import random

    def prompts(split, seeds):
        return {sample_task(random.Random(seed), split).prompt for seed in seeds}

    assert prompts("train", [7]) == prompts("train", [7])
    train, test = prompts("train", range(400)), prompts("test", range(400))
    assert train and test and not train & test


def test_spec_builds_the_split_and_passes_the_protocol():
    env = make_env(SPEC, split="test", max_turns=3)
    info = check_env(env, SPEC)
    assert env.split == "test" and env.max_turns == 3 and env.task_family == "units"
    assert [schema["function"]["name"] for schema in info["tools"]] == ["convert"]
    properties = info["tools"][0]["function"]["parameters"]["properties"]
    assert properties["value"]["type"] == "number" and set(properties) == {"value", "from_unit", "to_unit"}
    assert info["task"]["split"] == "test" and info["task"]["solution"][0]["name"] == "convert"


def test_expert_solves_and_wrong_answer_fails():
    env = make_env(SPEC, split="train")
    solved = run_expert_episode(env, ScriptedExpert(), seed=3)
    assert solved["success"] and solved["reward"] == 1.0 and solved["turns"] == 2
    tool_message = solved["messages"][-2]
    call = solved["task"]["solution"][0]["arguments"]
    factor = METRES_PER_UNIT[call["from_unit"]] / METRES_PER_UNIT[call["to_unit"]]
    assert tool_message["role"] == "tool" and float(tool_message["content"]) == pytest.approx(
        call["value"] * factor, rel=5e-6
    )  # 6 significant digits
    guessed = run_expert_episode(env, ScriptedExpert(noise=1.0, modes=("guess",)), seed=3)
    assert not guessed["success"] and guessed["reward"] == 0.0 and guessed["turns"] == 1


def test_step_results_pass_check_step():
    env = make_env(SPEC)
    _, info = env.reset(seed=1)
    expert = ScriptedExpert()
    result = env.step(expert.act(info))
    check_step(result, SPEC)
    assert result[4]["tool_calls"] == 1 and not result[2]
    result = env.step(expert.act(result[4], info["task"]))
    check_step(result, SPEC)
    assert result[2] and result[4]["success"]


def test_scripted_rollout_through_the_engine():
    tokenizer = build_tiny_tokenizer()
    envs = [make_env(SPEC, split="test") for _ in range(4)]
    policy = TextPolicy(lambda seed: ScriptedExpert(seed=seed).act, tokenizer, per_episode=True)
    traj = run_episodes(policy, envs, seeds=[0, 1, 2, 3], tokenizer=tokenizer)
    assert traj.success.tolist() == [1.0] * 4 and traj.turns.tolist() == [2.0] * 4
    assert traj.tool_calls.tolist() == [1.0] * 4 and traj.invalid_tool_calls.sum() == 0
    assert traj.render_mismatch == [False] * 4  # the engine's tokens are exactly a fresh render
    assert all(schema[0]["function"]["name"] == "convert" for schema in traj.tools)


def test_rollout_cli_plays_the_example(tmp_path):
    save = tmp_path / "episodes.jsonl"
    run_cli("rlagent", "rollout", "--env", SPEC, "--policy", "scripted", "--episodes", "3", "--seed", "0",
            "--save", str(save))  # fmt: skip
    rows = [json.loads(line) for line in save.read_text().splitlines()]
    assert len(rows) == 3 and all(row["success"] for row in rows)


@pytest.mark.slow
def test_one_ppo_iteration_on_the_example(tmp_path):
    run_cli("rlagent", "ppo", f"output_dir={tmp_path}", "model.name_or_path=tiny", *SMALL_MODEL, "progress=false",
            f"env.ids=[{SPEC}]", "env.episodes=4", "optim.batch_size=4", "optim.micro_batch_size=4", "max_steps=1",
            "save_every=0", "rollout.max_new_tokens=32", "rollout.max_total_tokens=512")  # fmt: skip
    assert [row["step"] for row in read_metrics(tmp_path)] == [1]


def test_demonstrations_and_preference_pairs_from_the_spec():
    from envs.experts import generate_demonstrations, generate_preference_pairs

    rows = generate_demonstrations(SPEC, episodes=4, seed=0)
    assert len(rows) == 4 and all(row["tools"][0]["function"]["name"] == "convert" for row in rows)
    pairs = generate_preference_pairs(SPEC, n_pairs=2, seed=0)
    assert all(pair["chosen_reward"] == 1.0 > pair["rejected_reward"] for pair in pairs)
