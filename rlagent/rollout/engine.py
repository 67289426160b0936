"""The batched multi-turn rollout engine: many episodes at once, token in / token out, environment tokens masked out.

Each turn, every still-active episode asks the policy for one assistant turn (token ids; a ModelPolicy decodes them
all in one batch, see rlagent.rollout.decoding). The ids are kept as they are (never decoded and re-tokenised); the
environment's reply is rendered through the chat template (rlagent.common.chat) and appended as tokens with policy_mask
= 0 (docs/ppo.md B.11, C.12). The finished batch is a Trajectory.

    envs = make_envs("rlagent/Calculator-v0", 32, split="test")
    traj = run_episodes(ModelPolicy(model, tokenizer, greedy=True), envs, seeds=list(range(32)), tokenizer=tokenizer)

Policies live in rlagent.rollout.decoding (ModelPolicy) and rlagent.rollout.policies (TextPolicy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rlagent.common.chat import encode_many, render_env_reply, render_mismatches
from rlagent.common.data import right_pad


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
    render_mismatch: list[bool]  # our tokens differ from a fresh render of `messages` (see render_mismatches)
    generated_tokens: int = 0
    seconds: float = 0.0
    tool_call_turns: torch.Tensor | None = None  # (B,) turns that attempted a tool call, valid or not
    tools: list = field(default_factory=list)  # per episode: the tool schemas the policy was shown
    seeds: list[int] = field(default_factory=list)  # per episode: the reset seed
    extras: dict = field(default_factory=dict)
    # (B, T) log-prob of each policy token under the sampler's distribution (the generation backend's, at the
    # rollout temperature), aligned like the learner's token log-probs; 0 elsewhere and for text policies.
    sampler_logprobs: torch.Tensor | None = None

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
    sampler_logprobs: list[float] = field(default_factory=list)  # per token: its sampling log-prob (0 if none)
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
# The engine


def _reset_all(envs: list, seeds: list[int], options: list, tokenizer) -> list[_Episode]:
    """Reset every env and render its prompt through the chat template (tokenised in one batch)."""
    infos = [env.reset(seed=seed, options=opt)[1] for env, seed, opt in zip(envs, seeds, options)]
    texts = [tokenizer.apply_chat_template(info["messages"], tools=info.get("tools"), tokenize=False,
                                           add_generation_prompt=True) for info in infos]  # fmt: skip
    episodes = []
    for env, seed, info, prompt in zip(envs, seeds, infos, encode_many(tokenizer, texts)):
        spans = [(0, len(prompt), "prompt")]
        episode = _Episode(env, seed, prompt, [0] * len(prompt), spans, list(info["messages"]), info.get("tools"),
                           info.get("task", {}), sampler_logprobs=[0.0] * len(prompt))  # fmt: skip
        episodes.append(episode)
    return episodes


def _append(ep: _Episode, ids: list[int], is_policy: bool, logprobs: list[float] | None = None) -> None:
    start = len(ep.tokens)
    ep.tokens += ids
    ep.policy_mask += [int(is_policy)] * len(ids)
    ep.sampler_logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
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
    penalty = truncation_penalty(ep.env)
    ep.reward += penalty
    ep.components["truncated"] = ep.components.get("truncated", 0.0) + penalty


def truncation_penalty(env) -> float:
    """The reward an episode gets when it ends without an answer: the environment's `rewards["truncated"]`.

    The engine ends an episode early when the next turn would not fit the token budget, and charges it the same
    penalty the environment charges at its turn limit; envs.env.DEFAULT_REWARDS is the one place that value is set.
    """
    base = getattr(env, "unwrapped", env)
    rewards = getattr(base, "rewards", None)
    if not isinstance(rewards, dict) or "truncated" not in rewards:
        spec = getattr(env, "spec", None)
        name = spec.id if spec is not None else type(base).__name__
        raise ValueError(f"environment {name} has no rewards['truncated'] (the penalty for an episode cut short)")
    return float(rewards["truncated"])


def _step(ep: _Episode, output, eos_id: int, tokenizer, token_budget: int) -> None:
    """Feed one generated turn (token ids, or a GenerationOutput with their sampling log-probs) to the environment
    and append its reply as non-policy tokens."""
    ids, logprobs = (output, None) if isinstance(output, list) else (output.token_ids, output.logprobs or None)
    has_eos = bool(ids) and ids[-1] == eos_id
    ep.missing_eos |= not has_eos
    _append(ep, ids, True, logprobs)
    text = tokenizer.decode(ids[:-1] if has_eos else ids, skip_special_tokens=False)
    _, reward, terminated, truncated, info = ep.env.step(text)
    _record(ep, reward, info)
    ep.messages = list(info["messages"])
    if terminated or truncated:
        ep.done, ep.truncated, ep.success = True, bool(truncated and not terminated), bool(info.get("success", False))
        return
    env_messages = list(info["env_messages"])
    history = ep.messages[: len(ep.messages) - len(env_messages)]
    # A turn cut at max_new_tokens is closed with a forced end-of-turn token (not sampled: policy_mask 0), so the
    # context matches what the template renders for the truncated message.
    forced = [] if has_eos else [eos_id]
    reply = forced + render_env_reply(tokenizer, history, env_messages, ep.tools, context=ep.tokens + forced)
    if len(ep.tokens) + len(reply) > token_budget:
        _truncate(ep)
        return
    _append(ep, reply, False)


def run_episodes(policy, envs: list, seeds: list[int], tokenizer, options: list[dict | None] | None = None,
                 max_total_tokens: int = 1024, sanity_check: bool = True) -> Trajectory:  # fmt: skip
    """Play one episode in each env (env i reset with seeds[i]) until all are done; return the batch.

    Every sequence stays within `max_total_tokens`: an episode whose next environment reply would leave no room for
    a full response (max_new_tokens) ends as truncated, with the environment's truncation penalty.
    """
    t0 = time.time()
    options = options or [None] * len(envs)
    episodes = _reset_all(envs, seeds, options, tokenizer)
    eos_id, generated = tokenizer.eos_token_id, 0
    token_budget = max_total_tokens - getattr(policy, "max_new_tokens", 0)
    longest_prompt = max(len(ep.tokens) for ep in episodes)
    if longest_prompt > token_budget:
        raise ValueError(
            f"a prompt has {longest_prompt} tokens; with max_new_tokens it does not fit "
            f"max_total_tokens={max_total_tokens}"
        )
    while active := [ep for ep in episodes if not ep.done]:
        for ep, output in zip(active, policy.act(active)):
            generated += len(output if isinstance(output, list) else output.token_ids)
            _step(ep, output, eos_id, tokenizer, token_budget)
    if hasattr(policy, "release"):  # the backend's per-episode caches are of no further use
        policy.release()
    mismatch = render_mismatches(tokenizer, episodes) if sanity_check else [False] * len(episodes)
    return _collate(episodes, tokenizer.pad_token_id, mismatch, generated, time.time() - t0)


def _collate(episodes: list[_Episode], pad_id: int, mismatch: list[bool], generated: int, seconds: float):
    input_ids, attention = right_pad([ep.tokens for ep in episodes], pad_id)
    policy_mask, _ = right_pad([ep.policy_mask for ep in episodes], 0.0, torch.float32)
    sampler_logprobs, _ = right_pad([ep.sampler_logprobs for ep in episodes], 0.0, torch.float32)

    def per_episode(attr):
        return torch.tensor([float(getattr(ep, attr)) for ep in episodes])

    counts = {"env_reward": "reward", "success": "success", "turns": "turns", "tool_calls": "tool_calls",
              "invalid_tool_calls": "invalid", "truncated": "truncated", "missing_eos": "missing_eos",
              "tool_call_turns": "tool_call_turns"}  # fmt: skip
    return Trajectory(
        input_ids=input_ids, attention_mask=attention, policy_mask=policy_mask,
        **{name: per_episode(attr) for name, attr in counts.items()},
        reward_components=[ep.components for ep in episodes], spans=[ep.spans for ep in episodes],
        messages=[ep.messages for ep in episodes], tasks=[ep.task for ep in episodes], render_mismatch=mismatch,
        generated_tokens=generated, seconds=seconds, tools=[ep.tools for ep in episodes],
        seeds=[ep.seed for ep in episodes], sampler_logprobs=sampler_logprobs,
    )  # fmt: skip


def make_envs(env_id: str, n: int, split: str = "train", wrappers: str | None = None, wrapper_seed: int = 0,
              **env_kwargs) -> list:  # fmt: skip
    """n independent environments from a spec (a registered id or `module:attr`, see envs.registry), checked against
    envs.protocol and wrapped by `wrappers` (e.g. "prompt_injection:0.3"; envs.wrappers.wrap_env).

    A spec that cannot be built, an env that breaks the protocol or a bad wrapper spec is a ConfigError (the CLIs
    print it as one line)."""
    import envs  # registers rlagent/* ids
    from rlagent.common.config import ConfigError

    try:
        return envs.build_envs(env_id, n, split, wrappers=wrappers, wrapper_seed=wrapper_seed, **env_kwargs)
    except (envs.EnvSpecError, envs.EnvProtocolError) as err:
        raise ConfigError(str(err).removeprefix("rlagent: ")) from None
    except ValueError as err:
        if "--wrapper" not in str(err):  # only wrap_env's own errors are input errors; anything else is a bug
            raise
        raise ConfigError(str(err)) from None


def play(
    policy,
    tokenizer,
    env_id: str,
    episodes: int,
    seed: int,
    split: str,
    batch_size: int = 64,
    max_total_tokens: int = 1024,
    wrappers: str | None = None,
) -> list[Trajectory]:
    """Episodes seed, seed+1, ... in engine batches of `batch_size` (the environments are reused across batches),
    optionally under robustness `wrappers` (seeded with `seed`, so the same episodes get the same hits)."""
    envs = make_envs(env_id, min(batch_size, episodes), split=split, wrappers=wrappers, wrapper_seed=seed)
    batches = []
    for start in range(0, episodes, batch_size):
        seeds = [seed + i for i in range(start, min(start + batch_size, episodes))]
        batches.append(run_episodes(policy, envs[: len(seeds)], seeds, tokenizer, max_total_tokens=max_total_tokens))
    for env in envs:
        env.close()
    return batches
