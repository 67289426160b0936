"""What PPO plays each iteration: the training environments, episode seeds and the difficulty curriculum."""

from __future__ import annotations

from collections import deque

from rlagent.common.config import ConfigError
from rlagent.rollout.engine import make_envs


def episode_seeds(seed: int, iteration: int, rank: int, n: int, group_size: int = 1) -> list[int]:
    """Task seeds for this rank's n episodes; consecutive groups of `group_size` share a task (GRPO / RLOO).

    A pure function of (seed, iteration, rank), so a resumed run replays exactly the same tasks.
    """
    base = (seed * 1_000_003 + iteration * 10_007 + rank * 1_009) * 1_000
    return [base + i // group_size for i in range(n)]


class Curriculum:
    """Per-environment difficulty that rises when rolling success passes a threshold; checkpointable."""

    def __init__(self, cfg, env_ids: list[str]):
        self.cfg = cfg
        self.level = {env_id: cfg.start for env_id in env_ids}
        self.window = {env_id: deque(maxlen=cfg.window) for env_id in env_ids}

    def options(self, env_names: list[str]) -> list[dict | None]:
        """reset() options per episode: the current difficulty, or None (environment default) when disabled."""
        if not self.cfg.enabled:
            return [None] * len(env_names)
        return [{"difficulty": self.level[name]} for name in env_names]

    def update(self, env_names: list[str], successes: list[float]) -> None:
        if not self.cfg.enabled:
            return
        for name, success in zip(env_names, successes):
            self.window[name].append(float(success))
        for name, window in self.window.items():
            full = len(window) == window.maxlen
            if full and sum(window) / len(window) >= self.cfg.threshold and self.level[name] < self.cfg.max_level:
                self.level[name] += 1
                window.clear()  # judge the new level on its own episodes

    def metrics(self) -> dict:
        if not self.cfg.enabled:
            return {}
        return {f"curriculum/{name.split('/')[-1]}_level": level for name, level in self.level.items()}

    def state_dict(self) -> dict:
        return {"level": dict(self.level), "window": {k: list(v) for k, v in self.window.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.level.update(state["level"])
        for name, values in state["window"].items():
            self.window[name] = deque(values, maxlen=self.cfg.window)


def build_training_envs(env, per_env: int, wrapper_seed: int) -> list:
    """per_env environments of each id; a bad spec, a protocol gap or a bad wrapper spec is a ConfigError naming
    the key.

    Wrapper hits are drawn per (wrapper_seed, reset seed): processes differ, a resumed run repeats its draws.
    """
    from envs.wrappers import parse_wrappers

    try:
        parse_wrappers(env.wrappers)
    except ValueError as err:
        raise ConfigError(f"env.wrappers: {err}") from None
    try:
        return [e for env_id in env.ids for e in make_envs(env_id, per_env, env.split, env.wrappers, wrapper_seed)]
    except ConfigError as err:
        raise ConfigError(f"env.ids: {err}") from None
