"""Batched multi-turn rollouts: many episodes at once, token in / token out, environment tokens masked out.

Each turn, every still-active episode joins ONE batched decode (stop at end-of-turn, plain temperature sampling).
The sampled ids are kept as they are (never decoded and re-tokenised); the environment's reply is rendered through
the chat template and appended as tokens with policy_mask = 0 (PPO_CHECKLIST B.11, C.12).

The decode keeps each episode's keys/values between turns, so a turn only prefills the environment's reply, and it
drops finished rows from the batch at once instead of decoding padding until the longest turn ends. Models whose
cache is not a plain DynamicCache (sliding-window, hybrid) fall back to one `model.generate` call per turn.

    envs = make_envs("rlagent/Calculator-v0", 32, split="test")
    traj = run_episodes(ModelPolicy(model, tokenizer, greedy=True), envs, seeds=list(range(32)), tokenizer=tokenizer)
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, GenerationConfig, TokenizersBackend
from transformers.cache_utils import DynamicLayer


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
    kv: list | None = None  # ModelPolicy: per layer (keys, values) of tokens[:cached_tokens], shape (heads, t, dim)
    cached_tokens: int = 0
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
NEUTRAL_SAMPLING = dict(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                        repetition_penalty=1.0, no_repeat_ngram_size=0)  # fmt: skip


class ModelPolicy:
    """An HF causal LM sampling with plain temperature (no top-k/top-p/repetition penalty: PPO_CHECKLIST B.6).

    Generation stops at the tokenizer's eos token (the end-of-turn token, e.g. <|im_end|>); a turn that reaches
    `max_new_tokens` first is kept as sampled and flagged `missing_eos`. reuse_cache=False (or a model without a plain
    DynamicCache) decodes each turn with `model.generate` from scratch instead.
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 96, temperature: float = 1.0, greedy: bool = False,
                 reuse_cache: bool = True):  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.max_new_tokens, self.temperature, self.greedy = max_new_tokens, temperature, greedy
        self.reuse_cache = reuse_cache and supports_cache_reuse(model)
        parameters = inspect.signature(_base(model).forward).parameters
        self.logits_to_keep = "logits_to_keep" in parameters
        # transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name warns, then goes in 5.40).
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        sampling = {} if greedy else {"temperature": temperature, **NEUTRAL_SAMPLING}
        # Used by the model.generate fallback (and benchmarks); the cached decode samples by itself.
        self.generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not greedy, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
            **sampling,
        )  # fmt: skip

    def act(self, episodes: list[_Episode]) -> list[list[int]]:
        if not self.reuse_cache:
            return self.generate([ep.tokens for ep in episodes])
        with torch.no_grad(), _eval_mode(self.model):
            return self._decode(episodes)

    def generate(self, sequences: list[list[int]]) -> list[list[int]]:
        """One turn for each sequence with `model.generate`: left-padded; position_ids follow the attention mask."""
        width = max(len(s) for s in sequences)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in sequences], device=device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
        with torch.no_grad(), _eval_mode(self.model):
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention, generation_config=self.generation_config
            )
        return [cut_at_eos(row[width:].tolist(), self.eos_id) for row in out]

    def _decode(self, episodes: list[_Episode]) -> list[list[int]]:
        """Prefill what each episode's cache lacks, then sample token by token; finished rows leave the batch."""
        input_ids, position_ids, attention, cache = _prefill_inputs(
            episodes, self.pad_id, self.model, self.max_new_tokens
        )
        extra = {"logits_to_keep": 1} if self.logits_to_keep else {}
        logits = self._forward(input_ids, attention, position_ids, cache, **extra)
        positions, rows, outputs = position_ids[:, -1:] + 1, list(range(len(episodes))), [[] for _ in episodes]
        while True:
            tokens = self._sample(logits)
            keep = []
            for row, token in enumerate(tokens.tolist()):
                out = outputs[rows[row]]
                out.append(token)
                if token == self.eos_id or len(out) >= self.max_new_tokens:
                    _save_kv(episodes[rows[row]], cache, attention[row], row)
                else:
                    keep.append(row)
            if not keep:
                return outputs
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=tokens.device)
                cache.batch_select_indices(index)
                tokens, attention, positions = tokens[index], attention[index], positions[index]
                rows = [rows[row] for row in keep]
            attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
            logits = self._forward(tokens[:, None], attention, positions, cache)
            positions = positions + 1

    def _forward(self, input_ids, attention, position_ids, cache, **extra) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                         use_cache=True, **{self.cache_kwarg: cache}, **extra)  # fmt: skip
        return out.logits[:, -1]

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.greedy:
            return logits.argmax(-1)
        return sample_categorical(torch.softmax(logits.float() / self.temperature, dim=-1))


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of probs (B, V), drawn by inverting the CDF with a single uniform per row.

    Same distribution as torch.multinomial(probs, 1), which on CPU draws an exponential variate for EVERY
    vocabulary entry (~0.25 ms a step at B=32, 5 % of a tiny model's rollout). A zero-probability index is never
    returned: searchsorted(right=True) skips flat stretches of the CDF.
    """
    # float64: in float32 a running sum near 1 cannot resolve increments below ~6e-8, so with a 150k vocabulary whole
    # stretches of small-but-nonzero tokens would never be drawn.
    cdf = probs.double().cumsum(-1)
    if not torch.isfinite(cdf[:, -1]).all():  # torch.multinomial raises here too; never sample from garbage
        raise ValueError("sampling probabilities contain inf or nan (overflowing logits?)")
    u = torch.rand((probs.shape[0], 1), device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_max(probs.shape[-1] - 1)


def _base(model):
    """The underlying transformers model of a PEFT wrapper (for signature checks)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_cache_reuse(model) -> bool:
    """Keys/values can be kept between turns when every cache layer of the model is a plain DynamicLayer."""
    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _prefill_inputs(episodes: list[_Episode], pad_id: int, model, max_new_tokens: int):
    """Rows laid out as [pad | cached keys/values] + [pad | tokens not yet in the cache], with true positions.

    The padding in the middle is masked out; position_ids are each token's index in its own episode, so a row's
    logits do not depend on the other rows (the batched == sequential test checks this).
    """
    device = next(model.parameters()).device
    cached = [ep.cached_tokens for ep in episodes]
    new = [ep.tokens[c:] for ep, c in zip(episodes, cached)]
    n, width_c, width_n = len(episodes), max(cached), max(len(ids) for ids in new)
    input_ids = torch.full((n, width_n), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width_n), dtype=torch.long)
    attention = torch.zeros((n, width_c + width_n), dtype=torch.long)
    for i, (c, ids) in enumerate(zip(cached, new)):
        input_ids[i, width_n - len(ids) :] = torch.tensor(ids)
        position_ids[i, width_n - len(ids) :] = torch.arange(c, c + len(ids))
        attention[i, width_c - c : width_c] = 1
        attention[i, width_c + width_n - len(ids) :] = 1
    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedCacheLayer(width_c + width_n + max_new_tokens) for _ in cache.layers]
    if width_c:
        _load_kv(cache.layers, episodes, width_c)
    return input_ids.to(device), position_ids.to(device), attention.to(device), cache


class PreallocatedCacheLayer(DynamicLayer):
    """A DynamicLayer that writes new keys/values into a buffer sized for the whole turn instead of concatenating.

    DynamicLayer.update copies the entire cache every decode step (torch.cat); at 32 rows that was ~20 % of a step of
    the tiny model. `keys`/`values` are views of the buffer's filled part, so everything that reads them is unchanged.
    Only what the rollout decode uses is supported; beam search and cropping raise.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self.key_buffer = self.value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            self._grow(key_states, max(end, self.capacity, 2 * self.length))
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def _grow(self, like: torch.Tensor, size: int) -> None:
        keys = like.new_empty((like.shape[0], like.shape[1], size, like.shape[-1]))
        values = torch.empty_like(keys)
        if self.length:
            keys[:, :, : self.length] = self.key_buffer[:, :, : self.length]
            values[:, :, : self.length] = self.value_buffer[:, :, : self.length]
        self.key_buffer, self.value_buffer = keys, values

    def set_buffers(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Adopt (batch, heads, capacity, dim) buffers whose first `length` positions are filled."""
        self.lazy_initialization(keys, values)
        self.key_buffer, self.value_buffer, self.length = keys, values, length
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        super().reset()
        self.length, self.key_buffer, self.value_buffer = 0, None, None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("PreallocatedCacheLayer is for rlagent's rollout decode; it does not crop")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("PreallocatedCacheLayer is for rlagent's rollout decode; it does not expand rows")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("PreallocatedCacheLayer is for rlagent's rollout decode; it does no beam search")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.key_buffer is not None:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._views()


def _load_kv(layers: list, episodes: list[_Episode], width: int) -> None:
    """Per layer, the episodes' cached keys/values right-aligned in the first `width` positions of a zeroed buffer
    (zeros, not garbage, in the masked padding: a masked NaN would still poison the attention output)."""
    reference = next(ep.kv for ep in episodes if ep.kv)
    for index, layer in enumerate(layers):
        like = reference[index][0]  # (heads, t, dim)
        keys = like.new_empty((len(episodes), like.shape[0], layer.capacity, like.shape[-1]))
        values = torch.empty_like(keys)
        keys[:, :, :width].zero_()
        values[:, :, :width].zero_()
        for row, ep in enumerate(episodes):
            if ep.cached_tokens:
                keys[row, :, width - ep.cached_tokens : width] = ep.kv[index][0]
                values[row, :, width - ep.cached_tokens : width] = ep.kv[index][1]
        layer.set_buffers(keys, values, width)


def _save_kv(ep: _Episode, cache, attention_row: torch.Tensor, row: int) -> None:
    """Keep a finished row's keys/values (real tokens only) for the episode's next turn.

    They cover every token fed so far; the token just sampled is not among them and is prefilled next turn.
    """
    real = attention_row.bool()
    ep.kv = [(layer.keys[row][:, real], layer.values[row][:, real]) for layer in cache.layers]
    ep.cached_tokens = int(real.sum())


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
        return encode(self.tokenizer, text) + [self.eos_id]

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


def render_env_reply(tokenizer, history: list[dict], env_messages: list[dict], tools, context: list[int] | None = None
                     ) -> list[int]:  # fmt: skip
    """Tokens the chat template places after the assistant's end-of-turn token, up to the next generation prompt.

    Rendered as a string delta between the history and history + env messages (veRL's multi-turn approach). The
    template's text after the assistant's last end-of-turn (e.g. "\\n") belongs to the delta too, because the policy
    stopped at end-of-turn.

    `context`, the episode's token ids so far (ending with that end-of-turn), enables a fast path that renders once
    instead of twice: when the fresh render of history + env messages starts with the decoded context, the delta is
    the rest of it, and context + delta decodes to exactly that render. Otherwise (e.g. the policy wrote a tool call
    the template renders differently) the two-render delta is used, with its check that the template is prefix-stable
    (the fast path needs no such check: its result always makes the context read as a fresh render).
    """
    after = tokenizer.apply_chat_template(
        history + env_messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    if context is not None:
        text = tokenizer.decode(context, skip_special_tokens=False)
        if text and after.startswith(text):
            return encode(tokenizer, after[len(text) :])
    before = tokenizer.apply_chat_template(history, tools=tools, tokenize=False)
    if not after.startswith(before):
        raise ValueError("chat template is not prefix-stable: rendering more messages changed earlier text")
    eos = tokenizer.eos_token
    tail = before[before.rindex(eos) + len(eos) :] if eos in before else ""
    return encode(tokenizer, tail + after[len(before) :])


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens added: what `tokenizer(text, add_special_tokens=False)` returns."""
    return encode_many(tokenizer, [text])[0]


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """`encode` for many texts in one call.

    A fast tokenizer's Rust backend is called directly, with the whole batch at once: the Python wrapper costs ~50 us
    a call, and the prompts, environment replies and final render checks are a fifth of the engine's time outside
    generation.
    """
    backend = _direct_backend(tokenizer)
    if backend is None:
        return list(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else []
    return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]


def _direct_backend(tokenizer):
    """The Rust tokenizer, when calling it directly gives what the Python wrapper would give; else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None  # settings stored in tokenizer.json (v4 checkpoints): the wrapper switches them off first
    if backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    if type(tokenizer)._encode_plus is not TokenizersBackend._encode_plus:
        return None  # a subclass that rewrites the text first (e.g. CodeLlama's infilling tokens)
    return backend


def render_mismatches(tokenizer, episodes: list[_Episode]) -> list[bool]:
    """Per episode: do our tokens differ from tokenising a fresh render of the final conversation?

    A mismatch is not an error (e.g. the model wrote a tool call with spacing the template would not produce); it is
    counted so users see how far training tokens drift from what the template would feed the model. Compared as a
    prefix: the template adds text after the last end-of-turn (and the env's last reply, when the token budget ended
    the episode) that was never appended.
    """
    texts = [tokenizer.apply_chat_template(ep.messages, tools=ep.tools, tokenize=False) for ep in episodes]
    rendered = encode_many(tokenizer, texts)
    return [ids[: len(ep.tokens)] != ep.tokens for ids, ep in zip(rendered, episodes)]


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
        episodes.append(_Episode(env, seed, prompt, [0] * len(prompt), spans, list(info["messages"]),
                                 info.get("tools"), info.get("task", {})))  # fmt: skip
    return episodes


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
        ep.kv = None  # free the cache
        return
    env_messages = list(info["env_messages"])
    history = ep.messages[: len(ep.messages) - len(env_messages)]
    # A turn cut at max_new_tokens is closed with a forced end-of-turn token (not sampled: policy_mask 0), so the
    # context matches what the template renders for the truncated message.
    forced = [] if has_eos else [eos_id]
    reply = forced + render_env_reply(tokenizer, history, env_messages, ep.tools, context=ep.tokens + forced)
    if len(ep.tokens) + len(reply) > token_budget:
        _truncate(ep)
        ep.kv = None
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
        for ep, ids in zip(active, policy.act(active)):
            generated += len(ids)
            _step(ep, ids, eos_id, tokenizer, token_budget)
    mismatch = render_mismatches(tokenizer, episodes) if sanity_check else [False] * len(episodes)
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

    counts = {"env_reward": "reward", "success": "success", "turns": "turns", "tool_calls": "tool_calls",
              "invalid_tool_calls": "invalid", "truncated": "truncated", "missing_eos": "missing_eos",
              "tool_call_turns": "tool_call_turns"}  # fmt: skip
    return Trajectory(
        input_ids=input_ids, attention_mask=attention, policy_mask=policy_mask,
        **{name: per_episode(attr) for name, attr in counts.items()},
        reward_components=[ep.components for ep in episodes], spans=[ep.spans for ep in episodes],
        messages=[ep.messages for ep in episodes], tasks=[ep.task for ep in episodes], render_mismatch=mismatch,
        generated_tokens=generated, seconds=seconds, tools=[ep.tools for ep in episodes],
        seeds=[ep.seed for ep in episodes],
    )  # fmt: skip


def make_envs(env_id: str, n: int, split: str = "train", **env_kwargs) -> list:
    """n independent environments (gymnasium.make), registering rlagent's environments first."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers rlagent/* ids)

    return [gym.make(env_id, split=split, **env_kwargs) for _ in range(n)]
