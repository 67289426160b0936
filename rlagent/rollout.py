"""Batched multi-turn rollouts: many episodes at once, token in / token out, environment tokens masked out.

Each turn, every still-active episode is left-padded into ONE `generate` call (KV cache, stop at end-of-turn, plain
temperature sampling). The sampled ids are kept as they are (never decoded and re-tokenised); the environment's
reply is rendered through the chat template and appended as tokens with policy_mask = 0 (PPO_CHECKLIST B.11, C.12).

    envs = make_envs("rlagent/Calculator-v0", 32, split="test")
    traj = run_episodes(ModelPolicy(model, tokenizer, greedy=True), envs, seeds=list(range(32)), tokenizer=tokenizer)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig


@dataclass
class Trajectory:
    """A batch of finished episodes, right-padded to a common length T.

    input_ids, attention_mask, policy_mask: (B, T). policy_mask is 1 exactly on tokens the policy sampled; 0 on the
    prompt, environment replies, forced template tokens and padding. Per-episode fields are (B,) tensors or lists.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    policy_mask: torch.Tensor
    env_reward: torch.Tensor  # (B,) sum of the environment's rewards over the episode
    success: torch.Tensor  # (B,) 1.0 if the final answer was correct
    turns: torch.Tensor  # (B,) assistant turns taken
    tool_calls: torch.Tensor  # (B,) well-formed calls to known tools that the environment ran
    invalid_tool_calls: torch.Tensor  # (B,) turns whose tool call was rejected (malformed, unknown tool, bad args)
    truncated: torch.Tensor  # (B,) episode hit the turn or token limit without a final answer
    missing_eos: torch.Tensor  # (B,) some turn hit max_new_tokens without emitting end-of-turn
    reward_components: list[dict]  # per episode: component name -> summed value
    spans: list[list[tuple[int, int, str]]]  # per episode: (start, end, "prompt"|"policy"|"env") token spans
    messages: list[list[dict]]  # final chat history per episode (HF format)
    tasks: list[dict]
    render_mismatch: list[bool]  # our tokens differ from a fresh render of `messages` (see check_render)
    generated_tokens: int = 0
    seconds: float = 0.0
    tool_call_turns: torch.Tensor | None = None  # (B,) turns that attempted a tool call, valid or not
    tools: list = field(default_factory=list)  # per episode: the tool schemas the policy was shown
    seeds: list[int] = field(default_factory=list)  # per episode: the reset seed
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class _Episode:
    env: object
    seed: int
    tokens: list[int]
    policy_mask: list[int]
    spans: list[tuple[int, int, str]]
    messages: list[dict]
    tools: list
    task: dict
    actor: Callable | None = None  # per-episode state of a TextPolicy (e.g. a noisy expert's RNG)
    done: bool = False
    reward: float = 0.0
    success: bool = False
    turns: int = 0
    tool_calls: int = 0
    tool_call_turns: int = 0
    invalid: int = 0
    truncated: bool = False
    missing_eos: bool = False
    components: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Policies: `act(episodes)` maps each active episode to one new assistant turn (token ids, normally ending with EOS).

# Sampling knobs a checkpoint's generation_config.json may set (Qwen ships top_k=20, top_p=0.8, repetition_penalty
# 1.05). HF fills every knob we leave unset from the checkpoint, so each is pinned to its neutral value.
NEUTRAL_SAMPLING = dict(
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    typical_p=1.0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
)


class ModelPolicy:
    """An HF causal LM sampling with plain temperature (no top-k/top-p/repetition penalty: PPO_CHECKLIST B.6).

    Generation stops at the tokenizer's eos token (the end-of-turn token, e.g. <|im_end|>); a turn that reaches
    `max_new_tokens` first is kept as sampled and flagged `missing_eos`.
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 96, temperature: float = 1.0, greedy: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.max_new_tokens = max_new_tokens
        sampling = {} if greedy else {"temperature": temperature, **NEUTRAL_SAMPLING}
        self.generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            **sampling,
        )

    def act(self, episodes: list[_Episode]) -> list[list[int]]:
        return self.generate([ep.tokens for ep in episodes])

    @torch.no_grad()
    def generate(self, sequences: list[list[int]]) -> list[list[int]]:
        """One turn for each sequence: left-padded into a single batch; position_ids follow the attention mask."""
        width = max(len(s) for s in sequences)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in sequences], device=device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention, generation_config=self.generation_config
            )
        finally:
            self.model.train(was_training)
        return [cut_at_eos(row[width:].tolist(), self.eos_id) for row in out]


class TextPolicy:
    """A text-producing policy, e.g. a scripted expert; its text is tokenised and closed with the eos token.

    TextPolicy(fn, tok): fn(messages, task) -> assistant text, one function for all episodes.
    TextPolicy(make, tok, per_episode=True): make(seed) -> fn, a fresh actor per episode (seeded by its reset seed),
    so a stateful actor gives the same episode whatever the batch it runs in.
    """

    def __init__(self, fn: Callable, tokenizer, per_episode: bool = False):
        self.fn, self.tokenizer, self.per_episode = fn, tokenizer, per_episode
        self.eos_id = tokenizer.eos_token_id

    def act(self, episodes: list[_Episode]) -> list[list[int]]:
        return [self.encode(self._actor(ep)(ep.messages, ep.task)) for ep in episodes]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids + [self.eos_id]

    def _actor(self, ep: _Episode) -> Callable:
        if not self.per_episode:
            return self.fn
        if ep.actor is None:
            ep.actor = self.fn(ep.seed)
        return ep.actor


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """Keep tokens up to and including the first end-of-turn token.

    generate() pads a row only after it emitted eos, so a row without eos is max_new_tokens real samples: keep all
    of it (stripping "trailing padding" there would drop sampled tokens if the model ever sampled the pad id).
    """
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


# ---------------------------------------------------------------------------------------------------------------------
# Chat-template rendering of environment replies


def render_env_reply(tokenizer, history: list[dict], env_messages: list[dict], tools) -> list[int]:
    """Tokens the chat template places after the assistant's end-of-turn token, up to the next generation prompt.

    Rendered as a string delta between the history and history + env messages (veRL's multi-turn approach). The
    template's text after the assistant's last end-of-turn (e.g. "\\n") belongs to the delta too, because the policy
    stopped at end-of-turn.
    """
    before = tokenizer.apply_chat_template(history, tools=tools, tokenize=False)
    after = tokenizer.apply_chat_template(
        history + env_messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    if not after.startswith(before):
        raise ValueError("chat template is not prefix-stable: rendering more messages changed earlier text")
    eos = tokenizer.eos_token
    tail = before[before.rindex(eos) + len(eos) :] if eos in before else ""
    return tokenizer(tail + after[len(before) :], add_special_tokens=False).input_ids


def check_render(tokenizer, tokens: list[int], messages: list[dict], tools) -> bool:
    """True when our token sequence differs from tokenising a fresh render of the final conversation.

    A mismatch is not an error (e.g. the model wrote a tool call with spacing the template would not produce); it is
    counted so users see how far training tokens drift from what the template would feed the model. Compared as a
    prefix: the template adds text after the last end-of-turn (and the env's last reply, when the token budget ended
    the episode) that was never appended.
    """
    rendered = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True)["input_ids"]
    return list(rendered[: len(tokens)]) != list(tokens)


# ---------------------------------------------------------------------------------------------------------------------
# The engine


def _reset(env, seed: int, options: dict | None, tokenizer) -> _Episode:
    _, info = env.reset(seed=seed, options=options)
    messages, tools = list(info["messages"]), info.get("tools")
    prompt = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    prompt = list(prompt)
    spans = [(0, len(prompt), "prompt")]
    return _Episode(env, seed, prompt, [0] * len(prompt), spans, messages, tools, info.get("task", {}))


def _append(ep: _Episode, ids: list[int], is_policy: bool) -> None:
    start = len(ep.tokens)
    ep.tokens += ids
    ep.policy_mask += [int(is_policy)] * len(ids)
    ep.spans.append((start, len(ep.tokens), "policy" if is_policy else "env"))


def _record(ep: _Episode, reward: float, info: dict) -> None:
    """Accumulate one step's reward, reward components and tool-call counts."""
    ep.turns += 1
    ep.reward += float(reward)
    for key, value in info.get("reward_components", {}).items():
        ep.components[key] = ep.components.get(key, 0.0) + float(value)
    calls, invalid = int(info.get("tool_calls", 0)), bool(info.get("invalid_tool_call", False))
    ep.tool_calls += calls
    ep.invalid += int(invalid)
    ep.tool_call_turns += int(calls > 0 or invalid)


def _truncate(ep: _Episode) -> None:
    """No room for another turn: end the episode as truncated, with the env's turn-limit penalty."""
    ep.done, ep.truncated = True, True
    penalty = float(getattr(ep.env.unwrapped, "rewards", {}).get("truncated", -0.5))
    ep.reward += penalty
    ep.components["truncated"] = ep.components.get("truncated", 0.0) + penalty


def _step(ep: _Episode, ids: list[int], eos_id: int, tokenizer, token_budget: int) -> None:
    """Feed one generated turn to the environment and append its reply as non-policy tokens."""
    has_eos = bool(ids) and ids[-1] == eos_id
    ep.missing_eos |= not has_eos
    _append(ep, ids, True)
    text = tokenizer.decode(ids[:-1] if has_eos else ids, skip_special_tokens=False)
    _, reward, terminated, truncated, info = ep.env.step(text)
    _record(ep, reward, info)
    ep.messages = list(info["messages"])
    if terminated or truncated:
        ep.done, ep.truncated, ep.success = True, bool(truncated and not terminated), bool(info.get("success", False))
        return
    env_messages = list(info["env_messages"])
    history = ep.messages[: len(ep.messages) - len(env_messages)]
    reply = render_env_reply(tokenizer, history, env_messages, ep.tools)
    # A turn cut at max_new_tokens is closed with a forced end-of-turn token (not sampled: policy_mask 0), so the
    # context matches what the template renders for the truncated message.
    reply = ([] if has_eos else [eos_id]) + reply
    if len(ep.tokens) + len(reply) > token_budget:
        _truncate(ep)
        return
    _append(ep, reply, False)


def run_episodes(
    policy,
    envs: list,
    seeds: list[int],
    tokenizer,
    options: list[dict | None] | None = None,
    max_total_tokens: int = 1024,
    sanity_check: bool = True,
) -> Trajectory:
    """Play one episode in each env (env i reset with seeds[i]) until all are done; return the batch.

    Every sequence stays within `max_total_tokens`: an episode whose next environment reply would leave no room for
    a full response (max_new_tokens) ends as truncated, with the environment's truncation penalty.
    """
    t0 = time.time()
    options = options or [None] * len(envs)
    episodes = [_reset(env, seed, opt, tokenizer) for env, seed, opt in zip(envs, seeds, options)]
    eos_id, generated = tokenizer.eos_token_id, 0
    token_budget = max_total_tokens - getattr(policy, "max_new_tokens", 0)
    longest_prompt = max(len(ep.tokens) for ep in episodes)
    if longest_prompt > token_budget:
        raise ValueError(
            f"a prompt has {longest_prompt} tokens; with max_new_tokens it does not fit "
            f"max_total_tokens={max_total_tokens}"
        )
    while active := [ep for ep in episodes if not ep.done]:
        for ep, ids in zip(active, policy.act(active)):
            generated += len(ids)
            _step(ep, ids, eos_id, tokenizer, token_budget)
    mismatch = [
        check_render(tokenizer, ep.tokens, ep.messages, ep.tools) if sanity_check else False for ep in episodes
    ]
    return _collate(episodes, tokenizer.pad_token_id, mismatch, generated, time.time() - t0)


def _collate(episodes: list[_Episode], pad_id: int, mismatch: list[bool], generated: int, seconds: float):
    width = max(len(ep.tokens) for ep in episodes)
    n = len(episodes)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    policy_mask = torch.zeros((n, width), dtype=torch.float32)
    for i, ep in enumerate(episodes):
        length = len(ep.tokens)
        input_ids[i, :length] = torch.tensor(ep.tokens)
        attention[i, :length] = 1
        policy_mask[i, :length] = torch.tensor(ep.policy_mask, dtype=torch.float32)

    def per_episode(attr):
        return torch.tensor([float(getattr(ep, attr)) for ep in episodes])

    return Trajectory(
        input_ids=input_ids,
        attention_mask=attention,
        policy_mask=policy_mask,
        env_reward=per_episode("reward"),
        success=per_episode("success"),
        turns=per_episode("turns"),
        tool_calls=per_episode("tool_calls"),
        invalid_tool_calls=per_episode("invalid"),
        truncated=per_episode("truncated"),
        missing_eos=per_episode("missing_eos"),
        reward_components=[ep.components for ep in episodes],
        spans=[ep.spans for ep in episodes],
        messages=[ep.messages for ep in episodes],
        tasks=[ep.task for ep in episodes],
        render_mismatch=mismatch,
        generated_tokens=generated,
        seconds=seconds,
        tool_call_turns=per_episode("tool_call_turns"),
        tools=[ep.tools for ep in episodes],
        seeds=[ep.seed for ep in episodes],
    )


def make_envs(env_id: str, n: int, split: str = "train", **env_kwargs) -> list:
    """n independent environments (gymnasium.make), registering rlagent's environments first."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers rlagent/* ids)

    return [gym.make(env_id, split=split, **env_kwargs) for _ in range(n)]
