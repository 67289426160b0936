"""Task generators: each family has `sample_task(rng_or_seed, split, difficulty) -> Task`, `LEVELS` (what
"mixed" and curricula draw from) and `HARD_LEVEL` (the hard level, also reachable as difficulty "hard")."""

from __future__ import annotations

import random

from envs.tasks import arithmetic, knowledge
from envs.tasks.task import SPLITS, TEST_SEED_OFFSET, Task

FAMILIES = {arithmetic.FAMILY: arithmetic, knowledge.FAMILY: knowledge}

__all__ = ["FAMILIES", "SPLITS", "TEST_SEED_OFFSET", "Task", "hard_level", "levels", "sample_task"]


def sample_task(
    family: str, rng_or_seed: random.Random | int, split: str = "train", difficulty: int | str = 1
) -> Task:
    """A task of `family` ("arithmetic" or "knowledge"), deterministic in (seed, split, difficulty)."""
    return _family(family).sample_task(rng_or_seed, split, difficulty)


def levels(family: str) -> tuple[int, ...]:
    """The difficulty levels a family offers (for curricula)."""
    return _family(family).LEVELS


def hard_level(family: str) -> int:
    """The family's hard level: never part of "mixed"; `difficulty="hard"` names it too."""
    return _family(family).HARD_LEVEL


def _family(family: str):
    if family not in FAMILIES:
        raise ValueError(f"task_family must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family]
