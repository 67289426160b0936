"""Episode seeds and the difficulty curriculum (its state survives a checkpoint)."""

from rlagent.rollout.schedule import Curriculum, episode_seeds
from rlagent.training.ppo_config import CurriculumConfig


def test_episode_seeds_groups_and_ranks():
    seeds = episode_seeds(0, 3, 0, 8, group_size=4)
    assert seeds[:4] == [seeds[0]] * 4 and seeds[4:] == [seeds[0] + 1] * 4  # a GRPO group shares its task
    assert episode_seeds(0, 3, 1, 8) != episode_seeds(0, 3, 0, 8)  # ranks play different tasks
    assert episode_seeds(0, 4, 0, 8) != episode_seeds(0, 3, 0, 8)  # and new ones every iteration
    assert episode_seeds(0, 3, 0, 8) == episode_seeds(0, 3, 0, 8)  # a pure function: resume replays them


def test_curriculum_rises_on_rolling_success_and_round_trips():
    cfg = CurriculumConfig(enabled=True, start=1, max_level=2, threshold=0.75, window=4)
    names = ["a", "a", "b", "b"]
    cur = Curriculum(cfg, ["a", "b"])
    assert cur.options(names) == [{"difficulty": 1}] * 4
    cur.update(names, [1, 1, 0, 1])  # windows not full yet: no change
    assert cur.level == {"a": 1, "b": 1}
    cur.update(names, [1, 0, 1, 1])  # a: 3/4 >= 0.75 -> level 2 ; b: 3/4 -> level 2
    assert cur.level == {"a": 2, "b": 2} and len(cur.window["a"]) == 0
    cur.update(names, [1, 1, 1, 1])
    cur.update(names, [1, 1, 1, 1])
    assert cur.level == {"a": 2, "b": 2}  # capped at max_level
    restored = Curriculum(cfg, ["a", "b"])
    restored.load_state_dict(cur.state_dict())
    assert restored.level == cur.level and list(restored.window["a"]) == list(cur.window["a"])
    assert cur.metrics() == {"curriculum/a_level": 2, "curriculum/b_level": 2}


def test_disabled_curriculum_uses_env_default():
    cur = Curriculum(CurriculumConfig(enabled=False), ["a"])
    assert cur.options(["a", "a"]) == [None, None] and cur.metrics() == {}
