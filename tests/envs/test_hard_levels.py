"""The hard levels: reachable by id and by difficulty="hard", solved by the expert, split, deterministic; the
standard levels' "mixed" never draws them."""

import gymnasium as gym
import pytest

from envs import HARD_ENV_IDS
from envs.experts import (
    FAILURE_MODES,
    ScriptedExpert,
    generate_demonstrations,
    generate_preference_pairs,
    run_expert_episode,
)
from envs.tasks import hard_level, levels, sample_task
from envs.tasks.arithmetic import HARD_FORMS
from envs.tasks.task import item_split
from envs.tools.calculator import calculator
from envs.tools.knowledge_base import get_knowledge_base

FAMILY_OF = {"rlagent/Calculator-hard-v0": "arithmetic", "rlagent/KBSearch-hard-v0": "knowledge"}


@pytest.mark.parametrize("env_id", HARD_ENV_IDS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_noise_free_expert_solves_every_hard_episode(env_id, split):
    env = gym.make(env_id, split=split)
    episodes = [run_expert_episode(env, ScriptedExpert(0.0), seed) for seed in range(150)]
    assert all(e["success"] and e["reward"] == 1.0 for e in episodes)
    assert {e["task"]["difficulty"] for e in episodes} == {hard_level(FAMILY_OF[env_id])}


@pytest.mark.parametrize("env_id", HARD_ENV_IDS)
@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_every_failure_mode_fails_on_the_hard_level(env_id, mode):
    env = gym.make(env_id, split="train")
    expert = ScriptedExpert(noise=1.0, seed=1, modes=(mode,))
    assert not any(run_expert_episode(env, expert, seed)["success"] for seed in range(40))


@pytest.mark.parametrize("family", ["arithmetic", "knowledge"])
def test_hard_splits_are_disjoint_and_deterministic(family):
    train = [sample_task(family, seed, "train", "hard") for seed in range(1500)]
    test = [sample_task(family, seed, "test", "hard") for seed in range(400)]
    assert not {t.key for t in train} & {t.key for t in test}
    assert not {t.prompt for t in train} & {t.prompt for t in test}
    assert all(item_split(t.key) == t.split for t in train + test)
    assert not any(t.phrasing.endswith("*") for t in train) and any(t.phrasing.endswith("*") for t in test)
    assert [sample_task(family, s, "test", "hard") for s in range(50)] == test[:50]
    assert sample_task(family, 7, "test", hard_level(family)) == test[7]


def test_hard_arithmetic_has_2_to_4_operations_decimals_and_percentages():
    tasks = [sample_task("arithmetic", seed, "train", "hard") for seed in range(600)]
    for task in tasks:
        assert calculator(task.expression) == task.answer
        assert 2 <= sum(task.expression.count(op) for op in "+-*/") <= 5  # q% is written q/100: one extra "/"
        assert float(task.answer) > 0
    assert {t.phrasing.split("/")[0] for t in tasks} == set(HARD_FORMS)
    assert any("." in t.answer for t in tasks) and any("%" in t.prompt for t in tasks)


def test_hard_knowledge_needs_3_or_4_distinct_searches():
    kb = get_knowledge_base()
    for seed in range(300):
        task = sample_task("knowledge", seed, "train", "hard")
        assert len(task.hops) in (3, 4) and len(set(task.hops)) == len(task.hops)
        assert [kb.by_name[hop].kind for hop in task.hops[:3]] == ["person", "city", "country"]
        assert task.answer not in task.hops


@pytest.mark.parametrize("family", ["arithmetic", "knowledge"])
def test_mixed_never_draws_the_hard_level(family):
    assert hard_level(family) not in levels(family)
    assert {sample_task(family, s, "train", "mixed").difficulty for s in range(300)} == set(levels(family))


def test_hard_level_is_an_env_kwarg_and_a_bad_one_is_named():
    by_kwarg = gym.make("rlagent/Calculator-v0", split="test", difficulty="hard")
    by_id = gym.make("rlagent/Calculator-hard-v0", split="test")
    assert by_kwarg.reset(seed=3)[1]["task"] == by_id.reset(seed=3)[1]["task"]
    assert gym.make("rlagent/KBSearch-hard-v0").unwrapped.max_turns == 6
    with pytest.raises(ValueError, match="difficulty"):
        gym.make("rlagent/Calculator-v0", difficulty="harder")


def test_hard_demonstrations_and_pairs():
    rows = generate_demonstrations("rlagent/Calculator-hard-v0", 6, seed=1)
    assert len(rows) == 6 and all(r["messages"][-1]["content"].startswith("The answer is") for r in rows)
    pairs = generate_preference_pairs("rlagent/KBSearch-hard-v0", 3, noise=0.0, seed=2)
    assert all(p["chosen_reward"] == 1.0 and p["rejected_reward"] < 1.0 for p in pairs)
