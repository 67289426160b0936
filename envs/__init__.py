"""rlagent environments: `import envs` registers `rlagent/Calculator-v0` and `rlagent/KBSearch-v0` with Gymnasium.

Usage: `import envs; env = gymnasium.make("rlagent/Calculator-v0", split="test")`, or, for any environment
(a registered id, `module:attr`, a TRL-style class), `envs.make_env(spec, split="test")`.
The protocol an environment follows is written down in envs/protocol.py; robustness wrappers are in envs/wrappers.py.
"""

from __future__ import annotations

import gymnasium as gym

from envs.env import ToolUseEnv
from envs.protocol import EnvProtocolError, check_env, check_step
from envs.registry import EnvSpecError, build_envs, make_env
from envs.tasks.task import Task
from envs.trl_adapter import TRLEnvironment
from envs.wrappers import PromptInjection, ToolFaults, wrap_env

ENV_KWARGS: dict[str, dict] = {
    "rlagent/Calculator-v0": {"task_family": "arithmetic", "tools": ["calculator"]},
    "rlagent/KBSearch-v0": {"task_family": "knowledge", "tools": ["search"]},
}
ENV_IDS: tuple[str, ...] = tuple(ENV_KWARGS)

__all__ = [
    "ENV_IDS",
    "ENV_KWARGS",
    "EnvProtocolError",
    "EnvSpecError",
    "PromptInjection",
    "TRLEnvironment",
    "Task",
    "ToolFaults",
    "ToolUseEnv",
    "build_envs",
    "check_env",
    "check_step",
    "make_env",
    "register_envs",
    "wrap_env",
]


def register_envs() -> None:
    """Register both environments with Gymnasium; safe to call more than once."""
    for env_id, kwargs in ENV_KWARGS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="envs.env:ToolUseEnv", kwargs=kwargs)


register_envs()
