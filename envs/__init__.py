"""rlagent environments: `import envs` registers `rlagent/Calculator-v0` and `rlagent/KBSearch-v0` with Gymnasium,
and their hard levels `rlagent/Calculator-hard-v0` and `rlagent/KBSearch-hard-v0` (also `difficulty="hard"`).

Usage: `import envs; env = gymnasium.make("rlagent/Calculator-v0", split="test")`, or, for any environment
(a registered id, `module:attr`, a TRL-style class), `envs.make_env(spec, split="test")`.
The protocol an environment follows is written down in envs/protocol.py; robustness wrappers are in envs/wrappers.py.
"""

from __future__ import annotations

from envs.builtin import ENV_IDS, ENV_KWARGS, HARD_ENV_IDS, register_envs
from envs.env import ToolUseEnv
from envs.protocol import EnvProtocolError, check_env, check_step
from envs.registry import EnvSpecError, build_envs, make_env
from envs.tasks.task import Task
from envs.trl_adapter import TRLEnvironment
from envs.wrappers import PromptInjection, ToolFaults, wrap_env

__all__ = [
    "ENV_IDS",
    "ENV_KWARGS",
    "HARD_ENV_IDS",
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


register_envs()
