"""Generation backends: what turns token-id requests into sampled tokens and their log-probs.

The rollout engine never touches a model: a ModelPolicy (rlagent.rollout.decoding) hands each active episode's
token ids to a backend as a GenerationRequest and gets back a GenerationOutput (new ids + the log-prob of each under
the sampling temperature). A backend owns whatever state makes that fast (the HF backend: its key/value caches and a
shared-prompt-prefix cache) and `sync_weights(model)` refreshes it from the trainer's model after each update.

Adding a backend (e.g. vLLM on a GPU): a class with `generate(requests, params)`, `sync_weights(model)` and
`release()`, registered in BACKENDS under the name `rollout.backend` selects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class SamplingParams:
    """How one batch of requests is sampled (plain temperature sampling: no top-k/top-p)."""

    max_new_tokens: int = 96  # longest output; a row that reaches it without a stop id is kept as sampled
    temperature: float = 1.0  # divides the logits for sampling AND for the returned log-probs
    stop_ids: tuple[int, ...] = ()  # a row ends right after sampling one of these (kept in its output)
    greedy: bool = False  # argmax instead of sampling; log-probs are still those of the temperature-scaled softmax
    generator: torch.Generator | None = None  # random stream for sampling (None = torch's global one)


@dataclass
class GenerationRequest:
    """One row to continue. `key` names the sequence across calls (an episode), so a backend may keep its state."""

    key: object
    token_ids: list[int]


@dataclass
class GenerationOutput:
    """The sampled continuation and, per token, its log-prob under the sampling distribution."""

    token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)


class GenerationBackend(Protocol):
    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]: ...

    def sync_weights(self, model) -> None: ...

    def release(self) -> None: ...


def backend_names() -> list[str]:
    return sorted(_registry())


def _registry() -> dict:
    from rlagent.rollout.backends.hf import HFBackend

    return {"hf": HFBackend}


def build_backend(name: str, model, tokenizer, dtype: str = "auto", prefix_cache: bool = True,
                  reuse_cache: bool = True, key: str = "rollout.backend"):  # fmt: skip
    """The backend `name` sampling from `model` (the one factory PPO, eval, `rlagent rollout` and quickstart use).

    dtype: 'auto' (bf16 where the model's device computes it natively, rlagent.common.precision), 'float32',
    'bfloat16', or 'model' (share the trainer's module, whatever its dtype). Unknown name -> ConfigError.
    """
    from rlagent.common.config import ConfigError
    from rlagent.common.precision import NAMED_DTYPES, pick_dtype

    registry = _registry()
    if name not in registry:
        raise ConfigError(f"{key}: unknown generation backend {name!r} (known: {', '.join(sorted(registry))})")
    if dtype != "model" and dtype != "auto" and dtype not in NAMED_DTYPES:
        raise ConfigError(f"rollout.dtype: unknown dtype {dtype!r} (known: auto, model, {', '.join(NAMED_DTYPES)})")
    device = next(model.parameters()).device
    torch_dtype = None if dtype == "model" else pick_dtype(dtype, device)
    return registry[name](model, tokenizer.pad_token_id, torch_dtype, prefix_cache=prefix_cache,
                          reuse_cache=reuse_cache)  # fmt: skip
