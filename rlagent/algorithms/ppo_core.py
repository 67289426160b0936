"""PPO math for multi-turn agents: pure tensor-in/tensor-out functions (no models, no accelerate, no I/O).

Alignment convention (every per-token tensor is (B, T), indexed by TOKEN POSITION of `input_ids`):
- `logprobs[b, t]` = log pi(input_ids[b, t] | input_ids[b, :t]); position 0 has no prediction and holds 0.
- `values[b, t]` = V(state just before token t is generated) = critic output at position t-1; 0 at t=0.
- `policy_mask[b, t]` = 1 exactly on tokens the policy sampled (bool or 0/1 float). Prompt, tool output,
  template tokens and padding are 0 and may sit BETWEEN policy tokens (multi-turn).
Masked positions may hold anything (even inf/nan), in values AND gradients: every reduction selects with
`torch.where`, never `x * mask`, and the losses first replace masked inputs with zeros ("double where"), because a
NaN that only an output `where` hides still turns the backward pass into NaN (0 * nan = nan).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

# ---------------------------------------------------------------------------------------------------------------------
# Log-probs, entropy, values: shift model outputs onto token positions


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each token under the temperature-scaled distribution that produced it.

    Shape: logits (B, T, V), input_ids (B, T) -> (B, T) in fp32 (fp64 if logits are fp64); index 0 is 0.
    One row at a time in fp32, logsumexp + gather: never a full fp32 log-softmax of the whole batch
    (TRL `selective_log_softmax`, docs/ppo.md B.9). Temperature must match the rollout's (B.7).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    rows = []
    for row_logits, row_ids in zip(logits, input_ids):
        scaled = row_logits[:-1].to(dtype) / temperature  # (T-1, V): position t-1 scores token t
        taken = scaled.gather(-1, row_ids[1:, None]).squeeze(-1)
        rows.append(taken - torch.logsumexp(scaled, dim=-1))
    return _prepend_zero(torch.stack(rows))


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the temperature-scaled distribution that produced token t, row by row in fp32.

    Shape: logits (B, T, V) -> (B, T); index 0 is 0.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    rows = []
    for row_logits in logits:
        logp = torch.log_softmax(row_logits[:-1].to(dtype) / temperature, dim=-1)
        rows.append(-(logp.exp() * logp).sum(-1))
    return _prepend_zero(torch.stack(rows))


def selected_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of `targets` (and the entropy) from hidden states and the output head, chunk by chunk.

    Shape: hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) -> logprobs (N,), entropy (N,) or None,
    fp32 (fp64 if hidden is fp64). Row n is `token_logprobs` / `token_entropy` of logits hidden[n] @ weight.T + bias:
    the logits are made in the head's dtype, as the model's own head makes them, then scaled in fp32. Only
    `chunk_size x V` logits exist at a time: with gradients on, each chunk is checkpointed, so backward recomputes
    its logits instead of keeping all N x V of them (peak memory O(chunk_size x V) in both passes).
    """
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden has {hidden.shape[0]} rows but targets has {targets.shape[0]}")
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logps, entropies = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (hidden[start : start + chunk_size], weight, bias, targets[start : start + chunk_size])
        if needs_grad:
            logp, entropy = checkpoint(_chunk_logprobs, *args, temperature, with_entropy, use_reentrant=False)
        else:
            logp, entropy = _chunk_logprobs(*args, temperature, with_entropy)
        logps.append(logp)
        entropies.append(entropy)
    if not logps:  # no selected position: empty results that still carry the dtype (and graph) of the inputs
        empty = (hidden[:0] @ weight[:0].T).sum(-1).to(torch.promote_types(hidden.dtype, torch.float32))
        return empty, (empty if with_entropy else None)
    return torch.cat(logps), (torch.cat(entropies) if with_entropy else None)


def _chunk_logprobs(hidden, weight, bias, targets, temperature: float, with_entropy: bool):
    logits = torch.nn.functional.linear(hidden, weight, bias)  # (c, V) in the head's dtype, like lm_head
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    normaliser = torch.logsumexp(scaled, dim=-1)
    logp = scaled.gather(-1, targets[:, None]).squeeze(-1) - normaliser
    if not with_entropy:
        return logp, None
    log_softmax = scaled - normaliser[:, None]
    return logp, -(log_softmax.exp() * log_softmax).sum(-1)


def selected_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk_size: int = 512
) -> torch.Tensor:
    """Summed cross-entropy of `targets` (the SFT loss), chunked like `selected_logprobs`; a 0-dim fp32 tensor.

    Shape: hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) -> ().
    """
    logp, _ = selected_logprobs(hidden, weight, bias, targets, 1.0, chunk_size, with_entropy=False)
    return -logp.sum()


def align_values(value_head_out: torch.Tensor) -> torch.Tensor:
    """values[:, t] = out[:, t-1]: the critic at t-1 has seen exactly the state before token t; values[:, 0] = 0.

    Shape: (B, T) -> (B, T).
    """
    return _prepend_zero(value_head_out[:, :-1])


def _prepend_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.new_zeros(x.shape[0], 1), x], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask is set (garbage outside the mask is ignored). Shape: (B, T) -> scalar or reduced."""
    selected = torch.where(mask.bool(), x, torch.zeros_like(x))
    return selected.sum() if dim is None else selected.sum(dim)


def zero_outside(mask: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor with its masked-out positions set to 0 (the first `where` of the double-where pattern)."""
    mask = mask.bool()
    return [torch.where(mask, x, torch.zeros_like(x)) for x in tensors]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the mask (over `dim`, or all elements). Raises ValueError on an empty mask (or slice)."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    if bool((count == 0).any()):
        raise ValueError("masked_mean: the mask selects no element (policy_mask is empty)")
    return masked_sum(x, mask, dim) / count


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the mask; `unbiased` applies Bessel's n/(n-1). Scalar.

    Raises ValueError on an empty mask, and on a single element with unbiased=True (the variance is undefined;
    TRL `masked_var` raises too).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = masked_sum(torch.ones_like(x), mask)
        if bool(n == 1):
            raise ValueError("masked_var: unbiased variance of a single element is undefined")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with mask statistics (unbiased var); zero outside the mask.

    shift_mean=False ADDS THE MEAN BACK, (x - mean)/std + mean: the spread becomes 1 but the mean is kept
    (TRL/veRL `masked_whiten` semantics; torchtune's `whiten` flag means the opposite, docs/ppo.md F.22).
    Shape: (B, T) -> (B, T). Raises ValueError on an empty mask.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------------------------------------------------------------
# KL penalty and per-token rewards


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1", clamp: float | None = 10.0
) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate (Schulman, "Approximating KL divergence"; docs/ppo.md E.19).

    k1 = log pi - log pi_ref (unbiased, can be negative; the principled choice inside the reward),
    k2 = 1/2 (log pi - log pi_ref)^2, k3 = (r - 1) - log r with r = pi_ref / pi (never negative).
    Clamped to [-clamp, clamp] (k1) or [0, clamp] (k2, k3); clamp=None disables. Shape: (B, T) -> (B, T).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        kl, low = log_ratio, None if clamp is None else -clamp
    elif estimator == "k2":
        kl, low = 0.5 * log_ratio**2, 0.0
    elif estimator == "k3":
        # exp(-log_ratio) may overflow to inf for a wild token; the clamp below turns that into `clamp`, not nan.
        kl, low = torch.expm1(-log_ratio) + log_ratio, 0.0
    else:
        raise ValueError(f"kl_penalty: unknown estimator {estimator!r}; expected 'k1', 'k2' or 'k3'")
    return kl if clamp is None else kl.clamp(min=low, max=clamp)


def token_rewards(
    kl: torch.Tensor, scores: torch.Tensor, policy_mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * kl on policy tokens, plus the episode score at its LAST policy token.

    (N+ implementation details of RLHF, "Policy #8"; docs/ppo.md E.18, C.14.) Environment tokens and padding
    after the last policy token get nothing. Shape: kl (B, T), scores (B,), policy_mask (B, T) ->
    (rewards (B, T), non_score_rewards (B, T)).
    Raises ValueError for a row with no policy token and a non-zero score (the score would be lost). A row with no
    policy token and score exactly 0 is a dropped episode (non-finite score, masked truncation) and gets zeros.
    """
    mask = policy_mask.bool()
    non_score = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))
    has_policy = mask.any(dim=1)
    lost = ~has_policy & (scores != 0)
    if bool(lost.any()):
        rows = lost.nonzero().flatten().tolist()
        raise ValueError(f"token_rewards: rows {rows} have no policy token (policy_mask all 0) but a non-zero score")
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).amax(dim=1).clamp(min=0)  # index of the last policy token per row
    bonus = torch.zeros_like(non_score)
    bonus[torch.arange(mask.shape[0], device=mask.device), last] = torch.where(has_policy, scores, 0).to(bonus.dtype)
    return non_score + bonus, non_score


# ---------------------------------------------------------------------------------------------------------------------
# Advantages


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, policy_mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over policy tokens only, SKIPPING the others.

    On a non-policy token (tool output, template, padding) the next value and the running advantage are carried
    unchanged, so an observation is not a step of the MDP (veRL `compute_gae_advantage_return`, "skip values and
    TD-error on observation tokens"; docs/ppo.md C.13). Zeroing those tokens instead is only exact for
    gamma = lam = 1. The value after the last policy token is 0 (the episode ends); rewards on non-policy tokens
    are ignored. Returns (advantages, returns) with returns = advantages + values; both 0 off the mask.
    No gradient: both are targets. Shape: (B, T) each -> ((B, T), (B, T)).
    """
    mask = policy_mask.bool()
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    reversed_advantages = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(mask[:, t], delta + gamma * lam * running, running)
        next_value = torch.where(mask[:, t], values[:, t], next_value)
        reversed_advantages.append(torch.where(mask[:, t], running, torch.zeros_like(running)))
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    returns = torch.where(mask, advantages + values, torch.zeros_like(advantages))
    return advantages, returns


def _group_stats(scores: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-episode (group sum, group size, group index) gathered back to shape (B,). Every group needs >= 2."""
    _, index = torch.unique(group_ids, return_inverse=True)
    size = torch.bincount(index).to(scores.dtype)
    if bool((size < 2).any()):
        raise ValueError("group advantages: every group needs at least 2 episodes (check algo.group_size)")
    total = torch.zeros_like(size).index_add_(0, index, scores)
    return total[index], size[index], index


def grpo_advantages(
    scores: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6, scale: bool = True
) -> torch.Tensor:
    """GRPO outcome advantage (score - group mean) / (group std + eps) (Shao et al. 2024, DeepSeekMath).

    std is the UNBIASED (n-1) sample std, as `torch.std` in TRL `GRPOTrainer`. scale=False keeps only the
    centring (Dr. GRPO, Liu et al. 2025). Shape: scores (B,), group_ids (B,) of any ids -> (B,).
    Raises ValueError for a group of size 1 (its advantage is always 0 and its std undefined).
    """
    total, size, index = _group_stats(scores, group_ids)
    centred = scores - total / size
    if not scale:
        return centred
    var = torch.zeros_like(scores).index_add_(0, index, centred**2)[index] / (size - 1)
    return centred / (var.sqrt() + eps)


def rloo_advantages(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out: score minus the mean score of the OTHER members of its group (Ahmadian et al. 2024).

    Shape: (B,), (B,) -> (B,). Raises ValueError for a group of size 1.
    """
    total, size, _ = _group_stats(scores, group_ids)
    return scores - (total - scores) / (size - 1)


@torch.no_grad()
def reinforce_plus_plus(
    rewards: torch.Tensor, policy_mask: torch.Tensor, gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025; OpenRLHF `get_cumulative_returns`, verl `compute_reinforce_plus_plus_outcome_advantage`).

    returns[t] = sum over the policy tokens t' >= t of gamma^(number of policy tokens between t and t') * rewards[t'],
    with the token-level KL already inside `rewards` (token_rewards); environment tokens are skipped like in `gae`
    (not a step, not discounted). advantages = the returns whitened over ALL policy tokens of the batch (the global
    batch normalisation that replaces the critic). A batch with no policy token gets zeros.
    No gradient. Shape: (B, T), (B, T) -> (advantages (B, T), returns (B, T)), both 0 off the mask.
    """
    returns = gae(rewards, torch.zeros_like(rewards), policy_mask, gamma, 1.0)[0]  # values 0, lam 1: discounted sum
    if not bool(policy_mask.bool().any()):
        return torch.zeros_like(returns), returns
    return masked_whiten(returns, policy_mask, shift_mean=True), returns


def broadcast_to_tokens(advantages: torch.Tensor, policy_mask: torch.Tensor) -> torch.Tensor:
    """Episode-level advantage on every policy token, 0 elsewhere. Shape: (B,), (B, T) -> (B, T)."""
    expanded = advantages[:, None].expand(policy_mask.shape)
    return torch.where(policy_mask.bool(), expanded, torch.zeros_like(expanded))


# ---------------------------------------------------------------------------------------------------------------------
# Losses


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    dual_clip: float | None = None,
    normaliser: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate, summed over the mask and divided by `normaliser`.

    rho = exp(clamp(log pi - log pi_old, -20, 20)); per token max(-A rho, -A clip(rho, 1-eps, 1+eps)).
    dual_clip = c > 1 also caps the loss of A < 0 tokens at -c A (Ye et al. 2020; veRL `compute_policy_loss`).
    `normaliser` is the number of policy tokens in the GLOBAL minibatch (all micro-batches, all ranks), so the
    summed gradient is a token mean that does not depend on micro-batching or process count (OpenRLHF
    `tests/test_loss_aggregation.py`, veRL `agg_loss`; docs/ppo.md G.27). Default: this mask's token count.

    Stats (detached, token means over THIS micro-batch; 0 when its mask is empty):
    - clipfrac: fraction where the clipped term is strictly larger, i.e. where it set the loss and zeroed the
      gradient: rho > 1+eps with A > 0, or rho < 1-eps with A < 0 (TRL/CleanRL `pg_losses2 > pg_losses`).
    - approx_kl: mean of (rho - 1) - log rho (k3 of old vs new, CleanRL); ratio: mean rho; ratio_max: max rho.
    - dual_clipfrac (only when dual_clip is set): fraction where the -c A cap set the loss.
    Shape: (B, T) each -> (scalar loss, dict of scalars).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"policy_loss: dual_clip must be > 1, got {dual_clip}")
    mask = mask.bool()
    logprobs, old_logprobs, advantages = zero_outside(mask, logprobs, old_logprobs, advantages)
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    stats = {}
    if dual_clip is not None:
        capped = torch.minimum(per_token, -dual_clip * advantages)
        stats["dual_clipfrac"] = (advantages < 0) & (capped < per_token)
        per_token = torch.where(advantages < 0, capped, per_token)
    count = mask.sum()
    loss = masked_sum(per_token, mask) / (count.clamp(min=1) if normaliser is None else normaliser)
    with torch.no_grad():
        stats.update(clipfrac=clipped > unclipped, approx_kl=(ratio - 1) - log_ratio, ratio=ratio)
        stats = {k: masked_sum(v.to(ratio.dtype), mask) / count.clamp(min=1) for k, v in stats.items()}
        stats["ratio_max"] = torch.where(mask, ratio, 0.0).amax() if bool(count) else ratio.new_zeros(())
    return loss, stats


def tis_weights(learner_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance-sampling weights min(exp(learner - sampler), cap) for tokens drawn by the sampler.

    The rollout backend (a bf16 copy, another engine) samples from a slightly different distribution than the
    learner scores; weighting each token's policy-gradient loss by this ratio, capped, corrects for it (Yao et al.
    2025, TRL `vllm_importance_sampling_correction`). The log-ratio is clamped to [-20, 20] before exp.
    Shape: (B, T), (B, T) -> (B, T), no gradient.
    """
    with torch.no_grad():
        return (learner_logprobs - sampler_logprobs).clamp(-20.0, 20.0).exp().clamp(max=cap)


def sampler_mismatch(learner_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the sampler's log-probs are from the learner's on the policy tokens (floats; zeros if none).

    logprob_diff_mean / _max: mean and max of |learner - sampler|; sampler_kl: the k3 estimate of KL(sampler ||
    learner) per token, (r - 1) - log r with r = exp(learner - sampler), unbiased for samples from the sampler.
    Shape: (B, T) each.
    """
    mask = mask.bool()
    if not bool(mask.any()):
        return {"rollout/logprob_diff_mean": 0.0, "rollout/logprob_diff_max": 0.0, "rollout/sampler_kl": 0.0}
    log_ratio = (learner_logprobs - sampler_logprobs).double()[mask]
    return {
        "rollout/logprob_diff_mean": float(log_ratio.abs().mean()),
        "rollout/logprob_diff_max": float(log_ratio.abs().max()),
        "rollout/sampler_kl": float((log_ratio.exp() - 1 - log_ratio).mean()),
    }


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
    normaliser: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss 1/2 max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2), summed / normaliser.

    clip_eps=None: plain 1/2 (V - R)^2. `normaliser` as in `policy_loss` (docs/ppo.md F.24, G.27).
    Stats: clipfrac = fraction of this micro-batch's tokens where the clipped error was strictly larger.
    Shape: (B, T) each -> (scalar loss, dict of scalars).
    """
    mask = mask.bool()
    values, old_values, returns = zero_outside(mask, values, old_values, returns)
    error = (values - returns) ** 2
    if clip_eps is None:
        per_token, clipped_wins = error, torch.zeros_like(error, dtype=torch.bool)
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        clipped_error = (clipped_values - returns) ** 2
        per_token, clipped_wins = torch.maximum(error, clipped_error), clipped_error > error
    count = mask.sum()
    loss = 0.5 * masked_sum(per_token, mask) / (count.clamp(min=1) if normaliser is None else normaliser)
    clipfrac = masked_sum(clipped_wins.to(values.dtype), mask).detach() / count.clamp(min=1)
    return loss, {"clipfrac": clipfrac}


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over the mask: 1 is a perfect critic, <= 0 no better than a constant.

    Returns nan (not an error: it is a diagnostic) when Var[R] = 0 or the mask is empty. Shape: (B, T) -> scalar.
    """
    if not bool(mask.bool().any()):
        return values.new_tensor(float("nan"))
    var_returns = masked_var(returns, mask, unbiased=False)
    if bool(var_returns == 0):
        return values.new_tensor(float("nan"))
    return 1 - masked_var(returns - values, mask, unbiased=False) / var_returns


# ---------------------------------------------------------------------------------------------------------------------
# On-policy distillation: the teacher grades every token the student sampled


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL(student || teacher) = sum_v p_s(v) (log p_s(v) - log p_t(v)) of the temperature-scaled next-token
    distributions, one value per position, in fp32 (fp64 if the logits are).

    The per-token loss of on-policy distillation (GKD, Agarwal et al. 2024, with beta = 1): mode-seeking, so the
    student is pushed off tokens the teacher would not write, and 0 exactly where the two distributions agree. The
    full sum over the vocabulary is exact, where the sampled-token estimate log p_s(x) - log p_t(x) is only unbiased.
    A wider head (padding rows of an embedding matrix) is cut to the narrower width: the tokenizer is shared.
    Shape: (..., V), (..., V') -> (...).
    """
    width = min(student_logits.shape[-1], teacher_logits.shape[-1])
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    log_student = torch.log_softmax(student_logits[..., :width].to(dtype) / temperature, dim=-1)
    log_teacher = torch.log_softmax(teacher_logits[..., :width].to(dtype) / temperature, dim=-1)
    return (log_student.exp() * (log_student - log_teacher)).sum(-1)


def distillation_loss(
    token_kl: torch.Tensor, policy_mask: torch.Tensor, normaliser: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token KL summed over policy tokens only and divided by `normaliser`: the policy tokens of the GLOBAL
    minibatch, as in `policy_loss`, so the update does not depend on micro-batching or process count (default: this
    mask's count). Prompt and environment tokens, which the student did not sample, never enter the loss; they may
    hold anything, gradients included (double where).
    Shape: (B, T), (B, T) -> scalar.
    """
    mask = policy_mask.bool()
    (token_kl,) = zero_outside(mask, token_kl)
    return masked_sum(token_kl, mask) / (mask.sum().clamp(min=1) if normaliser is None else normaliser)


# ---------------------------------------------------------------------------------------------------------------------
# KL coefficient controllers


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019; TRL v0.11 `AdaptiveKLController`; docs/ppo.md E.20).

    e = clip(current_kl / target - 1, -0.2, 0.2); value <- value * (1 + e * n_steps / horizon).
    Units: rlagent feeds `current_kl` = the per-SEQUENCE SUM of the KL estimate over policy tokens, averaged over
    the batch (nats per episode, TRL/OpenAI units, where targets are a few nats); `n_steps` = episodes in the
    batch. veRL feeds a per-token mean instead (target ~0.1): do not copy its targets.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController: target ({target}) and horizon ({horizon}) must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        """Only the coefficient: target and horizon come from the (possibly edited) config on resume."""
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class FixedKLController:
    """Constant KL coefficient with the `AdaptiveKLController` interface."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
