"""The `Task` record and the rules that keep the train and test splits disjoint.

Splits differ in three ways: (1) seeds — a test task for seed s is drawn from rng(s + 10**9); (2) items —
each underlying question (an expression, or a question type + entity) belongs to exactly one split by a
stable hash of its key, so no test prompt can also be a train prompt; (3) phrasings — every family has
templates used only by the test split, so part of the test measures generalisation to unseen wording.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

SPLITS = ("train", "test")
TEST_SEED_OFFSET = 10**9
TEST_ITEM_PERCENT = 20
MAX_DRAWS = 1000

T = TypeVar("T")


@dataclass
class Task:
    """One episode's question; the extra fields are what the scripted expert needs to solve it."""

    prompt: str
    """The user message."""
    answer: str
    """The target answer: a number ("68") or a name ("Zorvath")."""
    answer_kind: str = "number"
    """"number" or "name": decides how the default grader checks a final answer."""
    difficulty: int = 1
    family: str = "custom"
    """"arithmetic", "knowledge", or a user task source's name."""
    split: str = "train"
    key: str = ""
    """Identifies the underlying item (its hash decides the split), e.g. "23+45" or "population:Thatu"."""
    phrasing: str = ""
    """Template id, e.g. "add/2"; held-out ones end in "*" (used by the test split only)."""
    expression: str | None = None
    """Arithmetic: the calculator expression that solves the task."""
    hops: list[str] = field(default_factory=list)
    """Knowledge: the search queries to issue, in order."""
    intermediate: str | None = None
    """Knowledge, two hops: the bridge entity found by the first hop."""
    solution: list[dict] = field(default_factory=list)
    """User task families: the tool calls ({"name", "arguments"}) that solve the task, in order, for the scripted
    expert (`--policy scripted`); empty when the task has none."""

    def to_dict(self) -> dict:
        """A plain JSON-serialisable dict (what `info["task"]` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Task:
        """Inverse of `to_dict`; unknown keys are an error."""
        return cls(**data)


def make_rng(rng_or_seed: random.Random | int, split: str) -> random.Random:
    """A task RNG: an int seed is offset for the test split so the two seed streams never coincide."""
    check_split(split)
    if isinstance(rng_or_seed, random.Random):
        return rng_or_seed
    return random.Random(int(rng_or_seed) + (TEST_SEED_OFFSET if split == "test" else 0))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def item_split(key: str) -> str:
    """The split an item belongs to, from a hash that is stable across runs and machines (unlike hash())."""
    return "test" if zlib.crc32(key.encode()) % 100 < TEST_ITEM_PERCENT else "train"


def draw_item(rng: random.Random, split: str, draw: Callable[[random.Random], T], key: Callable[[T], str]) -> T:
    """Draw items until one belongs to `split` (about 1.25 draws for train, 5 for test)."""
    for _ in range(MAX_DRAWS):
        item = draw(rng)
        if item_split(key(item)) == split:
            return item
    raise RuntimeError(f"no {split} item found in {MAX_DRAWS} draws")


def choose_phrasing(rng: random.Random, split: str, shared: Sequence[str], held_out: Sequence[str]) -> tuple[int, str]:
    """(template id, template): train uses `shared` only; test draws from shared + held-out templates."""
    pool = list(shared) + (list(held_out) if split == "test" else [])
    index = rng.randrange(len(pool))
    return index, pool[index]


def phrasing_id(name: str, index: int, n_shared: int) -> str:
    """A readable template id; held-out templates are marked with a trailing "*"."""
    return f"{name}/{index}" + ("*" if index >= n_shared else "")
