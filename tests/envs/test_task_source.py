"""ToolUseEnv with a user task source, tools and grader: seeds, splits, difficulty and bad sources."""

import random

import pytest

from envs import Task, ToolUseEnv
from envs.tasks.task import TEST_SEED_OFFSET


def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: The text.
    """
    return text.upper()


def word_task(rng: random.Random, split: str) -> Task:
    word = rng.choice(["apple", "pear", "plum", "fig"])
    return Task(f"Shout {word}.", word.upper(), answer_kind="name", split=split, key=word,
                solution=[{"name": "shout", "arguments": {"text": word}}])  # fmt: skip


def exact(task: Task, text: str) -> bool:
    return text.strip().endswith(task.answer)


def test_source_gets_a_split_offset_rng_and_the_grader_decides():
    seen = []

    def source(rng, split):
        seen.append((rng.random(), split))
        return word_task(rng, split)

    env = ToolUseEnv(task_source=source, tools=[shout], grader=exact, split="test")
    _, info = env.reset(seed=5)
    assert seen == [(random.Random(5 + TEST_SEED_OFFSET).random(), "test")]
    assert env.task_family == "custom" and env.max_turns == 4 and info["task"]["family"] == "custom"
    assert info["messages"][-1]["content"] == info["task"]["prompt"]
    _, reward, terminated, _, step = env.step(f"It is {info['task']['answer']}")
    assert terminated and step["success"] and reward == 1.0
    env.reset(seed=5)
    assert not env.step(f"It is {info['task']['answer'].lower()}")[4]["success"]  # the grader is case-sensitive


def test_difficulty_reaches_a_source_that_takes_it():
    levels = []

    def source(rng, split, difficulty):
        levels.append(difficulty)
        return word_task(rng, split)

    env = ToolUseEnv(task_source=source, tools=[shout], difficulty=2)
    env.reset(seed=0)
    env.reset(seed=0, options={"difficulty": 3})
    assert levels == [2, 3]
    ToolUseEnv(task_source=word_task, tools=[shout]).reset(seed=0, options={"difficulty": 3})  # ignored


def test_dict_tasks_are_accepted_and_bad_sources_named():
    env = ToolUseEnv(task_source=lambda rng, split: {"prompt": "Say hi.", "answer": "hi"}, tools=[shout])
    assert env.reset(seed=0)[1]["task"]["answer"] == "hi"

    def empty(rng, split):
        return Task("", "x")

    with pytest.raises(TypeError, match="task_source empty must return a Task with a non-empty prompt"):
        ToolUseEnv(task_source=empty, tools=[shout]).reset(seed=0)
    with pytest.raises(ValueError, match="a task_source needs its tools"):
        ToolUseEnv(task_source=word_task)
    with pytest.raises(TypeError, match="grader must be a callable"):
        ToolUseEnv(task_source=word_task, tools=[shout], grader="exact")


def test_builtin_families_unchanged():
    env = ToolUseEnv()
    assert env.task_family == "arithmetic" and env.max_turns == 4 and list(env.tools) == ["calculator"]
    with pytest.raises(ValueError, match="task_family must be one of"):
        ToolUseEnv(task_family="units")
