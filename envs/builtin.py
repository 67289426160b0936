"""The built-in environments' Gymnasium ids and their registration (run by `import envs`).

The `-hard-` ids are the same environments at their hard level (envs.tasks: word problems with decimals and
percentages; 3-4 search chains), kept apart from "mixed" so the v0 ids stay exactly as they were; the hard KB search
gets one spare turn beyond its longest chain (4 searches + the answer).
"""

from __future__ import annotations

import gymnasium as gym

ENV_KWARGS: dict[str, dict] = {
    "rlagent/Calculator-v0": {"task_family": "arithmetic", "tools": ["calculator"]},
    "rlagent/KBSearch-v0": {"task_family": "knowledge", "tools": ["search"]},
    "rlagent/Calculator-hard-v0": {"task_family": "arithmetic", "tools": ["calculator"], "difficulty": "hard"},
    "rlagent/KBSearch-hard-v0": {
        "task_family": "knowledge",
        "tools": ["search"],
        "difficulty": "hard",
        "max_turns": 6,
    },
}
ENV_IDS: tuple[str, ...] = ("rlagent/Calculator-v0", "rlagent/KBSearch-v0")
"""The standard levels (what the quickstart and most tests use)."""
HARD_ENV_IDS: tuple[str, ...] = ("rlagent/Calculator-hard-v0", "rlagent/KBSearch-hard-v0")


GSM8K_ENV_ID = "rlagent/GSM8K-v0"
"""GSM8K-format data with the calculator (envs/gsm8k.py): `gym.make(GSM8K_ENV_ID, path=FILE_OR_FOLDER_OR_HUB_ID)`."""


def register_envs() -> None:
    """Register the built-in environments with Gymnasium; safe to call more than once."""
    for env_id, kwargs in ENV_KWARGS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="envs.env:ToolUseEnv", kwargs=kwargs)
    if GSM8K_ENV_ID not in gym.registry:  # the entry point is imported, and the data read, only by gym.make
        gym.register(id=GSM8K_ENV_ID, entry_point="envs.gsm8k:make_env")
