"""User reward functions (`reward.functions: [module:fn, ...]` in a PPO config, or `reward_funcs=` of the Python API):
plain Python scores of finished episodes, in either of two forms, told apart by the signature.

Per episode: the finished episode in, a float out:

    def short_answer(messages: list[dict], tools: list[dict] | None, info: dict) -> float:
        return 0.1 if len(messages[-1]["content"]) < 80 else 0.0

- messages: the whole chat (Hugging Face format, tool calls as `tool_calls`), as the policy saw it;
- tools: the tool schemas the policy was shown (None when the env has no tools);
- info: {"task", "success", "env_reward", "reward_components", "turns", "tool_calls", "truncated", "seed"} of
  the episode (`task` is what the env's reset put in info["task"]).

TRL's batch form (`GRPOTrainer(reward_funcs=...)`): any function with a `completions`, `prompts` or `environments`
parameter, or only keyword parameters, is called once per batch and returns one value per episode (None = does not
apply, counted as 0):

    def used_tools(completions, environments, **kwargs) -> list[float]:
        return [float(len(env.calls) > 0) for env in environments]

with `prompts` (the messages before the first assistant turn), `completions` (the messages from it on),
`completion_ids` (the policy's token ids), `environments` (the environment instances: a TRL class's own instance
under the adapter, else the gymnasium env), `trainer_state=None`, `log_extra`/`log_metric` (no-ops), and the
episode's columns as lists: the `info` keys below plus, for a TRL environment with task rows, the row's columns. A
function without `**kwargs` gets only the arguments it names.

The module is imported from the working directory or PYTHONPATH, like an environment spec. Each function's value,
times its weight (`reward.function_weights`, default 1 each), is added to the episode score
(reward_models.combine.combine_rewards) and its batch mean and std logged as `reward/<fn name>/mean|std`. A function
that raises or returns something that is not a finite number gives NaN for that episode: the episode is dropped from
the update and counted (`reward/function_errors`), and the run goes on.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import numbers
import os
import sys
from collections.abc import Callable

import torch


class RewardFunctionError(ValueError):
    """A `reward.functions` entry that cannot be loaded; the message names the entry."""


def load_reward_functions(
    specs: list[str | Callable], weights: list[float] | None = None
) -> list[tuple[str, Callable, float]]:
    """(name, function, weight) for each `module:fn` spec or callable; name is `fn` (a callable's __name__), which
    must be unique."""
    if weights is not None and len(weights) != len(specs):
        raise RewardFunctionError(f"reward.function_weights has {len(weights)} entries but reward.functions has "
                                  f"{len(specs)}; give one weight per function")  # fmt: skip
    loaded = []
    for spec, weight in zip(specs, weights if weights is not None else [1.0] * len(specs)):
        if callable(spec):
            name, fn = getattr(spec, "__name__", type(spec).__name__), spec
        else:
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


def call_reward_functions(
    functions: list[tuple[str, Callable, float]], traj, environments: list | None = None
) -> tuple[dict, list[str]]:
    """({name: (values (B,), weight)}, errors): every function on every episode; NaN where one failed.

    `environments` are the envs that played the episodes (one each, in order) for TRL-style functions.
    `errors` holds one line per failure (function, episode, what went wrong) for the caller to report.
    """
    scores, errors = {}, []
    tools = traj.tools or [None] * len(traj)
    for name, fn, weight in functions:
        if is_batch_function(fn):
            values, failures = _call_batch(fn, traj, environments)
            errors += [f"reward function {name!r} on episode {i}: {error}" for i, error in failures]
        else:
            values = []
            for i in range(len(traj)):
                value, error = _call(fn, traj.messages[i], tools[i], episode_info(traj, i))
                values.append(value)
                if error:
                    errors.append(f"reward function {name!r} on episode {i}: {error}")
        scores[name] = (torch.tensor(values, dtype=torch.float32), weight)
    return scores, errors


def is_batch_function(fn: Callable) -> bool:
    """TRL's batch signature: a `completions`/`prompts`/`environments` parameter, or keyword parameters only."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the per-episode form
        return False
    if any(p.name in ("completions", "prompts", "environments") for p in parameters):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return not positional and any(p.kind is p.VAR_KEYWORD for p in parameters)


def batch_arguments(traj, environments: list | None) -> dict:
    """The keyword arguments TRL's GRPOTrainer gives a reward function, for a finished rollout batch."""
    starts = [
        next((k for k, m in enumerate(msgs) if m.get("role") == "assistant"), len(msgs)) for msgs in traj.messages
    ]
    instances = [getattr(env.unwrapped, "environment", env.unwrapped) for env in environments or []]
    infos = [episode_info(traj, i) for i in range(len(traj))]
    rows = [dict(getattr(env.unwrapped, "row", None) or {}) for env in environments or []] or [{}] * len(traj)
    columns = {key: [info[key] for info in infos] for key in infos[0]} if infos else {}
    for key in sorted({key for row in rows for key in row} - {"prompt", "completion", "completion_ids"}):
        columns[key] = [row.get(key) for row in rows]
    mask = traj.policy_mask.bool()
    return {
        "prompts": [msgs[:start] for msgs, start in zip(traj.messages, starts)],
        "completions": [msgs[start:] for msgs, start in zip(traj.messages, starts)],
        "completion_ids": [traj.input_ids[i][mask[i]].tolist() for i in range(len(traj))],
        "environments": instances or [None] * len(traj),
        "trainer_state": None,
        "log_extra": _ignore,
        "log_metric": _ignore,
        **columns,
    }


def _call_batch(fn: Callable, traj, environments: list | None) -> tuple[list[float], list[tuple[int, str]]]:
    """One call for the whole batch; (values, [(episode, error)]). A call that fails fails every episode."""
    kwargs = batch_arguments(traj, environments)
    parameters = inspect.signature(fn).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):  # give a closed signature only what it names
        kwargs = {key: value for key, value in kwargs.items() if key in {p.name for p in parameters}}
    n = len(traj)
    try:
        returned = fn(**kwargs)
        returned = asyncio.run(returned) if inspect.isawaitable(returned) else returned
    except Exception as exc:  # a user's bug must cost one batch, not the run
        return [math.nan] * n, [(i, f"raised {type(exc).__name__}: {exc}") for i in range(n)]
    if not isinstance(returned, list | tuple) or len(returned) != n:
        error = f"returned {type(returned).__name__}, not a list of {n} values (one per completion)"
        return [math.nan] * n, [(i, error) for i in range(n)]
    values, failures = [], []
    for i, value in enumerate(returned):
        value, error = (0.0, None) if value is None else _number(value)  # None: does not apply (as TRL)
        values.append(value)
        if error:
            failures.append((i, error))
    return values, failures


def _ignore(*_, **__) -> None:
    """TRL's log_extra / log_metric hooks: nothing to log into here."""


def _call(fn: Callable, messages: list[dict], tools, info: dict) -> tuple[float, str | None]:
    try:
        value = fn(messages, tools, info)
    except Exception as exc:  # a user's bug must cost one episode, not the run
        return math.nan, f"raised {type(exc).__name__}: {exc}"
    return _number(value)


def _number(value) -> tuple[float, str | None]:
    """(value, None) for a finite real number, else (NaN, why)."""
    # Only numbers count: a string such as "0.5" is a bug in the function, not a score.
    if isinstance(value, str | bytes) or not isinstance(value, numbers.Real | torch.Tensor):
        return math.nan, f"returned {type(value).__name__}, not a number"
    try:
        value = float(value)
    except (TypeError, ValueError, RuntimeError):
        return math.nan, f"returned {type(value).__name__}, not a number"
    return (value, None) if math.isfinite(value) else (math.nan, f"returned {value}")
