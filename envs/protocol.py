"""What rlagent's rollout engine needs from an environment, and `check_env` / `check_step` that enforce it.

An environment is a `gymnasium.Env` whose action is the assistant's text. The engine (rlagent/rollout/engine.py)
renders the conversation through the model's chat template, so what it reads is chat MESSAGES, not observations:

reset(seed=int, options=dict | None) -> (observation, info)
    info["messages"]  REQUIRED. The chat so far in Hugging Face format: a non-empty list of {"role", "content"}
                      dicts (system prompt, then the task as a user message). The engine renders it with
                      `add_generation_prompt=True`, so the last message must not be the assistant's.
    info["tools"]     optional. The tool JSON schemas the chat template shows the model
                      ({"type": "function", "function": {"name", "description", "parameters"}}), e.g. from
                      `transformers.utils.get_json_schema(fn)`; None or absent = no tools.
    info["task"]      optional. A JSON-serialisable dict describing the task; saved with each episode and given to
                      text policies (the scripted expert reads `envs.tasks.Task` fields from it).
    `options` may carry {"difficulty": level} from the PPO curriculum; an env may ignore it.
    The observation itself is not read (ToolUseEnv returns the prompt text).

step(text: str) -> (observation, reward, terminated, truncated, info)
    text              one assistant turn, decoded without the end-of-turn token. Tool calls are Hermes/Qwen
                      `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (parse with
                      `envs.parsing.parse_assistant`); a turn without one is conventionally the final answer.
    reward            float: this turn's reward; the engine sums them over the episode.
    terminated        the episode ended on its own (final answer); truncated: it hit the env's turn limit.
    info["messages"]  REQUIRED. The whole chat after this turn: the previous messages, the assistant message, then
                      info["env_messages"]. Record tool calls as structured `tool_calls` (as the template would
                      render them), so the engine's tokens match a fresh render of the conversation.
    info["env_messages"]  REQUIRED while the episode goes on: the messages this step appended after the assistant
                      message (usually {"role": "tool", "name", "content"}); the engine renders exactly these through
                      the chat template as non-policy tokens (policy_mask 0). Not read after the last step.
    info["success"]   optional, read at the last step: the task was solved (drives success rates; default False).
    info["reward_components"]  optional: {name: value} parts of `reward`, summed per episode and logged.
    info["tool_calls"]  optional int: tool calls the env ran this turn; info["invalid_tool_call"]: optional bool,
                      the turn's call was rejected (malformed, unknown tool, bad arguments). Both feed the metrics.

Optional attribute: `env.unwrapped.rewards["truncated"]`, the penalty the engine adds when IT ends an episode for the
token budget (default -0.5). `action_space`, when set, must be `gymnasium.spaces.Text` (the action is text).

`check_env(env, spec)` resets once (seed 0) and raises `EnvProtocolError` naming the environment and the first
missing piece; `check_step(result, spec)` checks one step's 5-tuple (the engine can run it on first steps).
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
from gymnasium import spaces

ROLES = ("system", "user", "assistant", "tool")
STEP_FIELDS = "(observation, reward, terminated, truncated, info)"


class EnvProtocolError(ValueError):
    """An environment does not give the rollout engine what it needs; the message names the env and the piece."""


def check_env(env: gym.Env, spec: str) -> dict:
    """Reset `env` once (seed 0) and check what reset returns; returns the reset info.

    Raises EnvProtocolError naming `spec` and the first missing or malformed piece.
    """
    action_space = getattr(env, "action_space", None)
    if action_space is not None and not isinstance(action_space, spaces.Text):
        _fail(spec, f"action_space is {type(action_space).__name__}; it must be gymnasium.spaces.Text (the action is "
                    "the assistant's text)")  # fmt: skip
    try:
        result = env.reset(seed=0)
    except Exception as exc:
        raise EnvProtocolError(
            f"rlagent: environment {spec!r} reset(seed=0) raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, tuple) or len(result) != 2 or not isinstance(result[1], dict):
        _fail(spec, "reset() must return (observation, info) with info a dict")
    info = result[1]
    check_reset_info(info, spec)
    return info


def check_reset_info(info: dict, spec: str) -> None:
    """The pieces of reset's info the engine reads: messages (required), tools and task (optional)."""
    if "messages" not in info:
        _fail(spec, "reset() info lacks 'messages' (the chat history so far: a list of {'role', 'content'} dicts, "
                    "e.g. [{'role': 'user', 'content': 'the task'}])")  # fmt: skip
    check_messages(info["messages"], spec, "reset() info['messages']")
    if not info["messages"]:
        _fail(spec, "reset() info['messages'] is empty: it must hold at least the task as a user message")
    if info["messages"][-1].get("role") == "assistant":
        _fail(spec, "reset() info['messages'] ends with an assistant message; the model must answer next")
    _check_tools(info.get("tools"), spec)
    task = info.get("task")
    if task is not None:
        if not isinstance(task, dict):
            _fail(spec, f"reset() info['task'] must be a dict, got {type(task).__name__}")
        try:
            json.dumps(task)
        except (TypeError, ValueError) as exc:
            _fail(spec, f"reset() info['task'] is not JSON-serialisable ({exc})")


def check_step(result: Any, spec: str) -> None:
    """One step's return value: the 5-tuple, its types, and the info keys the engine reads."""
    if not isinstance(result, tuple) or len(result) != 5:
        _fail(spec, f"step() must return {STEP_FIELDS}")
    _, reward, terminated, truncated, info = result
    if not isinstance(info, dict):
        _fail(spec, f"step() info must be a dict, got {type(info).__name__}")
    try:
        float(reward)
    except (TypeError, ValueError):
        _fail(spec, f"step() reward must be a number, got {reward!r:.80}")
    if "messages" not in info:
        _fail(spec, "step() info lacks 'messages' (the whole chat after this turn, ending with info['env_messages'])")
    check_messages(info["messages"], spec, "step() info['messages']")
    if not (terminated or truncated):
        if "env_messages" not in info:
            _fail(spec, "step() info lacks 'env_messages' (the messages this step appended after the assistant "
                        "message, e.g. [{'role': 'tool', 'name': ..., 'content': ...}])")  # fmt: skip
        check_messages(info["env_messages"], spec, "step() info['env_messages']")
        tail = info["messages"][len(info["messages"]) - len(info["env_messages"]) :]
        if tail != list(info["env_messages"]):
            _fail(spec, "step() info['messages'] must end with info['env_messages']")
    components = info.get("reward_components", {})
    if not isinstance(components, dict) or not all(isinstance(v, (int, float)) for v in components.values()):
        _fail(spec, "step() info['reward_components'] must be a dict of name -> number")


def check_messages(messages: Any, spec: str, where: str) -> None:
    """A list of chat messages in Hugging Face format (`message_problem`); an empty list is allowed here."""
    problem = message_problem(messages, where, allow_empty=True)
    if problem:
        _fail(spec, problem)


def message_problem(messages: Any, field: str, allow_empty: bool = False) -> str | None:
    """What is wrong with an HF-format chat list, naming `field` and the message (None when it is fine): dicts
    with a known role, str (or null) content, content omitted only by a message that calls tools, tool calls
    shaped as chat templates render them. The one message check of the project (environments and data files)."""
    if not isinstance(messages, list) or (not messages and not allow_empty):
        got = "an empty list" if messages == [] else json_type(messages)
        return f"'{field}' must be a {'' if allow_empty else 'non-empty '}list of messages, got {got}"
    for i, msg in enumerate(messages):
        name = f"{field}[{i}]"
        if not isinstance(msg, dict):
            return f"'{name}' must be an object with 'role' and 'content', got {json_type(msg)}"
        if msg.get("role") not in ROLES:
            return f"'{name}.role' must be one of {sorted(ROLES)}, got {msg.get('role')!r}"
        if msg.get("tool_calls"):
            problem = _tool_calls_problem(msg, name)
            if problem:
                return problem
        elif msg.get("content") is None:  # only a message that calls tools may omit its text
            return f"'{name}' has no 'content'"
        if not isinstance(msg.get("content", ""), str | type(None)):
            return f"'{name}.content' must be a string, got {json_type(msg['content'])}"
    return None


def _tool_calls_problem(msg: dict, name: str) -> str | None:
    """HF tool calls: a list of {"function": {"name": str, "arguments": object or JSON string}} (or the function
    fields directly); chat templates render these fields, and a wrong shape would render as silent garbage."""
    calls = msg["tool_calls"]
    if msg["role"] != "assistant" or not isinstance(calls, list):
        return f"'{name}.tool_calls' must be a list, on an assistant message"
    for j, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return f"'{name}.tool_calls[{j}]' must be an object with function.name"
        if not isinstance(function.get("arguments", {}), dict | str):
            return f"'{name}.tool_calls[{j}]' arguments must be an object or a JSON string"
    return None


def json_type(value: Any) -> str:
    """JSON's name for a parsed value's type (users wrote JSON, not Python)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_tools(tools: Any, spec: str) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        _fail(spec, f"reset() info['tools'] must be a list of tool JSON schemas, got {type(tools).__name__}")
    for index, schema in enumerate(tools):
        function = schema.get("function") if isinstance(schema, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            shape = "{'type': 'function', 'function': {'name', 'description', 'parameters'}}"
            _fail(spec, f"reset() info['tools'][{index}] is not a tool schema {shape} (get_json_schema(fn) makes one)")


def _fail(spec: str, problem: str) -> None:
    raise EnvProtocolError(f"rlagent: environment {spec!r} {problem}")
