"""The four models of PPO (trainable policy and value, frozen reference, optional reward model): loading them, and the
forwards over them (log-probs and entropies, values, no-grad micro-batched passes). The update that uses them is
step 6 of rlagent/train_ppo.py; the math is rlagent/algorithms/ppo_core.py.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass

import torch
from transformers import AutoModelForTokenClassification

import rlagent.algorithms.ppo_core as core
from rlagent.algorithms.ppo_core import align_values, token_entropy, token_logprobs
from rlagent.common.config import ConfigError
from rlagent.common.modeling import (
    check_local_path,
    disable_dropout,
    enable_gradient_checkpointing,
    load_causal_lm,
    make_trainable,
)
from rlagent.training.checkpoints import is_sharded
from rlagent.training.output_head import CHUNK_TOKENS, hidden_before, output_head
from rlagent.training.setup import build_optimizer


def load_value_model(init: str, policy, rm_path: str | None, dtype):
    """Critic = backbone + per-token scalar head (AutoModelForTokenClassification, num_labels=1).

    init='reward_model': backbone and head from the stage-2 RM (its `score` head has the same shape, so it loads);
    init='policy': a copy of the policy backbone with a zero-initialised head (docs/ppo.md F.23).
    """
    if init == "reward_model":
        if not rm_path:
            raise ConfigError("value.init='reward_model' needs reward.model_path")
        value = AutoModelForTokenClassification.from_pretrained(rm_path, num_labels=1, local_files_only=True)
    else:
        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        if any("lora_" in name for name, _ in base.named_parameters()):
            raise ValueError("load_value_model(init='policy') needs the policy before LoRA adapters are applied")
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


def reads_reward_model(cfg, with_value: bool) -> bool:
    """Whether PPO uses the stage-2 model: its score is weighed (reward.rm_weight), or the critic (`with_value`: the
    estimator has one) starts from it (value.init: reward_model)."""
    return cfg.reward.rm_weight != 0 or (with_value and cfg.value.init == "reward_model")


def load_models(cfg, tokenizer, with_value: bool):
    """(policy, reference or None, value or None, reward model or None) on CPU; the caller places them. `with_value`:
    the advantage estimator needs a critic (its registry trait)."""
    # Checked whenever value.init names it, critic or not (stricter than reads_reward_model(cfg, with_value)).
    if cfg.reward.model_path and reads_reward_model(cfg, with_value=True):
        check_local_path(cfg.reward.model_path, "reward.model_path")  # before minutes of building the others
    policy = load_causal_lm(cfg.model, tokenizer, cfg.seed)
    reference = None
    if not cfg.model.lora.enabled:
        # A separate frozen copy (docs/ppo.md H.31): the reference must be the starting policy.
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    value = None
    if with_value:
        # Before apply_lora: init='policy' copies the plain backbone (a LoRA-wrapped one has lora_* keys and layers).
        value = load_value_model(cfg.value.init, policy, cfg.reward.model_path, next(policy.parameters()).dtype)
        enable_gradient_checkpointing(value, cfg.model)
        if cfg.value.freeze_embeddings:
            value.get_input_embeddings().requires_grad_(False)
    # With LoRA, the reference is the base with adapters disabled — valid because the base IS the starting policy.
    policy = make_trainable(policy, cfg.model)
    disable_dropout(policy)
    reward_model = None
    if cfg.reward.model_path and reads_reward_model(cfg, with_value=False):  # its score is weighed
        import reward_models

        if not os.path.isdir(cfg.reward.model_path):
            raise ConfigError(f"reward.model_path='{cfg.reward.model_path}' is not a folder")
        reward_model = reward_models.load(cfg.reward.model_path)
    return policy, reference, value, reward_model


@dataclass
class PreparedModels:
    """The PPO models as accelerate placed them, with what trains them."""

    policy: torch.nn.Module
    value: torch.nn.Module | None
    reference: torch.nn.Module | None  # None with LoRA: the policy with its adapters off
    optimizers: list  # one (the critic a second param group), or under FSDP one per trainable model
    schedulers: list  # one per optimizer, stepped together
    copy: torch.nn.Module | None  # under FSDP: the unsharded policy the rollout samples from (else None)


def prepare_models(cfg, accelerator, policy, value, reference) -> PreparedModels:
    """Build the optimizer(s) and schedule(s) and let accelerate place the models.

    One process or DDP: one optimizer, the critic's parameters a second param group; the reference is placed by
    prepare_model, which gives it the policy's autocast (both log-probs share one precision). FSDP: accelerate's FSDP2
    prepares one model per call, with its own optimizer, so each trainable model gets one (AdamW updates every
    parameter on its own: the same numbers); the reference is sharded too. Generation must not run sharded forwards
    (ranks generate episodes of different lengths, so their forward counts would differ and the collectives
    deadlock): the rollout samples from an unsharded copy, which the backend refreshes by gathering the shards.
    """
    groups = [[{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.optim.lr}]]
    if value is not None:
        groups.append([{"params": [p for p in value.parameters() if p.requires_grad], "lr": cfg.value.lr}])
    if not is_sharded(accelerator):
        optimizer, scheduler = build_optimizer([g for model in groups for g in model], cfg.optim, cfg.max_steps)
        if value is not None:
            policy, value, optimizer = accelerator.prepare(policy, value, optimizer)
        else:
            policy, optimizer = accelerator.prepare(policy, optimizer)
        if reference is not None:
            reference = accelerator.prepare_model(reference, evaluation_mode=True)
        return PreparedModels(policy, value, reference, [optimizer], [scheduler], None)
    # Copied before prepare: there the other ranks' weights go to the meta device.
    unsharded = copy.deepcopy(policy).requires_grad_(False).to(accelerator.device)
    built = [build_optimizer(model_groups, cfg.optim, cfg.max_steps) for model_groups in groups]
    optimizers, schedulers = [o for o, _ in built], [s for _, s in built]
    policy, optimizers[0] = accelerator.prepare(policy, optimizers[0])
    if value is not None:
        value, optimizers[1] = accelerator.prepare(value, optimizers[1])
    if reference is not None:
        reference = accelerator.prepare(reference)
    return PreparedModels(policy, value, reference, optimizers, schedulers, unsharded)


@contextlib.contextmanager
def reference_context(policy, reference):
    """Yield the module that computes reference log-probs: the frozen copy, or the policy with adapters off."""
    if reference is not None:
        yield reference
        return
    with policy.disable_adapter():
        yield policy


def forward_policy(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float,
    positions: torch.Tensor | None = None,
    selective: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies (B, T). Right padding only, so positions of real tokens start at 0.

    `positions` (B, T) marks the tokens whose log-prob a loss uses (the policy mask); None = every token. With
    `selective` (model.selective_head) and a head that allows it, the head runs only there
    (rlagent.training.output_head) and the other positions hold 0; otherwise full logits, and every position holds its
    value.
    """
    head = output_head(model) if selective else None
    if head is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return token_logprobs(logits, input_ids, temperature), token_entropy(logits, temperature)
    if positions is None:
        positions = torch.ones_like(input_ids, dtype=torch.bool)
    hidden, (rows, columns) = hidden_before(model, input_ids, attention_mask, positions)
    logp, entropy = core.selected_logprobs(
        hidden, head.weight, head.bias, input_ids[rows, columns], temperature, CHUNK_TOKENS
    )
    return _scatter(logp, rows, columns, input_ids.shape), _scatter(entropy, rows, columns, input_ids.shape)


def _scatter(values: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, shape) -> torch.Tensor:
    """(N,) values at (rows, columns) of a zero (B, T) tensor, differentiably."""
    return values.new_zeros(shape).index_put((rows, columns), values)


def forward_value(model, input_ids, attention_mask) -> torch.Tensor:
    """V(state before token t), (B, T)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()
    return align_values(out)


@torch.no_grad()
def batched(fn, input_ids, attention_mask, micro: int, *extra: torch.Tensor):
    """Apply a (B,T)->(B,T) forward in micro-batches without gradients; concatenates tuple outputs too. `extra`
    (B, T) tensors (e.g. the policy mask) are sliced alike and passed after the attention mask."""
    outs = [
        fn(input_ids[i : i + micro], attention_mask[i : i + micro], *(x[i : i + micro] for x in extra))
        for i in range(0, len(input_ids), micro)
    ]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)
