"""The four models of PPO (trainable policy and value, frozen reference, optional reward model) and the passes over
them: log-prob / value forwards, one minibatch update, the PPO epochs. The loss math itself is
rlagent/algorithms/ppo_core.py.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os

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
from rlagent.training.output_head import CHUNK_TOKENS, hidden_before, output_head


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


def load_models(cfg, tokenizer):
    """(policy, reference or None, value or None, reward model or None) on CPU; the caller places them."""
    if cfg.reward.model_path and (cfg.reward.rm_weight != 0 or cfg.value.init == "reward_model"):
        check_local_path(cfg.reward.model_path, "reward.model_path")  # before minutes of building the others
    policy = load_causal_lm(cfg.model, tokenizer, cfg.seed)
    reference = None
    if not cfg.model.lora.enabled:
        # A separate frozen copy (docs/ppo.md H.31): the reference must be the starting policy.
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    value = None
    if cfg.algo.estimator == "gae":
        # Before apply_lora: init='policy' copies the plain backbone (a LoRA-wrapped one has lora_* keys and layers).
        value = load_value_model(cfg.value.init, policy, cfg.reward.model_path, next(policy.parameters()).dtype)
        enable_gradient_checkpointing(value, cfg.model)
        if cfg.value.freeze_embeddings:
            value.get_input_embeddings().requires_grad_(False)
    # With LoRA, the reference is the base with adapters disabled — valid because the base IS the starting policy.
    policy = make_trainable(policy, cfg.model)
    disable_dropout(policy)
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


# ---------------------------------------------------------------------------------------------------------------------
# Step 6 of rlagent/train_ppo.py: one minibatch update, and the PPO epochs over a rollout batch


def ppo_minibatch_step(
    cfg, accelerator, policy, value, optimizer, batch: dict, idx: list[int], train_policy: bool
) -> dict | None:
    """Accumulate micro-batches of this rank's minibatch `idx`, then one optimizer step. Returns detached stats.

    `cfg` is the PPO stage config (rlagent.training.ppo_config.PPOConfig), taken whole because it reads three sections:
    algo (losses), optim (micro-batch, clipping) and rollout.temperature. The loss is a token mean over the GLOBAL
    minibatch: sum over this rank's tokens divided by the all-reduced policy-token count, times the process count
    because DDP averages gradients (docs/ppo.md G.27); a rank with no token of its own still runs its passes and
    contributes zero gradient. Returns None, on every rank alike, when the global minibatch has no policy token
    (episodes dropped by scoring).
    """
    mask = batch["policy_mask"]
    local_tokens = mask[idx].sum().to(accelerator.device)
    normaliser = float(accelerator.reduce(local_tokens, reduction="sum"))
    if normaliser == 0:
        return None
    scale = accelerator.num_processes
    # Stats report this rank's token means: losses are sums / global normaliser, stats are micro-batch means.
    to_local_mean = normaliser / max(float(local_tokens), 1.0)
    micro = cfg.optim.micro_batch_size
    stats: dict[str, float] = {}
    n_micro = math.ceil(len(idx) / micro)
    for m in range(n_micro):
        rows = idx[m * micro : (m + 1) * micro]
        mb = {k: v[rows].to(accelerator.device) for k, v in batch.items()}
        ids, attn, mask = mb["input_ids"], mb["attention_mask"], mb["policy_mask"]
        logp, entropy = forward_policy(policy, ids, attn, cfg.rollout.temperature, mask, cfg.model.selective_head)
        pg_loss, pg_stats = core.policy_loss(
            logp, mb["old_logprobs"], mb["advantages"], mask, cfg.algo.clip_eps, cfg.algo.dual_clip, normaliser
        )
        ent = (entropy * mb["policy_mask"]).sum() / normaliser
        loss = (pg_loss - cfg.algo.ent_coef * ent) if train_policy else 0.0 * pg_loss
        vf_stats = {}
        if value is not None:
            values = forward_value(value, mb["input_ids"], mb["attention_mask"])
            vf_loss, vf_stats = core.value_loss(
                values, mb["old_values"], mb["returns"], mb["policy_mask"], cfg.algo.value_clip_eps, normaliser
            )
            loss = loss + cfg.algo.vf_coef * vf_loss
            _accumulate(stats, {"val/loss": vf_loss * to_local_mean}, 1.0)
            vf_stats = {f"val/{k}": v for k, v in vf_stats.items()}
        accelerator.backward(loss * scale)
        token_share = float(mb["policy_mask"].sum()) / max(float(local_tokens), 1.0)
        _accumulate(stats, {"policy/loss": pg_loss * to_local_mean, "objective/entropy": ent * to_local_mean}, 1.0)
        _accumulate(stats, {**{f"policy/{k}": v for k, v in pg_stats.items()}, **vf_stats}, token_share)
    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.optim.max_grad_norm)
    if value is not None:
        stats["val/grad_norm"] = float(accelerator.clip_grad_norm_(value.parameters(), cfg.optim.max_grad_norm))
    finite = math.isfinite(float(grad_norm)) and math.isfinite(stats.get("val/grad_norm", 0.0))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    stats.update({"grad_norm": float(grad_norm), "train/skipped_steps": float(not finite)})
    return stats


def _accumulate(stats: dict, new: dict, weight: float) -> None:
    for key, value in new.items():
        value = float(value.detach()) if torch.is_tensor(value) else float(value)
        if key.endswith("_max"):
            stats[key] = max(stats.get(key, value), value)
        else:
            stats[key] = stats.get(key, 0.0) + value * weight


def ppo_epochs(
    cfg, accelerator, policy, value, optimizer, batch: dict, train_policy: bool, generator, guard=None
) -> dict:
    """`algo.ppo_epochs` passes over the rollout batch in reshuffled minibatches; early stop on approx_kl.
    `guard` (a StepGuard) sees every optimizer step: non-finite weights or too many skipped steps stop the run."""
    n_local = batch["input_ids"].shape[0]
    per_rank = cfg.optim.batch_size // accelerator.num_processes
    all_stats, stopped = [], False
    for _ in range(cfg.algo.ppo_epochs):
        order = torch.randperm(n_local, generator=generator).tolist()
        for start in range(0, n_local - per_rank + 1, per_rank):
            stats = ppo_minibatch_step(
                cfg, accelerator, policy, value, optimizer, batch, order[start : start + per_rank], train_policy
            )
            if stats is None:  # no policy token on any rank: nothing to step (the caller made sure some exist)
                continue
            if guard is not None:
                models = {"policy": policy} if value is None else {"policy": policy, "value": value}
                guard.after_step(not stats["train/skipped_steps"], models, guard.updates + guard.skipped_in_a_row + 1)
            stats = {
                k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean"))
                for k, v in stats.items()
            }
            all_stats.append(stats)
            limit = cfg.algo.target_approx_kl
            if limit is not None and stats.get("policy/approx_kl", 0.0) > 1.5 * limit:
                stopped = True
                break
        if stopped:
            break
    out = {k: sum(s[k] for s in all_stats) / len(all_stats) for k in all_stats[0]}
    out["train/skipped_steps"] = sum(s["train/skipped_steps"] for s in all_stats)
    out["policy/early_stopped"] = float(stopped)
    out["policy/minibatch_updates"] = float(len(all_stats))
    return out
