"""The Hugging Face generation backend: batched decode with per-sequence and shared-prefix key/value caches.

Every call decodes all requests in ONE batch that drops finished rows at once. Three things keep it fast:
- per-sequence caches: a request whose key was seen before (an episode's earlier turn) only prefills what was
  appended since (the environment's reply); caches of keys that stop asking are dropped;
- a shared prefix: rows without a cache of their own share the longest common start of their tokens (system prompt
  + tool schemas, ~240 of SmolLM2's ~270 prompt tokens), prefilled ONCE at batch size 1 and copied into every row;
  it is reused by later calls whose rows all start with it, until `sync_weights` changes the weights;
- its own weights: with a dtype unlike the trainer's (bf16 where the hardware has it) the backend samples from a
  copy that `sync_weights` refreshes after each update, so sampling never waits for a cast;
- no collectives: a trainer model sharded by FSDP (every forward gathers its weights from all ranks, so ranks that
  generate episodes of different lengths would deadlock) is gathered ONCE per `sync_weights` into the unsharded
  module the backend was built from, and generation runs on that.
Models whose cache is not a plain DynamicCache (sliding-window, hybrid) fall back to one `model.generate` per call.
"""

from __future__ import annotations

import contextlib
import copy
import inspect

import torch
from torch.distributed.tensor import DTensor
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer

from rlagent.common.chat import cut_at_eos
from rlagent.rollout.backends.base import GenerationOutput, GenerationRequest, SamplingParams

# Sampling knobs a checkpoint's generation_config.json may set (Qwen ships top_k=20, top_p=0.8, repetition_penalty
# 1.05). HF fills every knob we leave unset from the checkpoint, so each is pinned to its neutral value.
NEUTRAL_SAMPLING = dict(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                        repetition_penalty=1.0, no_repeat_ngram_size=0)  # fmt: skip
MIN_SHARED_PREFIX = 16  # shorter common starts are not worth a separate prefill


class HFBackend:
    """Samples from an HF causal LM (or a PEFT wrapper of one). dtype None = share the trainer's module as it is."""

    name = "hf"

    def __init__(self, model, pad_id: int, dtype: torch.dtype | None = None, prefix_cache: bool = True,
                 reuse_cache: bool = True):  # fmt: skip
        self.pad_id, self.dtype, self.prefix_cache = pad_id, dtype, prefix_cache
        self.model, self._sequences, self._prefix, self.unsharded = None, {}, None, None
        self.prefix_hits = 0  # rows that started from the shared prefix (tests and benchmarks read it)
        self.sync_weights(model)
        self.unsharded = _gather_target(model, self.model)
        self.reuse_cache = reuse_cache and supports_cache_reuse(self.model)
        parameters = inspect.signature(_base(self.model).forward).parameters
        self.logits_to_keep = "logits_to_keep" in parameters
        # transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name warns, then goes in 5.40).
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"

    # -- weights ------------------------------------------------------------------------------------------------

    def sync_weights(self, model) -> None:
        """Sample from `model`'s current weights from now on; every cache (they hold old keys/values) is dropped.

        Same dtype as the trainer: the module itself is used. Otherwise a copy in `self.dtype`: refreshed in place
        for a plain model; a PEFT model is copied and its adapters merged (one matmul per adapted layer), so the
        copy is a plain model of the merged weights. A model sharded by FSDP (DTensor parameters) is first gathered
        into `self.unsharded`, which stands in for it: a collective, so every rank calls this at the same point.
        """
        self.release()
        self._prefix = None
        if is_sharded_module(model):
            if self.unsharded is None:
                raise ValueError("an FSDP-sharded model needs a backend built from an unsharded copy of it")
            gather_full_weights(model, self.unsharded)
            model = self.unsharded
        if self.dtype is None or self.dtype == next(model.parameters()).dtype:
            self.model = model
        elif hasattr(model, "merge_and_unload"):
            self.model = _cast_copy(copy.deepcopy(model).merge_and_unload(), self.dtype)
        elif not _same_layout(self.model, model):  # first sync, or shapes changed (ZeRO-3 gathers its shards)
            self.model = _cast_copy(copy.deepcopy(model), self.dtype)
        else:
            with torch.no_grad():
                source = model.state_dict()
                for name, tensor in self.model.state_dict().items():
                    tensor.copy_(source[name])

    def release(self) -> None:
        """Forget every sequence's keys/values (the shared prefix stays: it depends only on tokens and weights)."""
        self._sequences = {}

    # -- generation ---------------------------------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]:
        with torch.no_grad(), _eval_mode(self.model):
            if not self.reuse_cache:
                return self._generate_fallback(requests, params)
            return self._decode(requests, params)

    def _decode(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]:
        """Prefill what each row's cache lacks, then sample token by token; finished rows leave the batch."""
        sources = self._cache_sources(requests)
        self._sequences = {}  # keys not asked for now belong to finished sequences: free their memory
        input_ids, position_ids, attention, cache = _prefill_inputs(
            requests, sources, self.pad_id, self.model, params.max_new_tokens
        )
        extra = {"logits_to_keep": 1} if self.logits_to_keep else {}
        logits = self._forward(input_ids, attention, position_ids, cache, **extra)
        positions, rows = position_ids[:, -1:] + 1, list(range(len(requests)))
        outputs = [GenerationOutput([], []) for _ in requests]
        stop = set(params.stop_ids)
        while True:
            tokens, logprobs = sample(logits, params)
            keep = []
            for row, (token, logprob) in enumerate(zip(tokens.tolist(), logprobs.tolist())):
                out = outputs[rows[row]]
                out.token_ids.append(token)
                out.logprobs.append(logprob)
                if token in stop or len(out.token_ids) >= params.max_new_tokens:
                    self._save(requests[rows[row]], out.token_ids, cache, attention[row], row)
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

    def _cache_sources(self, requests: list[GenerationRequest]) -> list[tuple[int, list | None]]:
        """Per row (cached token count, per-layer (keys, values)): its own cache, else the shared prefix, else none.

        A cache is used only if the row's tokens still start with the tokens it was computed from.
        """
        sources = []
        for request in requests:
            entry = self._sequences.get(request.key)
            valid = entry is not None and request.token_ids[: len(entry[0])] == entry[0]
            sources.append((len(entry[0]), entry[1]) if valid else (0, None))
        fresh = [i for i, (count, _) in enumerate(sources) if not count]
        if self.prefix_cache and fresh:
            prefix = self._shared_prefix([requests[i].token_ids for i in fresh])
            if prefix is not None:
                for i in fresh:
                    sources[i] = (len(prefix[0]), prefix[1])
                self.prefix_hits += len(fresh)
        return sources

    def _shared_prefix(self, sequences: list[list[int]]):
        """(tokens, per-layer kv) of a prefix every sequence starts with (each keeps >= 1 token to prefill), or None.

        The stored prefix is reused while every sequence starts with it; otherwise the longest common start of
        these sequences is prefilled at batch size 1 and stored instead.
        """
        shortest = min(len(s) for s in sequences) - 1
        if self._prefix is not None and len(self._prefix[0]) <= shortest:
            stored = self._prefix[0]
            if all(s[: len(stored)] == stored for s in sequences):
                return self._prefix
        if len(sequences) < 2:
            return None
        length = _common_prefix_length(sequences, shortest)
        if length < MIN_SHARED_PREFIX:
            return None
        tokens = sequences[0][:length]
        device = next(self.model.parameters()).device
        ids = torch.tensor([tokens], device=device)
        cache = DynamicCache(config=self.model.config)
        self._forward(ids, torch.ones_like(ids), torch.arange(length, device=device)[None], cache)
        self._prefix = (tokens, [(layer.keys[0], layer.values[0]) for layer in cache.layers])
        return self._prefix

    def _save(self, request: GenerationRequest, sampled: list[int], cache, attention_row: torch.Tensor, row: int):
        """Keep a finished row's keys/values (real tokens only) for the sequence's next call.

        They cover every token fed so far: the request and all sampled tokens but the last, which is prefilled next
        call.
        """
        real = attention_row.bool()
        kv = [(layer.keys[row][:, real], layer.values[row][:, real]) for layer in cache.layers]
        self._sequences[request.key] = (list(request.token_ids) + sampled[:-1], kv)

    def _forward(self, input_ids, attention, position_ids, cache, **extra) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                         use_cache=True, **{self.cache_kwarg: cache}, **extra)  # fmt: skip
        return out.logits[:, -1]

    def _generate_fallback(self, requests: list[GenerationRequest], params: SamplingParams):
        """One `model.generate` call from scratch: left-padded; position_ids follow the attention mask."""
        sequences = [r.token_ids for r in requests]
        width = max(len(s) for s in sequences)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in sequences], device=device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
        config = generation_config(params, self.pad_id)
        out = self.model.generate(input_ids=input_ids, attention_mask=attention, output_logits=True,
                                  return_dict_in_generate=True, generation_config=config)  # fmt: skip
        steps = torch.stack(out.logits, dim=1).float() / params.temperature  # (B, steps, V), raw logits
        new = out.sequences[:, width:]
        logprobs = torch.log_softmax(steps, -1).gather(-1, new[..., None])[..., 0]
        outputs = []
        for ids, logp in zip(new.tolist(), logprobs.tolist()):
            kept = cut_at_eos(ids, params.stop_ids[0]) if params.stop_ids else ids
            outputs.append(GenerationOutput(kept, logp[: len(kept)]))
        return outputs


def generation_config(params: SamplingParams, pad_id: int) -> GenerationConfig:
    """`model.generate` settings equivalent to `params` (the fallback path and benchmarks use it)."""
    sampling = {} if params.greedy else {"temperature": params.temperature, **NEUTRAL_SAMPLING}
    return GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=not params.greedy,
                            eos_token_id=list(params.stop_ids) or None, pad_token_id=pad_id, **sampling)  # fmt: skip


def sample(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, log-probs) per row of logits (B, V): each token's log-prob under softmax(logits / temperature)."""
    logprobs = torch.log_softmax(logits.float() / params.temperature, dim=-1)
    if params.greedy:
        tokens = logits.argmax(-1)
    else:
        tokens = sample_categorical(logprobs.exp(), params.generator)
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
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
    u = torch.rand((probs.shape[0], 1), device=probs.device, dtype=cdf.dtype, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_max(probs.shape[-1] - 1)


def _cast_copy(model, dtype: torch.dtype):
    """A frozen inference copy with its PARAMETERS in `dtype`; buffers (rotary inv_freq) keep their fp32 values."""
    for parameter in model.parameters():
        parameter.data = parameter.data.to(dtype)
        parameter.grad = None
        parameter.requires_grad_(False)
    return model.eval()


def _same_layout(copied, model) -> bool:
    """`copied` (our inference copy, or None) has `model`'s tensor names and shapes: it can be refreshed in place."""
    if copied is None or copied is model or type(copied) is not type(model):
        return False
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    return all(shapes.get(name) == tensor.shape for name, tensor in copied.state_dict().items())


def _gather_target(source, sampled):
    """The unsharded module a sharded trainer model is later gathered into (HFBackend.unsharded), or None.

    The sampled module itself when its names match the source's (shared, or a cast copy of a plain model: copy_
    casts). A PEFT source whose merged copy is sampled is kept only in a multi-process run (a trainer under a
    launcher, where sharding happens): elsewhere, e.g. serving an adapter in bf16, keeping it would hold a second
    full model in memory for nothing."""
    if is_sharded_module(source):
        return None
    if sampled is source or not hasattr(source, "merge_and_unload"):
        return sampled
    return source if torch.distributed.is_initialized() else None


def is_sharded_module(model) -> bool:
    """True when `model` holds FSDP2 shards (DTensor parameters): its forward is a collective."""
    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


@torch.no_grad()
def gather_full_weights(sharded, local) -> None:
    """Copy the full weights of FSDP-sharded `sharded` into the unsharded `local` (same module structure, same state
    dict names: FSDP2 keeps them). Each DTensor is all-gathered in state-dict order, identical on every rank, so
    every rank must call this at the same point; plain tensors (buffers, unsharded parts) are copied as they are."""
    target = local.state_dict()
    for name, tensor in sharded.state_dict().items():
        if name not in target:
            raise KeyError(f"{name}: the sharded model has a weight its unsharded copy lacks")
        target[name].copy_(tensor.full_tensor() if isinstance(tensor, DTensor) else tensor)


def _common_prefix_length(sequences: list[list[int]], limit: int) -> int:
    first = sequences[0]
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return length


def _base(model):
    """The underlying transformers model of a PEFT wrapper (for signature checks)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_cache_reuse(model) -> bool:
    """Keys/values can be kept between calls when every cache layer of the model is a plain DynamicLayer."""
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


def _prefill_inputs(requests: list, sources: list, pad_id: int, model, max_new_tokens: int):
    """Rows laid out as [pad | cached keys/values] + [pad | tokens not yet in the cache], with true positions.

    The padding in the middle is masked out; position_ids are each token's index in its own sequence, so a row's
    logits do not depend on the other rows (the batched == sequential test checks this).
    """
    device = next(model.parameters()).device
    cached = [count for count, _ in sources]
    new = [r.token_ids[c:] for r, c in zip(requests, cached)]
    n, width_c, width_n = len(requests), max(cached), max(len(ids) for ids in new)
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
        _load_kv(cache.layers, sources, width_c)
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


def _load_kv(layers: list, sources: list, width: int) -> None:
    """Per layer, each row's cached keys/values right-aligned in the first `width` positions of a zeroed buffer
    (zeros, not garbage, in the masked padding: a masked NaN would still poison the attention output).
    `sources`: per row (count, per-layer (keys, values) of shape (heads, count, dim)) or (0, None)."""
    reference = next(kv for count, kv in sources if count)
    for index, layer in enumerate(layers):
        like = reference[index][0]  # (heads, t, dim)
        keys = like.new_empty((len(sources), like.shape[0], layer.capacity, like.shape[-1]))
        values = torch.empty_like(keys)
        keys[:, :, :width].zero_()
        values[:, :, :width].zero_()
        for row, (count, kv) in enumerate(sources):
            if count:
                keys[row, :, width - count : width] = kv[index][0]
                values[row, :, width - count : width] = kv[index][1]
        layer.set_buffers(keys, values, width)
