"""Generation backends: what turns token-id requests into sampled tokens and their log-probs.

The rollout engine never touches a model: a ModelPolicy (rlagent.rollout.decoding) hands each active episode's
token ids to a backend as a GenerationRequest and gets back a GenerationOutput (new ids + the log-prob of each under
the sampling temperature). A backend owns whatever state makes that fast (the HF backend: its key/value caches and a
shared-prompt-prefix cache) and `sync_weights(model)` refreshes it from the trainer's model after each update; a
trainer model sharded by FSDP is gathered there (every rank calls it together) into the unsharded module the backend
was built from, so generation itself runs no collective and ranks may generate different numbers of tokens.

Adding a backend (e.g. vLLM on a GPU): a class with `generate(requests, params)`, `sync_weights(model)` and
`release()`, registered in BACKENDS under the name `rollout.backend` selects.
"""

from __future__ import annotations

from rlagent.rollout.backends.base import GenerationBackend, GenerationOutput, GenerationRequest, SamplingParams
from rlagent.rollout.backends.hf import HFBackend

__all__ = ["GenerationBackend", "GenerationOutput", "GenerationRequest", "SamplingParams", "build_backend"]
BACKENDS = {"hf": HFBackend}  # rollout.backend -> class


def build_backend(name: str, model, tokenizer, dtype: str = "auto", prefix_cache: bool = True,
                  reuse_cache: bool = True, key: str = "rollout.backend"):  # fmt: skip
    """The backend `name` sampling from `model` (the one factory PPO, eval, `rlagent rollout` and quickstart use).

    dtype: 'auto' (bf16 where the model's device computes it natively, rlagent.common.precision), 'float32',
    'bfloat16', or 'model' (share the trainer's module, whatever its dtype). Unknown name -> ConfigError.
    """
    from rlagent.common.config import ConfigError
    from rlagent.common.precision import NAMED_DTYPES, pick_dtype

    if name not in BACKENDS:
        raise ConfigError(f"{key}: unknown generation backend {name!r} (known: {', '.join(sorted(BACKENDS))})")
    if dtype != "model" and dtype != "auto" and dtype not in NAMED_DTYPES:
        raise ConfigError(f"rollout.dtype: unknown dtype {dtype!r} (known: auto, model, {', '.join(NAMED_DTYPES)})")
    device = next(model.parameters()).device
    torch_dtype = None if dtype == "model" else pick_dtype(dtype, device)
    return BACKENDS[name](model, tokenizer.pad_token_id, torch_dtype, prefix_cache=prefix_cache,
                          reuse_cache=reuse_cache)  # fmt: skip
