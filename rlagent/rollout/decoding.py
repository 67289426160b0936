"""Sampling from an HF causal LM for the rollout engine: ModelPolicy and the key/value cache it keeps between turns.

Each turn, every still-active episode joins ONE batched decode that stops at end-of-turn with plain temperature
sampling (docs/ppo.md B.6). The decode keeps each episode's keys/values between turns, so a turn only prefills the
environment's reply, and it drops finished rows from the batch at once instead of decoding padding until the longest
turn ends. Models whose cache is not a plain DynamicCache (sliding-window, hybrid) fall back to one `model.generate`
call per turn.

A policy's `act(episodes)` gets the engine's episode states (rlagent.rollout.engine): it reads `tokens` and keeps its
cache in `kv` / `cached_tokens`.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer

from rlagent.common.chat import cut_at_eos

# Sampling knobs a checkpoint's generation_config.json may set (Qwen ships top_k=20, top_p=0.8, repetition_penalty
# 1.05). HF fills every knob we leave unset from the checkpoint, so each is pinned to its neutral value.
NEUTRAL_SAMPLING = dict(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                        repetition_penalty=1.0, no_repeat_ngram_size=0)  # fmt: skip


class ModelPolicy:
    """An HF causal LM sampling with plain temperature (no top-k/top-p/repetition penalty: docs/ppo.md B.6).

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

    def act(self, episodes: list) -> list[list[int]]:
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

    def _decode(self, episodes: list) -> list[list[int]]:
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


def _prefill_inputs(episodes: list, pad_id: int, model, max_new_tokens: int):
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


def _load_kv(layers: list, episodes: list, width: int) -> None:
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


def _save_kv(ep, cache, attention_row: torch.Tensor, row: int) -> None:
    """Keep a finished row's keys/values (real tokens only) for the episode's next turn.

    They cover every token fed so far; the token just sampled is not among them and is prefilled next turn.
    """
    real = attention_row.bool()
    ep.kv = [(layer.keys[row][:, real], layer.values[row][:, real]) for layer in cache.layers]
    ep.cached_tokens = int(real.sum())
