"""A TRL-style environment (TRL 1.16's `environment_factory` contract) that rlagent plays unchanged.

`Counter` is what a TRL user already has: `reset(**row)` starts an episode from a dataset row, the public methods are
the tools, `get_reward()` scores the episode from the instance's state, and `said_the_count` is an ordinary TRL
reward function (`fn(completions, environments, **columns) -> list[float]`).

    # TRL GRPO
    GRPOTrainer(model, reward_funcs=said_the_count, train_dataset=Dataset.from_list(rows("train")),
                environment_factory=Counter, ...)
    # rlagent: the same class, rows and reward function
    rlagent rollout --env examples.trl_counter:make_env --policy random --episodes 2
    env.ids: [examples.trl_counter:make_env]          # in a PPO config
"""

from envs import TRLEnvironment


class Counter:
    """A counter the agent must bring to the row's `target` with `increment`, then report."""

    def __init__(self) -> None:
        self.count, self.target = 0, 0

    def reset(self, target: int = 3, **row) -> None:
        self.count, self.target = 0, int(target)

    def increment(self, by: int) -> str:
        """Add to the counter.

        Args:
            by: How much to add (1 to 5).
        """
        if not 1 <= by <= 5:
            raise ValueError("by must be between 1 and 5")
        self.count += by
        return f"The counter is at {self.count}."

    def read(self) -> str:
        """Read the counter."""
        return str(self.count)

    def get_reward(self) -> float:
        return 1.0 if self.count == self.target else 0.0


def said_the_count(completions, environments, **kwargs) -> list[float]:
    """0.5 when the last message ends with the counter's value."""
    return [0.5 if str(c[-1].get("content", "")).rstrip(". ").endswith(str(e.count)) else 0.0
            for c, e in zip(completions, environments)]  # fmt: skip


def rows(split: str) -> list[dict]:
    """Dataset rows as TRL takes them: a conversational `prompt` and the columns reset() reads."""
    targets = range(2, 12) if split == "train" else range(12, 16)
    text = "Use increment to bring the counter to {t}, then say the count."
    return [{"prompt": [{"role": "user", "content": text.format(t=t)}], "target": t} for t in targets]


def make_env(split: str = "train", **kwargs) -> TRLEnvironment:
    return TRLEnvironment(Counter, tasks=rows, reward_funcs=[said_the_count], split=split, **kwargs)
