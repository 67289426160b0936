"""`TRLEnvironment`: a TRL-style environment class played through rlagent's Gymnasium protocol, unchanged.

TRL's contract (`GRPOTrainer(environment_factory=MyEnv)`, TRL 1.16): the factory is called with no arguments and its
instance is reused across episodes; `reset(**row)` gets the dataset row's columns (including `prompt`) and returns
None or a string that is appended to the last user message; every public method (a function on the class whose name
does not start with "_", other than `reset` and `get_reward`) is a tool, its schema built from its type hints and
Google-style docstring; a completion without a tool call ends the episode. Rewards come from `reward_funcs`, called
as `fn(prompts=, completions=, completion_ids=, environments=, trainer_state=, log_extra=, log_metric=, **columns)`
and returning one value per completion (None = not applicable), and/or from the instance's `get_reward()`.

The adapter does the same, one episode at a time:
- reset(seed): the row is `tasks[seed % len(tasks)]` (a list of dicts or a `datasets.Dataset`, like TRL's
  train_dataset; seeds 0..n-1 visit each row once) and `instance.reset(**row)` is called. Without `tasks` the
  environment owns its data: reset gets `seed` and `split` if its signature takes them, and must return the prompt.
  The prompt messages are `row["prompt"]` (a message list, or a string = one user message) with reset's string
  appended to the last one; `system_prompt` is prepended when given.
- step(text): Hermes `<tool_call>` blocks are parsed (envs.parsing) and run on the instance's bound methods with
  ToolUseEnv's bounds (argument checks, `tool_timeout_s`, output length); a call that raises or times out
  shows the agent an `Error: ...` message (TRL shows `{'error': ...}`). Async tools and reward functions are run to
  completion with asyncio.
- The episode ends at a turn without a tool call (terminated) or at `max_turns` (truncated, plus the `truncated`
  penalty). Either way the reward functions and `get_reward()` score it then, with `environments=[instance]` and the
  row's columns as one-element lists; each is one reward component (named after the function, or the class for
  get_reward), weighted by `reward_weights`. `success` = weighted total >= `success_threshold`.
- rlagent's shaping stays on: `invalid_call` (-0.1) for a rejected call, `truncated` (-0.5). Pass
  `rewards={"invalid_call": 0.0, "truncated": 0.0}` for TRL's unshaped reward.
A tool that times out keeps running on its worker thread and may still change the instance's state.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from envs.env import MAX_PROMPT_CHARS, ToolUseEnv, _Turn
from envs.tasks.task import Task, check_split

# Columns TRL does not forward to reward functions as keyword arguments.
NOT_REWARD_COLUMNS = ("prompt", "completion", "completion_ids")
DEFAULT_TRL_MAX_TURNS = 4


class TRLEnvironment(ToolUseEnv):
    """Wrap a TRL `environment_factory` (a class or any callable returning an instance) as a Gymnasium env."""

    def __init__(
        self,
        environment_factory: Callable[[], Any],
        tasks: Sequence[dict] | Callable[[str], Sequence[dict]] | None = None,
        reward_funcs: Callable | Sequence[Callable] | None = None,
        reward_weights: Sequence[float] | None = None,
        split: str = "train",
        max_turns: int = DEFAULT_TRL_MAX_TURNS,
        system_prompt: str | None = None,
        success_threshold: float = 1.0,
        rewards: dict[str, float] | None = None,
        tool_timeout_s: float = 1.0,
        max_observation_chars: int = 300,
        max_tool_calls_per_turn: int = 4,
        render_mode: str | None = None,
    ) -> None:
        check_split(split)
        self.environment = environment_factory()
        name = type(self.environment).__name__
        if not callable(getattr(self.environment, "reset", None)):
            raise TypeError(f"TRL environment {name} must define a callable `reset`")
        self.rows = _rows(tasks, split)
        self.reward_funcs = _reward_sources(self.environment, reward_funcs)
        self.reward_weights = _weights(reward_weights, len(self.reward_funcs), self.environment)
        self.success_threshold = float(success_threshold)
        tools = [_sync(getattr(self.environment, method)) for method in _tool_names(type(self.environment))]
        super().__init__(
            task_family=f"trl:{name}", split=split, max_turns=max_turns, tools=tools, rewards=rewards,
            tool_timeout_s=tool_timeout_s, max_observation_chars=max_observation_chars, system_prompt=system_prompt,
            max_tool_calls_per_turn=max_tool_calls_per_turn, render_mode=render_mode, task_source=_unused_source,
        )  # fmt: skip
        self._row: dict = {}
        self._prompt: list[dict] = []

    @property
    def row(self) -> dict:
        """The task row of the current episode (its columns go to TRL-style reward functions); {} without tasks."""
        return self._row

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        """Start an episode on row `seed % len(tasks)` (or the env's own data); returns (prompt text, info)."""
        super(ToolUseEnv, self).reset(seed=seed)
        seed = seed if seed is not None else int(self.np_random.integers(2**31))
        self._row = dict(self.rows[seed % len(self.rows)]) if self.rows else {}
        observation = self.environment.reset(**self._reset_kwargs(seed))
        self._prompt = _prompt_messages(self._row.get("prompt"), observation, self.system_prompt)
        user_text = self._prompt[-1]["content"]
        if not user_text:
            raise ValueError(f"{self.task_family}: no prompt: the task row has no 'prompt' and reset() returned "
                             f"{observation!r}")  # fmt: skip
        answer = self._row.get("answer", "")
        self._task = Task(user_text, str(answer), family=self.task_family, split=self.split, key=str(seed))
        self._messages = [dict(message) for message in self._prompt]
        self._turn, self._done = 0, False
        info = {"messages": list(self._messages), "tools": list(self.tool_schemas), "task": self._task.to_dict()}
        return self._fit(user_text, max(self.observation_space.max_length, MAX_PROMPT_CHARS)), info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """ToolUseEnv's turn; at the turn limit the reward functions still score the episode."""
        observation, reward, terminated, truncated, info = super().step(action)
        if truncated and not terminated:
            components, success = self._score()
            info["reward_components"] = {**info["reward_components"], **components}
            info["success"] = success
            reward += sum(components.values())
        return observation, reward, terminated, truncated, info

    def _final_answer(self, action: str) -> _Turn:
        assistant = {"role": "assistant", "content": action}
        self._messages.append(assistant)  # reward functions read the whole completion, answer included
        try:
            components, success = self._score()
        finally:
            self._messages.pop()  # step() appends the assistant message itself
        return _Turn("Done.", assistant, [], components, terminated=True, success=success)

    def _score(self) -> tuple[dict[str, float], bool]:
        """Each reward source once, on this episode: {name: weighted value} and success."""
        completion = self._messages[len(self._prompt) :]
        columns = {key: [value] for key, value in self._row.items() if key not in NOT_REWARD_COLUMNS}
        components: dict[str, float] = {}
        for (name, fn), weight in zip(self.reward_funcs, self.reward_weights):
            value = _run(fn(prompts=[self._prompt], completions=[completion], completion_ids=[[]],
                            environments=[self.environment], trainer_state=None, log_extra=_ignore,
                            log_metric=_ignore, **columns))  # fmt: skip
            value = _single(value, name)
            if value is not None:
                components[name] = components.get(name, 0.0) + weight * value
        return components, sum(components.values()) >= self.success_threshold

    def _reset_kwargs(self, seed: int) -> dict:
        """TRL passes the row's columns; an env that owns its data gets the seed and split it asks for."""
        if self.rows:
            return self._row
        parameters = inspect.signature(self.environment.reset).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        offered = {"seed": seed, "split": self.split}
        return {key: value for key, value in offered.items() if takes_any or key in parameters}


def _tool_names(cls: type) -> list[str]:

    names = public_methods(cls)
    if not names:
        raise TypeError(f"TRL environment {cls.__name__} has no public methods: its tools are its public methods")
    return names


def _rows(tasks, split: str) -> list[dict]:
    """The task rows as a list of dicts: a sequence of dicts, a datasets.Dataset, or a callable split -> either."""
    if tasks is None:
        return []
    rows = tasks(split) if callable(tasks) else tasks
    rows = [dict(row) for row in rows]
    if not rows:
        raise ValueError(f"tasks: no rows for split {split!r}")
    return rows


def _reward_sources(environment: Any, reward_funcs) -> list[tuple[str, Callable]]:
    """(component name, fn(**kwargs) -> list) for each reward function, then get_reward if the class has one."""
    funcs = [] if reward_funcs is None else [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
    sources = [(getattr(fn, "__name__", f"reward_{i}"), fn) for i, fn in enumerate(funcs)]
    if callable(getattr(type(environment), "get_reward", None)):
        owner = type(environment)

        def get_reward(environments, **_):
            return [_run(env.get_reward()) if type(env) is owner else None for env in environments]

        sources.append((owner.__name__, get_reward))
    if not sources:
        raise ValueError(f"TRL environment {type(environment).__name__}: no reward source; pass reward_funcs or "
                         "define get_reward()")  # fmt: skip
    return sources


def _weights(weights: Sequence[float] | None, n: int, environment: Any) -> list[float]:
    """One weight per reward source; like TRL, get_reward always has weight 1 (it comes after reward_funcs)."""
    if weights is None:
        return [1.0] * n
    weights = [float(w) for w in weights]
    owns_reward = callable(getattr(type(environment), "get_reward", None))
    if len(weights) != n - int(owns_reward):
        raise ValueError(f"reward_weights: {len(weights)} weights for {n - int(owns_reward)} reward functions")
    return weights + [1.0] * int(owns_reward)


def _prompt_messages(prompt, observation, system_prompt: str | None) -> list[dict]:
    """The row's prompt as messages, reset()'s string appended to the last one (as TRL does)."""
    if observation is not None and not isinstance(observation, str):
        raise TypeError(f"reset() must return None or a string, got {type(observation).__name__}")
    if prompt is None:
        messages = [{"role": "user", "content": ""}]
    elif isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(message) for message in prompt]
    if observation:
        messages[-1] = {**messages[-1], "content": (messages[-1].get("content") or "") + observation}
    if system_prompt and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _single(value, name: str) -> float | None:
    if not isinstance(value, (list, tuple)) or len(value) != 1:
        raise ValueError(f"reward function {name!r} must return a list with one reward per completion, got {value!r}")
    return None if value[0] is None else float(value[0])


def _sync(method: Callable) -> Callable:
    """An async tool as a plain function (run to completion on the tool's worker thread); others unchanged."""
    if not inspect.iscoroutinefunction(method):
        return method

    @functools.wraps(method)
    def run(**arguments):
        return asyncio.run(method(**arguments))

    return run


def _run(value):
    """The value, awaited when a reward function (or get_reward) is async."""
    return asyncio.run(value) if inspect.isawaitable(value) else value


def _ignore(*_, **__) -> None:
    """TRL's log_extra / log_metric hooks: nothing to log into outside a trainer."""


def _unused_source(rng, split):  # TRLEnvironment.reset picks rows itself
    raise AssertionError("unreachable")


def is_trl_style(obj: object) -> bool:
    """A class that is not a gymnasium.Env, with a callable `reset` and at least one public method (a tool)."""
    if not inspect.isclass(obj) or issubclass(obj, gym.Env) or not callable(getattr(obj, "reset", None)):
        return False
    return bool(public_methods(obj))


def public_methods(cls: type) -> list[str]:
    """The tool methods of a TRL-style class, as TRL finds them: functions not starting with "_", minus
    `reset` and `get_reward` (listed on the class so properties are not evaluated)."""
    names = [name for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction)]
    return [name for name in names if not name.startswith("_") and name not in ("reset", "get_reward")]
