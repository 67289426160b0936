"""Scripted experts: rule-based agents that solve tasks with the tools, for demonstrations and preference pairs.

Noise is drawn once PER EPISODE: with probability `noise` the whole episode follows one failure mode, chosen
uniformly among those that apply to the task; every failure mode ends in failure (wrong answer or truncation):
  guess      answer at once without a tool, with a wrong-ish number or another name of the same kind
  malformed  emit a broken tool call (bad JSON, unclosed tag, non-object arguments, unknown tool), then guess
  loop       keep calling the tool and never answer, until the turn limit truncates the episode
  typo       arithmetic: call the calculator with one operand mistyped, then report that (wrong) result
  one_hop    two-hop knowledge questions: stop after the first search and answer with the bridge entity

A user task family (a `task_source` of ToolUseEnv) is played from `Task.solution`, the tool calls that solve the
task: the expert makes them in order, then answers `Task.answer` (modes guess, malformed and loop apply).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import gymnasium as gym

import envs  # noqa: F401  (registers the environments for gym.make, as callers of this module expect)
from envs.parsing import CLOSE_TAG, OPEN_TAG, format_tool_call
from envs.registry import make_env
from envs.tasks import Task
from envs.tools.knowledge_base import get_knowledge_base

FAILURE_MODES = ("guess", "malformed", "loop", "typo", "one_hop")
TOOL_OF_FAMILY = {"arithmetic": ("calculator", "expression"), "knowledge": ("search", "query")}


def final_answer(answer: str) -> str:
    """The experts' answer sentence; the graders read its last number or name."""
    return f"The answer is {answer}."


class ScriptedExpert:
    """Solves a task from its `expression` / `hops`; with probability `noise` per episode it fails on purpose."""

    def __init__(self, noise: float = 0.0, seed: int = 0, modes: tuple[str, ...] = FAILURE_MODES) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        unknown = set(modes) - set(FAILURE_MODES)
        if not modes or unknown:
            raise ValueError(f"modes must be a non-empty subset of {FAILURE_MODES}, got {modes}")
        self.noise, self.modes = noise, tuple(modes)
        self.rng = random.Random(seed)
        self.mode: str | None = None  # the current episode's failure mode (None = solve it)

    def act(self, info_or_messages: dict | list[dict], task: Task | dict | None = None) -> str:
        """The assistant text for the next turn, given the history so far (an info dict or its messages)."""
        info = info_or_messages if isinstance(info_or_messages, dict) else {"messages": info_or_messages}
        task = _as_task(task if task is not None else info["task"])
        history = _after_prompt(info["messages"])
        turn = sum(message["role"] == "assistant" for message in history)
        if turn == 0:
            self.mode = self._draw_mode(task)
        tool_outputs = [message["content"] for message in history if message["role"] == "tool"]
        return self._plan(task, turn, tool_outputs)

    def applicable_modes(self, task: Task) -> list[str]:
        """Failure modes that make sense (and surely fail) for `task`."""
        if task.family not in TOOL_OF_FAMILY and not task.solution:
            return [mode for mode in ["guess"] if mode in self.modes] or ["guess"]
        modes = ["guess", "malformed", "loop"]
        modes += ["typo"] if task.family == "arithmetic" else []
        modes += ["one_hop"] if len(task.hops) > 1 else []
        return [mode for mode in modes if mode in self.modes] or ["guess"]

    def _draw_mode(self, task: Task) -> str | None:
        if self.noise == 0.0 or self.rng.random() >= self.noise:
            return None
        return self.rng.choice(self.applicable_modes(task))

    def _plan(self, task: Task, turn: int, tool_outputs: list[str]) -> str:
        """One turn of the current mode's script."""
        if task.family not in TOOL_OF_FAMILY:
            return self._plan_solution(task, turn)
        queries = [task.expression] if task.family == "arithmetic" else list(task.hops)
        if self.mode == "guess" or (self.mode == "malformed" and turn > 0):
            return final_answer(self._wrong_answer(task))
        if self.mode == "malformed":
            return self._malformed_call(task, queries[0])
        if self.mode == "loop":
            return _call(task, queries[turn % len(queries)])
        if self.mode == "typo":
            return _call(task, _mistype(queries[0], self.rng)) if turn == 0 else final_answer(tool_outputs[-1])
        if self.mode == "one_hop":
            return _call(task, queries[0]) if turn == 0 else final_answer(task.intermediate or task.answer)
        if turn < len(queries):
            return _call(task, queries[turn])
        return final_answer(_read_answer(task, tool_outputs))

    def _plan_solution(self, task: Task, turn: int) -> str:
        """A user family's script: the solution's calls in order, then the answer (or the mode's failure)."""
        calls = [format_tool_call(call["name"], call["arguments"]) for call in task.solution]
        if self.mode == "guess" or (self.mode == "malformed" and turn > 0):
            return final_answer(self._wrong_answer(task))
        if self.mode == "malformed":
            return calls[0].replace(CLOSE_TAG, "")  # an unclosed tag
        if self.mode == "loop":
            return calls[turn % len(calls)]
        return calls[turn] if turn < len(calls) else final_answer(task.answer)

    def _wrong_answer(self, task: Task) -> str:
        """A plausible but wrong answer: a nearby number, or another entity of the same kind."""
        if task.answer_kind == "number":
            return str(int(float(task.answer)) + self.rng.choice([-1, 1]) * self.rng.randint(1, 12))
        if task.family not in TOOL_OF_FAMILY:
            return "unknown"
        kb = get_knowledge_base()
        kind = kb.by_name[task.answer].kind if task.answer in kb.by_name else "city"
        return self.rng.choice([e.name for e in kb.of_kind(kind) if e.name != task.answer])

    def _malformed_call(self, task: Task, query: str) -> str:
        """One of the usual ways a tool call goes wrong."""
        name, argument = TOOL_OF_FAMILY[task.family]
        good = json.dumps({"name": name, "arguments": {argument: query}}, ensure_ascii=False)
        variants = [
            OPEN_TAG + good[:-1] + CLOSE_TAG,  # missing closing brace
            OPEN_TAG + good,  # unclosed tag
            OPEN_TAG + json.dumps({"name": name, "arguments": query}) + CLOSE_TAG,  # arguments not an object
            format_tool_call(name.upper(), {argument: query}),  # unknown tool
        ]
        return self.rng.choice(variants)


def _call(task: Task, query: str) -> str:
    name, argument = TOOL_OF_FAMILY[task.family]
    return format_tool_call(name, {argument: query})


def _mistype(expression: str, rng: random.Random) -> str:
    """Change the first operand so the result differs (operands are >= 2, so every form's result changes)."""
    return re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), expression, count=1)


def _read_answer(task: Task, tool_outputs: list[str]) -> str:
    """Arithmetic: the calculator's output (what the agent saw); knowledge: the fact it looked up."""
    if task.family == "arithmetic" and tool_outputs and not tool_outputs[-1].startswith("Error"):
        return tool_outputs[-1]
    return task.answer


def _after_prompt(messages: list[dict]) -> list[dict]:
    """Messages after the first user message (the task prompt)."""
    first_user = next((i for i, message in enumerate(messages) if message["role"] == "user"), len(messages))
    return messages[first_user + 1 :]


def _as_task(task: Task | dict) -> Task:
    return task if isinstance(task, Task) else Task.from_dict(task)


# ----- episodes and datasets ---------------------------------------------------------------------------------


def run_expert_episode(env: gym.Env, expert: ScriptedExpert, seed: int, options: dict | None = None) -> dict:
    """Play one episode; returns messages, tools, total reward, success, turns and the task."""
    _, info = env.reset(seed=seed, options=options)
    task, tools, reward = info["task"], info["tools"], 0.0
    done, step_info, turns = False, info, 0
    while not done:
        _, step_reward, terminated, truncated, step_info = env.step(expert.act(step_info, task))
        reward, turns, done = reward + step_reward, turns + 1, terminated or truncated
    success = bool(step_info.get("success", False))
    return {"messages": step_info["messages"], "tools": tools, "reward": reward, "success": success,
            "turns": turns, "task": task}  # fmt: skip


def generate_demonstrations(
    env_id: str,
    episodes: int,
    noise: float = 0.0,
    seed: int = 0,
    split: str = "train",
    only_successful: bool = False,
    difficulty: int | str | None = None,
    modes: tuple[str, ...] = FAILURE_MODES,
) -> list[dict[str, Any]]:
    """SFT conversations {"messages", "tools"} from `episodes` expert episodes (successful ones only if asked).

    `env_id` is any spec `envs.make_env` takes (a registered id or `module:attr`).
    `difficulty` (None = the environment's default mix) and the expert's failure `modes` are passed through.
    """
    env = make_env(env_id, split=split, **({} if difficulty is None else {"difficulty": difficulty}))
    expert = ScriptedExpert(noise=noise, seed=seed, modes=tuple(modes))
    seeds = random.Random(seed)
    rows = []
    for _ in range(episodes):
        episode = run_expert_episode(env, expert, seeds.randrange(2**31))
        if episode["success"] or not only_successful:
            rows.append({"messages": episode["messages"], "tools": episode["tools"]})
    env.close()
    return rows


def generate_preference_pairs(
    env_id: str, n_pairs: int, noise: float = 0.0, seed: int = 0, split: str = "train"
) -> list[dict[str, Any]]:
    """Pairs on the same task: "chosen" by an expert with `noise` that succeeded, "rejected" by one that fails.

    Episodes where the chosen expert failed (possible when noise > 0) are skipped and new seeds drawn.
    """
    if noise >= 1.0:
        raise ValueError("noise must be < 1 for the chosen expert to succeed")
    env = make_env(env_id, split=split)
    chosen_expert, rejected_expert = ScriptedExpert(noise, seed), ScriptedExpert(1.0, seed + 1)
    seeds = random.Random(seed)
    pairs: list[dict[str, Any]] = []
    while len(pairs) < n_pairs:
        episode_seed = seeds.randrange(2**31)
        chosen = run_expert_episode(env, chosen_expert, episode_seed)
        if chosen["success"]:
            rejected = run_expert_episode(env, rejected_expert, episode_seed)
            pairs.append(_pair(chosen, rejected, episode_seed))
    env.close()
    return pairs


def _pair(chosen: dict, rejected: dict, episode_seed: int) -> dict[str, Any]:
    n_prompt = 1 + next(i for i, message in enumerate(chosen["messages"]) if message["role"] == "user")
    return {
        "prompt": chosen["messages"][:n_prompt],
        "chosen": chosen["messages"][n_prompt:],
        "rejected": rejected["messages"][n_prompt:],
        "tools": chosen["tools"],
        "chosen_reward": chosen["reward"],
        "rejected_reward": rejected["reward"],
        "seed": episode_seed,
    }
