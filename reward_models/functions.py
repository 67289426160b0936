"""User reward functions (`reward.functions: [module:fn, ...]` in a PPO config): plain Python scores of an episode.

A reward function takes the finished episode and returns a float:

    def short_answer(messages: list[dict], tools: list[dict] | None, info: dict) -> float:
        return 0.1 if len(messages[-1]["content"]) < 80 else 0.0

- messages: the whole chat (Hugging Face format, tool calls as `tool_calls`), as the policy saw it;
- tools: the tool schemas the policy was shown (None when the env has no tools);
- info: {"task", "success", "env_reward", "reward_components", "turns", "tool_calls", "truncated", "seed"} of
  the episode (`task` is what the env's reset put in info["task"]).

The module is imported from the working directory or PYTHONPATH, like an environment spec. Each function's value,
times its weight (`reward.function_weights`, default 1 each), is added to the episode score
(reward_models.combine.combine_rewards) and its batch mean logged as `reward/<fn name>`. A function that raises or
returns something that is not a finite number gives NaN for that episode: the episode is dropped from the update
and counted (`reward/function_errors`), and the run goes on.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable

import torch


class RewardFunctionError(ValueError):
    """A `reward.functions` entry that cannot be loaded; the message names the entry."""


def load_reward_functions(specs: list[str], weights: list[float] | None = None) -> list[tuple[str, Callable, float]]:
    """(name, function, weight) for each `module:fn` spec; name is `fn`, which must be unique."""
    if weights is not None and len(weights) != len(specs):
        raise RewardFunctionError(f"reward.function_weights has {len(weights)} entries but reward.functions has "
                                  f"{len(specs)}; give one weight per function")  # fmt: skip
    loaded = []
    for spec, weight in zip(specs, weights if weights is not None else [1.0] * len(specs)):
        name, fn = spec.partition(":")[2], _load(spec)
        if name in {other for other, _, _ in loaded}:
            raise RewardFunctionError(f"reward.functions: two functions are named {name!r}; rename one (each is "
                                      f"logged as reward/<name>)")  # fmt: skip
        loaded.append((name, fn, float(weight)))
    return loaded


def _load(spec: str) -> Callable:
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise RewardFunctionError(f"reward.functions: {spec!r} is not 'module:function'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `rlagent` is a console script: sys.path[0] is the venv's bin
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RewardFunctionError(f"reward.functions: importing {module_name!r} for {spec!r} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
    if not hasattr(module, attr):
        raise RewardFunctionError(f"reward.functions: module {module_name!r} has no attribute {attr!r} ({spec!r})")
    fn = getattr(module, attr)
    if not callable(fn):
        raise RewardFunctionError(
            f"reward.functions: {spec!r} is a {type(fn).__name__}, not a function (it must be callable)"
        )
    return fn


def episode_info(traj, i: int) -> dict:
    """The `info` a reward function gets for episode i of a rollout Trajectory."""
    return {
        "task": traj.tasks[i],
        "success": bool(traj.success[i]),
        "env_reward": float(traj.env_reward[i]),
        "reward_components": dict(traj.reward_components[i]),
        "turns": int(traj.turns[i]),
        "tool_calls": int(traj.tool_calls[i]),
        "truncated": bool(traj.truncated[i]),
        "seed": traj.seeds[i] if i < len(traj.seeds) else None,
    }


def call_reward_functions(functions: list[tuple[str, Callable, float]], traj) -> tuple[dict, list[str]]:
    """({name: (values (B,), weight)}, errors): every function on every episode; NaN where one failed.

    `errors` holds one line per failure (function, episode, what went wrong) for the caller to report.
    """
    scores, errors = {}, []
    tools = traj.tools or [None] * len(traj)
    for name, fn, weight in functions:
        values = []
        for i in range(len(traj)):
            value, error = _call(fn, traj.messages[i], tools[i], episode_info(traj, i))
            values.append(value)
            if error:
                errors.append(f"reward function {name!r} on episode {i}: {error}")
        scores[name] = (torch.tensor(values, dtype=torch.float32), weight)
    return scores, errors


def _call(fn: Callable, messages: list[dict], tools, info: dict) -> tuple[float, str | None]:
    try:
        value = fn(messages, tools, info)
    except Exception as exc:  # a user's bug must cost one episode, not the run
        return math.nan, f"raised {type(exc).__name__}: {exc}"
    # Only numbers count: a string such as "0.5" is a bug in the function, not a score.
    if isinstance(value, str | bytes) or not isinstance(value, numbers.Real | torch.Tensor):
        return math.nan, f"returned {type(value).__name__}, not a number"
    try:
        value = float(value)
    except (TypeError, ValueError, RuntimeError):
        return math.nan, f"returned {type(value).__name__}, not a number"
    return (value, None) if math.isfinite(value) else (math.nan, f"returned {value}")
