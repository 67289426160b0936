"""The output head applied only where a loss needs it: the backbone runs once, through the model's own forward
(so DDP / PEFT wrappers and their hooks still run), with the head swapped for Identity; the caller then applies the
real head to the few hidden states it selected, in chunks (rlagent.algorithms.ppo_core.selected_logprobs). A full
B x T x V logits tensor never exists, and tokens outside the loss never reach the head.

Falls back (output_head() returns None, callers take the full-logits path) when the head cannot be applied outside
the forward as a plain matrix: a sharded head (FSDP, DeepSpeed ZeRO-3: each process holds a slice, and only the
model's forward gathers it), a wrapped head (LoRA or modules_to_save on lm_head), or a model that post-processes
its logits (Gemma-2 soft-capping, Cohere's logit scale).
"""

from __future__ import annotations

import contextlib

import torch

# Positions per head chunk: chunk x vocabulary fp32 logits is the largest tensor the selective path makes
# (512 x 49,152 x 4 bytes = 100 MB for SmolLM2); larger chunks buy little speed on CPU.
CHUNK_TOKENS = 512


def causal_lm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The transformers model inside DDP / PEFT wrappers; None under FSDP (its forward gathers the shards)."""
    while True:
        if "FullyShardedDataParallel" in type(model).__name__:
            return None
        if hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP, accelerate wrappers
            model = model.module
        else:
            return model


def output_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's output head when it can be applied outside the forward as hidden @ weight.T + bias; else None."""
    base = causal_lm(model)
    if base is None or not hasattr(base, "get_output_embeddings"):
        return None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:  # LoRA / modules_to_save wrappers, FSDP-wrapped heads
        return None
    weight = head.weight
    if weight.numel() == 0 or hasattr(weight, "ds_id") or type(weight).__name__ == "DTensor":  # ZeRO-3, FSDP2
        return None
    config = base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1.0):
        return None
    return head


@contextlib.contextmanager
def head_removed(model: torch.nn.Module):
    """Within the block, the model's forward returns final hidden states (B, T, H) in `.logits`."""
    base = causal_lm(model)
    head = base.get_output_embeddings()
    base.set_output_embeddings(torch.nn.Identity())
    try:
        yield
    finally:
        base.set_output_embeddings(head)


def hidden_before(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Final hidden states that predict the tokens at `positions`, and those positions as (rows, columns).

    Shape: input_ids, attention_mask, positions (B, T) -> hidden (N, H), rows (N,), columns (N,), N = selected
    positions. The hidden state at t-1 scores token t, so position 0 (nothing predicts it) is never selected.
    """
    selected = positions.bool().clone()
    selected[:, 0] = False
    rows, columns = selected.nonzero(as_tuple=True)
    with head_removed(model):
        hidden = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return hidden[rows, columns - 1], (rows, columns)
