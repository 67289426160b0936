"""Task generators: each family has `sample_task(rng_or_seed, split, difficulty) -> Task` and `LEVELS`."""

from __future__ import annotations

import random

from envs.tasks import arithmetic, knowledge
from envs.tasks.task import SPLITS, TEST_SEED_OFFSET, Task

FAMILIES = {arithmetic.FAMILY: arithmetic, knowledge.FAMILY: knowledge}

__all__ = ["FAMILIES", "SPLITS", "TEST_SEED_OFFSET", "Task", "levels", "sample_task"]


def sample_task(
    family: str, rng_or_seed: random.Random | int, split: str = "train", difficulty: int | str = 1
) -> Task:
    """A task of `family` ("arithmetic" or "knowledge"), deterministic in (seed, split, difficulty)."""
    return _family(family).sample_task(rng_or_seed, split, difficulty)


def levels(family: str) -> tuple[int, ...]:
    """The difficulty levels a family offers (for curricula)."""
    return _family(family).LEVELS


def _family(family: str):
    if family not in FAMILIES:
        raise ValueError(f"task_family must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family]
