"""The two built-in environments' Gymnasium ids and their registration (run by `import envs`)."""

from __future__ import annotations

import gymnasium as gym

ENV_KWARGS: dict[str, dict] = {
    "rlagent/Calculator-v0": {"task_family": "arithmetic", "tools": ["calculator"]},
    "rlagent/KBSearch-v0": {"task_family": "knowledge", "tools": ["search"]},
}
ENV_IDS: tuple[str, ...] = tuple(ENV_KWARGS)


def register_envs() -> None:
    """Register both environments with Gymnasium; safe to call more than once."""
    for env_id, kwargs in ENV_KWARGS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="envs.env:ToolUseEnv", kwargs=kwargs)
