"""`ToolUseEnv`: a multi-turn Gymnasium environment where the action is an assistant message (text).

An episode: reset() poses a task; each step() takes one assistant turn. A turn with tool calls runs the tools
and returns their output as the observation; a turn without a tool call is the final answer and ends the episode
(reward `correct` or `wrong`); reaching `max_turns` without an answer truncates it (reward `truncated` added).

Invalid turns. The environment answers a turn it rejects with an `Error: ...` observation and the `invalid_call`
reward, sets `info["invalid_tool_call"]`, and the episode goes on (the turn counts toward `max_turns`):
  - a malformed call (bad JSON, unclosed or stray tags), an unknown tool, or too many calls in one turn;
  - a well-formed call the tool rejects: arguments that do not fit its signature, or a tool that returns an
    `Error: ...` string, raises or times out (e.g. `calculator("9**9**9")`). Such a call is recorded as a
    structured tool call and the tool's error text is its output, so the agent sees why; the turn is invalid
    if any of its calls failed. Rejected input is the agent's mistake, so it is shaped and counted as one;
  - an action longer than MAX_ACTION_CHARS (the action space's bound): nothing in it is run or graded, the
    recorded assistant message is cut to the limit and `info["action_truncated"]` is True.

`info["messages"]` is the chat history in Hugging Face format and `info["env_messages"]` the messages this step
appended after the assistant message: the rollout engine renders exactly those through the chat template.
Every step's info has the keys messages, env_messages, reward_components, success, tool_calls, invalid_tool_call,
action_truncated and turn.

Your own task family. `task_source(rng, split) -> Task` replaces the built-in generators and `tools` lists its typed
Python functions; `grader(task, text) -> bool` replaces the default check (the last number, or the last name,
of the reply must be `task.answer`). A whole family fits in ~30 lines: see examples/unit_conversion.py.

    env = ToolUseEnv(task_source=sample_task, tools=[convert], split="test", task_family="units")

The source gets a `random.Random` seeded from the reset seed, offset for the test split (so the two seed streams
never meet) and the split name: keeping train and test ITEMS apart is the source's job
(`envs.tasks.task.draw_item` does it by a stable hash of `Task.key`). A source with a `difficulty` parameter is also
given the difficulty (the env's, or `options["difficulty"]` from a curriculum); otherwise difficulty is ignored.
`Task.solution` (the tool calls that solve it) lets the scripted expert play the family.
"""

from __future__ import annotations

import inspect
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from envs.grading import is_correct
from envs.parsing import ParsedAction, parse_assistant
from envs.tasks import FAMILIES, Task, hard_level, levels, sample_task
from envs.tasks.task import check_split, make_rng
from envs.tools import resolve_tool, run_tool, tool_schema
from envs.tools.knowledge_base import get_knowledge_base
from envs.tools.search import DEFAULT_TOP_K, search, with_top_k

DEFAULT_REWARDS = {"correct": 1.0, "wrong": 0.0, "truncated": -0.5, "invalid_call": -0.1, "valid_call": 0.0}
DEFAULT_MAX_TURNS = {"arithmetic": 4, "knowledge": 5}
DEFAULT_TOOLS = {"arithmetic": ["calculator"], "knowledge": ["search"]}
DEFAULT_SYSTEM_PROMPT = "Use the tools, then reply: The answer is X."
CUSTOM_MAX_TURNS = 4
CUSTOM_FAMILY = "custom"
# spaces.Text defaults to alphanumerics only; chat text needs punctuation, spaces and newlines.
CHARSET = string.printable
MAX_ACTION_CHARS = 4096
MAX_PROMPT_CHARS = 1024
_CHARSET_SET = frozenset(CHARSET)

Message = dict[str, Any]
TaskSource = Callable[[random.Random, str], Task]
Grader = Callable[[Task, str], bool]


class ToolUseEnv(gym.Env[str, str]):
    """Tool-using agent environment over arithmetic, knowledge-base or user-supplied tasks; text in, text out."""

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        task_family: str | None = None,
        split: str = "train",
        difficulty: int | str = "mixed",
        max_turns: int | None = None,
        tools: Sequence[str | Callable] | None = None,
        rewards: dict[str, float] | None = None,
        tool_timeout_s: float = 1.0,
        max_observation_chars: int = 300,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        top_k: int = DEFAULT_TOP_K,
        max_tool_calls_per_turn: int = 4,
        render_mode: str | None = None,
        task_source: TaskSource | None = None,
        grader: Grader | None = None,
    ) -> None:
        self.task_source = _check_callable(task_source, "task_source")
        self.grader = _check_callable(grader, "grader")
        task_family = task_family or (CUSTOM_FAMILY if task_source else "arithmetic")
        if task_source is None and task_family not in FAMILIES:
            raise ValueError(f"task_family must be one of {sorted(FAMILIES)}, got {task_family!r}")
        if task_source is not None and tools is None:
            raise ValueError("tools: a task_source needs its tools (typed functions, 'module:function' or names)")
        check_split(split)
        self.task_family, self.split = task_family, split
        self.difficulty = self._check_difficulty(difficulty, "difficulty")
        default_turns = DEFAULT_MAX_TURNS.get(task_family, CUSTOM_MAX_TURNS)
        self.max_turns = _positive_int(default_turns if max_turns is None else max_turns, "max_turns")
        self.rewards = _merge_rewards(rewards)
        self.tool_timeout_s = float(tool_timeout_s)
        self.max_observation_chars = _positive_int(max_observation_chars, "max_observation_chars")
        self.max_tool_calls_per_turn = _positive_int(max_tool_calls_per_turn, "max_tool_calls_per_turn")
        self.system_prompt = system_prompt
        self.render_mode = render_mode
        self.tools = _build_tools(DEFAULT_TOOLS[task_family] if tools is None else tools, top_k)
        self.tool_schemas = [tool_schema(fn) for fn in self.tools.values()]
        self.observation_space = spaces.Text(
            max(max_observation_chars, MAX_PROMPT_CHARS), min_length=0, charset=CHARSET
        )
        self.action_space = spaces.Text(MAX_ACTION_CHARS, min_length=0, charset=CHARSET)
        self._known_names = get_knowledge_base().names
        self._task: Task | None = None
        self._messages: list[Message] = []
        self._turn = 0
        self._done = True

    # ----- episode API -------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        """Start an episode; `options` may hold `difficulty` (curriculum override) or a pre-built `task`."""
        super().reset(seed=seed)
        self._task = self._choose_task(seed, options or {})
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        self._messages = system + [{"role": "user", "content": self._task.prompt}]
        self._turn, self._done = 0, False
        info = {"messages": list(self._messages), "tools": list(self.tool_schemas), "task": self._task.to_dict()}
        return self._fit(self._task.prompt, self.observation_space.max_length), info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Play one assistant turn: run its tool calls, or grade it as the final answer."""
        if self._done or self._task is None:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if not isinstance(action, str):
            raise TypeError(f"action must be the assistant's text (str), got {type(action).__name__}")
        self._turn += 1
        action_truncated = len(action) > MAX_ACTION_CHARS
        if action_truncated:
            # Cut before parsing: an over-long reply is never run or graded, and the history stays bounded.
            problem = f"reply longer than {MAX_ACTION_CHARS} characters; nothing in it was run or graded"
            turn = self._invalid_turn(action[:MAX_ACTION_CHARS], problem)
        else:
            turn = self._play(action)
        truncated = not turn.terminated and self._turn >= self.max_turns
        if truncated:
            turn.components["truncated"] = self.rewards["truncated"]
        self._done = turn.terminated or truncated
        self._messages += [turn.assistant, *turn.env_messages]
        info = {
            "messages": list(self._messages),
            "env_messages": turn.env_messages,
            "reward_components": turn.components,
            "success": turn.success,
            "tool_calls": turn.n_calls,
            "invalid_tool_call": turn.invalid,
            "action_truncated": action_truncated,
            "turn": self._turn,
        }
        return turn.observation, float(sum(turn.components.values())), turn.terminated, truncated, info

    def render(self) -> str | None:
        """With render_mode="ansi", the conversation so far as plain text."""
        if self.render_mode != "ansi":
            return None
        return "\n".join(_render_message(message) for message in self._messages)

    # ----- the three kinds of turn -------------------------------------------------------------------------

    def _play(self, action: str) -> _Turn:
        """A final answer (no tool call), an invalid turn (a call that cannot run), or a tool turn."""
        parsed = parse_assistant(action)
        if parsed.error is None and not parsed.tool_calls:
            return self._final_answer(action)
        problem = parsed.error or self._call_problem(parsed)
        return self._invalid_turn(action, problem) if problem else self._tool_turn(parsed)

    def _final_answer(self, action: str) -> _Turn:
        if self.grader is not None:
            success = bool(self.grader(self._task, action))
        else:
            success = is_correct(self._task, action, self._known_names)
        outcome = "correct" if success else "wrong"
        assistant = {"role": "assistant", "content": action}
        observation = "Correct." if success else "Wrong."
        return _Turn(observation, assistant, [], {outcome: self.rewards[outcome]}, terminated=True, success=success)

    def _invalid_turn(self, action: str, problem: str) -> _Turn:
        # The raw text is kept as content: there is no structured call to record.
        observation = self._fit(f"Error: {problem}", self.max_observation_chars)
        error_message = {"role": "tool", "name": "error", "content": observation}
        assistant = {"role": "assistant", "content": action}
        components = {"invalid_call": self.rewards["invalid_call"]}
        return _Turn(observation, assistant, [error_message], components, invalid=True)

    def _tool_turn(self, parsed: ParsedAction) -> _Turn:
        calls = parsed.tool_calls
        # Share the observation budget between calls so the joined observation equals the tool messages.
        budget = max(1, (self.max_observation_chars - (len(calls) - 1)) // len(calls))
        outputs, failed = [], False
        for call in calls:
            output, ok = run_tool(self.tools[call["name"]], call["arguments"], self.tool_timeout_s, budget)
            outputs.append(self._fit(output, budget))
            failed |= not ok
        assistant = {
            "role": "assistant",
            "content": parsed.content,
            "tool_calls": [{"type": "function", "function": call} for call in calls],
        }
        tool_messages = [{"role": "tool", "name": c["name"], "content": out} for c, out in zip(calls, outputs)]
        # A well-formed call the tool rejected (bad arguments, an "Error:" result, an exception, a time-out) is an
        # invalid call: the input was the agent's mistake. Its error text is still the tool message the agent sees.
        key = "invalid_call" if failed else "valid_call"
        components = {key: self.rewards[key]}
        return _Turn("\n".join(outputs), assistant, tool_messages, components, n_calls=len(calls), invalid=failed)

    # ----- helpers -----------------------------------------------------------------------------------------

    def _call_problem(self, parsed: ParsedAction) -> str | None:
        """Why well-formed calls still cannot run: an unknown tool, or too many calls in one turn."""
        if len(parsed.tool_calls) > self.max_tool_calls_per_turn:
            return f"at most {self.max_tool_calls_per_turn} tool calls per turn"
        for call in parsed.tool_calls:
            if call["name"] not in self.tools:
                return f"unknown tool {call['name'][:40]!r}; available: {', '.join(self.tools)}"
        return None

    def _choose_task(self, seed: int | None, options: dict) -> Task:
        if options.get("task") is not None:
            task = options["task"]
            return task if isinstance(task, Task) else Task.from_dict(dict(task))
        difficulty = self._check_difficulty(options.get("difficulty", self.difficulty), "options['difficulty']")
        # Unseeded resets draw from the env's RNG, which reset(seed=...) seeded: sequences stay reproducible.
        task_seed = seed if seed is not None else int(self.np_random.integers(2**31))
        if self.task_source is not None:
            return self._source_task(task_seed, difficulty)
        return sample_task(self.task_family, task_seed, self.split, difficulty)

    def _source_task(self, task_seed: int, difficulty: int | str) -> Task:
        """A task from the user's source, checked: a wrong return type is named here, not three calls later."""
        takes_difficulty = "difficulty" in _parameters(self.task_source)
        rng = make_rng(task_seed, self.split)
        kwargs = {"difficulty": difficulty} if takes_difficulty else {}
        task = self.task_source(rng, self.split, **kwargs)
        if isinstance(task, dict):
            task = Task.from_dict(task)
        if not isinstance(task, Task) or not isinstance(task.prompt, str) or not task.prompt:
            name = getattr(self.task_source, "__name__", "task_source")
            raise TypeError(f"task_source {name} must return a Task with a non-empty prompt, got {task!r:.200}")
        return task

    def _check_difficulty(self, difficulty: int | str, field: str) -> int | str:
        if self.task_source is not None:
            return difficulty  # the source decides what its levels are
        allowed = (*levels(self.task_family), hard_level(self.task_family))
        if difficulty not in ("mixed", "hard") and difficulty not in allowed:
            raise ValueError(
                f"{field} for {self.task_family} must be one of {allowed}, 'hard' or 'mixed', got {difficulty!r}"
            )
        return difficulty

    @staticmethod
    def _fit(text: str, max_chars: int) -> str:
        """Make `text` a member of the Text spaces: printable ASCII only ('?' otherwise), at most `max_chars`."""
        text = text[:max_chars]
        return text if _CHARSET_SET.issuperset(text) else "".join(c if c in _CHARSET_SET else "?" for c in text)


@dataclass
class _Turn:
    """What one step produced, before truncation is applied."""

    observation: str
    assistant: Message
    env_messages: list[Message]
    components: dict[str, float]
    terminated: bool = False
    success: bool = False
    n_calls: int = 0
    invalid: bool = False


def _build_tools(specs: Sequence[str | Callable], top_k: int) -> dict[str, Callable]:
    """Tool name -> function; the built-in `search` is re-bound when the env asks for a different top_k."""
    tools: dict[str, Callable] = {}
    for spec in specs:
        fn = resolve_tool(spec)
        if fn is search and top_k != DEFAULT_TOP_K:
            fn = with_top_k(_positive_int(top_k, "top_k"))
        name = getattr(fn, "__name__", None)
        if not name or name in tools:
            raise ValueError(f"tools: {spec!r} has no usable name or duplicates another tool's name")
        tools[name] = fn
    return tools


def _check_callable(fn: Callable | None, field: str) -> Callable | None:
    if fn is not None and not callable(fn):
        raise TypeError(f"{field} must be a callable, got {type(fn).__name__}")
    return fn


def _parameters(fn: Callable) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: call it with (rng, split) only
        return set()


def _merge_rewards(overrides: dict[str, float] | None) -> dict[str, float]:
    unknown = set(overrides or {}) - set(DEFAULT_REWARDS)
    if unknown:
        raise ValueError(f"rewards: unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULT_REWARDS)}")
    return {**DEFAULT_REWARDS, **{key: float(value) for key, value in (overrides or {}).items()}}


def _positive_int(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return value


def _render_message(message: Message) -> str:
    calls = " ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in message.get("tool_calls", []))
    return f"[{message['role']}] {message.get('content') or ''}{calls}"
