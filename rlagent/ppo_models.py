"""The four models of PPO: trainable policy and value, frozen reference, optional reward model."""

from __future__ import annotations

import contextlib
import copy
import os

import torch
from transformers import AutoModelForTokenClassification

from rlagent.config import ConfigError
from rlagent.modeling import apply_lora, check_local_path, disable_dropout, load_causal_lm
from rlagent.ppo_core import align_values, token_entropy, token_logprobs


def load_value_model(init: str, policy, rm_path: str | None, dtype):
    """Critic = backbone + per-token scalar head (AutoModelForTokenClassification, num_labels=1).

    init='reward_model': backbone and head from the stage-2 RM (its `score` head has the same shape, so it loads);
    init='policy': a copy of the policy backbone with a zero-initialised head (PPO_CHECKLIST F.23).
    """
    if init == "reward_model":
        if not rm_path:
            raise ConfigError("value.init='reward_model' needs reward.model_path")
        value = AutoModelForTokenClassification.from_pretrained(rm_path, num_labels=1, local_files_only=True)
    else:
        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        config = copy.deepcopy(base.config)
        config.num_labels = 1
        value = AutoModelForTokenClassification.from_config(config)
        getattr(value, value.base_model_prefix).load_state_dict(getattr(base, base.base_model_prefix).state_dict())
        torch.nn.init.zeros_(value.score.weight)
        if value.score.bias is not None:
            torch.nn.init.zeros_(value.score.bias)
    value.config.pad_token_id = policy.config.pad_token_id
    disable_dropout(value)
    return value.to(dtype)


def load_models(cfg, tokenizer):
    """(policy, reference or None, value or None, reward model or None) on CPU; the caller places them."""
    if cfg.reward.model_path and (cfg.reward.rm_weight != 0 or cfg.value.init == "reward_model"):
        check_local_path(cfg.reward.model_path, "reward.model_path")  # before minutes of building the others
    policy = load_causal_lm(cfg.model, tokenizer, cfg.seed)
    reference = None
    if not cfg.model.lora.enabled:
        # A separate frozen copy (PPO_CHECKLIST H.31): the reference must be the starting policy.
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    # With LoRA, the reference is the base with adapters disabled — valid because the base IS the starting policy.
    policy = apply_lora(policy, cfg.model)
    disable_dropout(policy)
    value = None
    if cfg.algo.estimator == "gae":
        value = load_value_model(cfg.value.init, policy, cfg.reward.model_path, next(policy.parameters()).dtype)
    reward_model = None
    if cfg.reward.model_path and cfg.reward.rm_weight != 0:
        import reward_models

        if not os.path.isdir(cfg.reward.model_path):
            raise ConfigError(f"reward.model_path='{cfg.reward.model_path}' is not a folder")
        reward_model = reward_models.load(cfg.reward.model_path)
    return policy, reference, value, reward_model


@contextlib.contextmanager
def reference_context(policy, reference):
    """Yield the module that computes reference log-probs: the frozen copy, or the policy with adapters off."""
    if reference is not None:
        yield reference
        return
    with policy.disable_adapter():
        yield policy


def forward_policy(model, input_ids, attention_mask, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies (B, T). Right padding only, so positions of real tokens start at 0."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return token_logprobs(logits, input_ids, temperature), token_entropy(logits, temperature)


def forward_value(model, input_ids, attention_mask) -> torch.Tensor:
    """V(state before token t), (B, T)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()
    return align_values(out)


@torch.no_grad()
def batched(fn, input_ids, attention_mask, micro: int):
    """Apply a (B,T)->(B,T) forward in micro-batches without gradients; concatenates tuple outputs too."""
    outs = [fn(input_ids[i : i + micro], attention_mask[i : i + micro]) for i in range(0, len(input_ids), micro)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)
