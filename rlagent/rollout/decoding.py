"""ModelPolicy: the rollout engine's policy for a language model, sampling through a generation backend.

Each turn, every still-active episode joins ONE batched request to the backend (rlagent.rollout.backends; the HF
backend keeps each episode's keys/values between turns and shares the prompt prefix the episodes have in common),
which stops at end-of-turn with plain temperature sampling (docs/ppo.md B.6) and returns the sampled ids with their
log-probs. The episode objects carry no backend state: a request is (episode key, token ids).
"""

from __future__ import annotations

import torch

from rlagent.rollout.backends import GenerationOutput, GenerationRequest, SamplingParams, build_backend
from rlagent.rollout.backends.hf import (  # noqa: F401  (the cached decode's pieces, imported from here by tests)
    NEUTRAL_SAMPLING,
    PreallocatedCacheLayer,
    generation_config,
    sample_categorical,
    supports_cache_reuse,
)


class ModelPolicy:
    """An HF causal LM sampling with plain temperature (no top-k/top-p/repetition penalty: docs/ppo.md B.6).

    Generation stops at the tokenizer's eos token (the end-of-turn token, e.g. <|im_end|>); a turn that reaches
    `max_new_tokens` first is kept as sampled and flagged `missing_eos`. reuse_cache=False (or a model without a plain
    DynamicCache) decodes each turn with `model.generate` from scratch instead. `backend`/`dtype`/`prefix_cache`
    choose the generation backend (rlagent.rollout.backends.build_backend); dtype 'model' samples from `model` itself.
    `backend` may also be a backend object, used as it is (then `model` is ignored).
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 96, temperature: float = 1.0, greedy: bool = False,
                 reuse_cache: bool = True, backend: str = "hf", dtype: str = "model", prefix_cache: bool = True,
                 generator: torch.Generator | None = None, key: str = "rollout.backend"):  # fmt: skip
        self.tokenizer = tokenizer
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.max_new_tokens, self.temperature, self.greedy = max_new_tokens, temperature, greedy
        if isinstance(backend, str):
            self.backend = build_backend(backend, model, tokenizer, dtype, prefix_cache, reuse_cache, key)
        else:  # a ready backend object (e.g. ONNX Runtime on an exported graph, which has no torch model)
            self.backend = backend
        self.params = SamplingParams(max_new_tokens, temperature, (self.eos_id,), greedy, generator)
        # Used by benchmarks that call model.generate with the same settings.
        self.generation_config = generation_config(self.params, self.pad_id)

    @property
    def model(self):
        """The module the backend samples from (a bf16 copy of the trainer's model, or the model itself)."""
        return self.backend.model

    @property
    def reuse_cache(self) -> bool:
        return self.backend.reuse_cache

    def sync_weights(self, model) -> None:
        """Sample from `model`'s current weights (call after every update of the trainer's model)."""
        self.backend.sync_weights(model)

    def act(self, episodes: list) -> list[GenerationOutput]:
        """One turn for each episode (anything with `tokens`; its identity keys the backend's cache)."""
        requests = [GenerationRequest(id(ep), ep.tokens) for ep in episodes]
        return self.backend.generate(requests, self.params)

    def release(self) -> None:
        """The batch is over: the backend forgets its episodes' caches."""
        self.backend.release()
