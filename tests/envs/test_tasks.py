"""Task generators: determinism, levels, answers, and disjoint train/test splits."""

import pytest

from envs.tasks import FAMILIES, levels, sample_task
from envs.tasks.task import item_split
from envs.tools.calculator import calculator
from envs.tools.knowledge_base import get_knowledge_base

N_TRAIN, N_TEST = 3000, 600


def prompts(family, split, n):
    return [sample_task(family, seed, split, "mixed") for seed in range(n)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_test_prompt_is_a_train_prompt(family):
    train = prompts(family, "train", N_TRAIN)
    test = prompts(family, "test", N_TEST)
    assert not {t.prompt for t in train} & {t.prompt for t in test}
    assert not {t.key for t in train} & {t.key for t in test}
    assert all(item_split(t.key) == t.split for t in train + test)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_held_out_phrasings_appear_only_in_test(family):
    train = prompts(family, "train", N_TRAIN)
    test = prompts(family, "test", N_TEST)
    assert not any(t.phrasing.endswith("*") for t in train)
    held_out = [t for t in test if t.phrasing.endswith("*")]
    assert 0.2 < len(held_out) / len(test) < 0.6
    assert {t.phrasing for t in held_out}.isdisjoint({t.phrasing for t in train})


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("split", ["train", "test"])
def test_tasks_are_deterministic_and_short(family, split):
    for level in levels(family):
        for seed in range(100):
            task = sample_task(family, seed, split, level)
            assert task == sample_task(family, seed, split, level)
            assert task.difficulty == level and task.split == split and task.family == family
            assert len(task.prompt) <= 120


def test_arithmetic_levels_and_answers():
    for seed in range(300):
        for level in (1, 2, 3):
            task = sample_task("arithmetic", seed, "train", level)
            assert calculator(task.expression) == task.answer
            assert sum(task.expression.count(op) for op in "+-*/") == (2 if level == 3 else 1)
            assert max(_operands(task.expression)) < (1000 if level == 2 else 100)


def _operands(expression):
    for op in "+-*/()":
        expression = expression.replace(op, " ")
    return [int(n) for n in expression.split()]


def test_knowledge_answers_follow_the_hops():
    kb = get_knowledge_base()
    for seed in range(300):
        one = sample_task("knowledge", seed, "train", 1)
        assert len(one.hops) == 1 and one.intermediate is None
        assert one.answer in kb.by_name[one.hops[0]].snippet
        two = sample_task("knowledge", seed, "train", 2)
        assert len(two.hops) == 2 and two.intermediate == two.hops[1]
        assert two.intermediate in kb.by_name[two.hops[0]].snippet
        assert two.answer in kb.by_name[two.hops[1]].snippet


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="difficulty"):
        sample_task("arithmetic", 0, "train", 7)
    with pytest.raises(ValueError, match="split"):
        sample_task("arithmetic", 0, "validation", 1)
    with pytest.raises(ValueError, match="task_family"):
        sample_task("poetry", 0, "train", 1)
