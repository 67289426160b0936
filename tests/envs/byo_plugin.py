"""A user's package, as small as it gets, offering an environment each of the ways in (tests/envs/test_ways_in.py).

- `tests.envs.byo_plugin:byo/Units-v0`: importing the module registers the id with plain `gymnasium.register` (no
  entry point), Gymnasium's own `module:id` form;
- `tests.envs.byo_plugin:UnitsEnv`: a gymnasium.Env subclass;
- `tests.envs.byo_plugin:make_units`: a factory;
- `tests.envs.byo_plugin:Echo`: a TRL-style class that owns its data (reset returns the prompt) and its reward.
Also two reward functions for `reward.functions`.
"""

import gymnasium as gym

from envs.env import ToolUseEnv
from examples.unit_conversion import convert, sample_task

REGISTERED_ID = "byo/Units-v0"


class UnitsEnv(ToolUseEnv):
    """The unit-conversion family as a gymnasium.Env subclass."""

    def __init__(self, split: str = "train", **kwargs) -> None:
        super().__init__(task_family="units", task_source=sample_task, tools=[convert], split=split, **kwargs)


def make_units(split: str = "train", max_turns: int = 3) -> UnitsEnv:
    return UnitsEnv(split=split, max_turns=max_turns)


if REGISTERED_ID not in gym.registry:
    gym.register(REGISTERED_ID, entry_point=UnitsEnv)


class Echo:
    """Call `shout` with the word the prompt gives, then stop."""

    def reset(self, seed: int = 0, split: str = "train") -> str:
        self.word, self.said = ("apple", "pear", "plum")[seed % 3], None
        return f"Call shout with the word {self.word}, then say done."

    def shout(self, word: str) -> str:
        """Shout a word.

        Args:
            word: The word to shout.
        """
        self.said = word
        return word.upper()

    def get_reward(self) -> float:
        return 1.0 if self.said == self.word else 0.0


def turns_bonus(messages, tools, info) -> float:
    """0.25 per assistant turn (a hand-checkable function of the episode)."""
    return 0.25 * sum(message["role"] == "assistant" for message in messages)


def broken_on_odd_seeds(messages, tools, info) -> float:
    """Raises on odd reset seeds and returns NaN on seeds divisible by 4: both must drop just those episodes."""
    if info["seed"] % 2:
        raise RuntimeError("odd seed")
    return float("nan") if info["seed"] % 4 == 0 else 1.0
