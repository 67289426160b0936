"""rlagent.algorithms.ppo_core against numbers worked out by hand (arithmetic in the comments), float64 unless
stated."""

import math

import pytest
import torch

from rlagent.algorithms import ppo_core as core

F64 = torch.float64


def t(*values):
    """t(1.0, 2.0) and t([1.0, 2.0]) are 1-D; t([..], [..]) is 2-D."""
    data = values[0] if len(values) == 1 and isinstance(values[0], list) else list(values)
    return torch.tensor(data, dtype=F64)


def close(actual, expected, atol=1e-9):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# log-probs, entropy, values


def hand_logits():
    """Vocab 3, T 3, temperature 2. Position 0 logits [0, 0, 2 ln 2] / 2 = [0, 0, ln 2] -> softmax [1, 1, 2] / 4;
    position 1 logits [0, 2 ln 3, 0] / 2 = [0, ln 3, 0] -> softmax [1, 3, 1] / 5; position 2 scores nothing."""
    logits = torch.tensor([[[0.0, 0.0, 2 * math.log(2)], [0.0, 2 * math.log(3), 0.0], [99.0, -5.0, 3.0]]], dtype=F64)
    return logits, torch.tensor([[1, 2, 1]])


def test_token_logprobs_hand_example_temperature_2():
    logits, ids = hand_logits()
    # t=0: no prediction -> 0; t=1: token 2 under [.25, .25, .5] -> ln .5 = -0.693147; t=2: token 1 under
    # [.2, .6, .2] -> ln .6 = -0.510826. The garbage logits at the last position are never used.
    close(core.token_logprobs(logits, ids, temperature=2.0), [[0.0, math.log(0.5), math.log(0.6)]])


def test_token_entropy_hand_example_temperature_2():
    logits, _ = hand_logits()
    # H[.25, .25, .5] = 2 * .25 ln 4 + .5 ln 2 = 1.5 ln 2 = 1.039721; H[.2, .6, .2] = .4 ln 5 - .6 ln .6 = 0.950271
    close(core.token_entropy(logits, 2.0), [[0.0, 1.5 * math.log(2), -(0.4 * math.log(0.2) + 0.6 * math.log(0.6))]])


def test_token_logprobs_and_entropy_match_naive_full_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    ids = torch.randint(0, 11, (3, 7), generator=g)
    logp_full = torch.log_softmax(logits / 0.7, dim=-1)
    naive = logp_full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_full.exp() * logp_full).sum(-1)[:, :-1]
    close(core.token_logprobs(logits, ids, 0.7), torch.cat([torch.zeros(3, 1), naive], 1), atol=1e-5)
    close(core.token_entropy(logits, 0.7), torch.cat([torch.zeros(3, 1), entropy], 1), atol=1e-5)


def test_token_logprobs_bf16_logits_are_computed_in_fp32_and_differentiable():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 9, generator=g) * 4).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, 9, (2, 5), generator=g)
    out = core.token_logprobs(logits, ids)
    assert out.dtype == torch.float32
    naive = torch.log_softmax(logits.detach().float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    close(out[:, 1:].detach(), naive, atol=1e-5)
    out.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


def test_selected_logprobs_hand_example_temperature_2():
    # Identity head (V = H = 3), so the logits are the hidden states of hand_logits(): the same two answers.
    logits, ids = hand_logits()
    hidden, weight = logits[0, :2], torch.eye(3, dtype=F64)
    logp, entropy = core.selected_logprobs(hidden, weight, None, ids[0, 1:], temperature=2.0, chunk_size=1)
    close(logp, [math.log(0.5), math.log(0.6)])
    close(entropy, [1.5 * math.log(2), -(0.4 * math.log(0.2) + 0.6 * math.log(0.6))])
    # A bias is added before the temperature: bias [0, 0, -2 ln 2] undoes row 0's ln 4 -> uniform, ln(1/3).
    bias = torch.tensor([0.0, 0.0, -2 * math.log(2)], dtype=F64)
    close(core.selected_logprobs(hidden[:1], weight, bias, ids[0, 1:2], 2.0)[0], [math.log(1 / 3)])


def selected_vs_full(dtype, chunk_size: int, temperature: float = 0.7):
    """(selected, full) log-probs, entropies and the gradients of one loss on both to hidden, weight and bias."""
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(10, 6, generator=g, dtype=dtype)
    weight, bias = torch.randn(13, 6, generator=g, dtype=dtype), torch.randn(13, generator=g, dtype=dtype)
    targets = torch.randint(0, 13, (10,), generator=g)
    coef_logp, coef_ent = torch.randn(10, generator=g, dtype=dtype), torch.randn(10, generator=g, dtype=dtype)
    results = []
    for selective in (True, False):
        leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
        if selective:
            logp, ent = core.selected_logprobs(*leaves, targets, temperature, chunk_size)
        else:  # the full path: all logits at once, then the (B, T) functions on one row of positions
            logits = torch.nn.functional.linear(*leaves)[None]
            ids = torch.cat([targets.new_zeros(1), targets])[None]
            padded = torch.cat([logits, logits[:, :1]], 1)  # the last position scores nothing
            logp, ent = (
                core.token_logprobs(padded, ids, temperature)[0, 1:],
                core.token_entropy(padded, temperature)[0, 1:],
            )
        ((logp * coef_logp).sum() + (ent * coef_ent).sum()).backward()
        results.append((logp.detach(), ent.detach(), *(x.grad for x in leaves)))
    return results


@pytest.mark.parametrize("chunk_size", [1, 3, 10, 64])
def test_selected_logprobs_values_and_gradients_equal_the_full_logits_path_fp32(chunk_size):
    selected, full = selected_vs_full(torch.float32, chunk_size)
    for name, a, b in zip(["logp", "entropy", "d hidden", "d weight", "d bias"], selected, full):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)


def test_selected_cross_entropy_sum_equals_torch_cross_entropy():
    g = torch.Generator().manual_seed(4)
    hidden, weight = torch.randn(9, 5, generator=g, dtype=F64), torch.randn(17, 5, generator=g, dtype=F64)
    targets = torch.randint(0, 17, (9,), generator=g)
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    close(core.selected_cross_entropy_sum(hidden, weight, None, targets, chunk_size=4), expected)


def test_selected_logprobs_keeps_no_logits_for_backward():
    """With gradients on, the autograd graph holds the inputs of each chunk, never its chunk x V logits: what the
    forward saves stays far below one N x V tensor (without checkpointing it is about 3 N x V). Each chunk saves
    the same weight again, so storage is counted once."""
    n, vocab, width = 64, 4096, 8
    hidden = torch.randn(n, width, requires_grad=True)
    weight = torch.randn(vocab, width, requires_grad=True)
    saved = {}

    def pack(x):
        saved[x.data_ptr()] = x.numel()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        logp, entropy = core.selected_logprobs(hidden, weight, None, torch.zeros(n, dtype=torch.long), chunk_size=16)
    assert sum(saved.values()) < n * vocab / 4, saved
    (logp.sum() + entropy.sum()).backward()
    assert hidden.grad is not None and weight.grad is not None


def test_selected_logprobs_with_no_position_is_empty_and_differentiable():
    hidden, weight = torch.randn(0, 4, requires_grad=True), torch.randn(7, 4, requires_grad=True)
    logp, entropy = core.selected_logprobs(hidden, weight, None, torch.zeros(0, dtype=torch.long))
    assert logp.shape == entropy.shape == (0,) and logp.dtype == torch.float32
    (logp.sum() + entropy.sum()).backward()
    assert weight.grad is not None and (weight.grad == 0).all()


def test_align_values_shifts_right():
    close(core.align_values(t([[1.0, 2.0, 3.0]])), [[0.0, 1.0, 2.0]])


# ---------------------------------------------------------------------------------------------------------------------
# KL and rewards

LOGP, REF = t(-1.0, -2.0, -0.5), t(-1.5, -1.0, -0.5)  # log pi - log pi_ref = [0.5, -1, 0]


def test_kl_estimators_hand_numbers():
    close(core.kl_penalty(LOGP, REF, "k1"), [0.5, -1.0, 0.0])
    close(core.kl_penalty(LOGP, REF, "k2"), [0.125, 0.5, 0.0])  # 1/2 * [0.25, 1, 0]
    # log r = ref - logp = [-0.5, 1, 0]: (e^-0.5 - 1) + 0.5 = 0.106531; (e - 1) - 1 = 0.718282; 0
    close(core.kl_penalty(LOGP, REF, "k3"), [math.exp(-0.5) - 0.5, math.e - 2.0, 0.0])


def test_kl_k3_non_negative_and_clamped():
    g = torch.Generator().manual_seed(2)
    logp, ref = torch.randn(50, generator=g, dtype=F64) * 5, torch.randn(50, generator=g, dtype=F64) * 5
    k3 = core.kl_penalty(logp, ref, "k3", clamp=3.0)
    assert (k3 >= 0).all() and (k3 <= 3.0).all() and (k3 == 3.0).any()
    close(core.kl_penalty(LOGP, REF, "k1", clamp=0.3), [0.3, -0.3, 0.0])
    close(core.kl_penalty(LOGP, REF, "k2", clamp=0.3), [0.125, 0.3, 0.0])
    close(core.kl_penalty(LOGP, REF, "k3", clamp=0.3), [math.exp(-0.5) - 0.5, 0.3, 0.0])
    close(core.kl_penalty(t(30.0), t(-30.0), "k1", clamp=None), [60.0])
    # A wild token (pi_ref / pi = e^1000 overflows to inf) is clamped, not nan.
    close(core.kl_penalty(t(-1000.0), t(0.0), "k3", clamp=10.0), [10.0])


def test_kl_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="'k4'"):
        core.kl_penalty(LOGP, REF, "k4")


def test_token_rewards_score_on_last_policy_token_before_env_tokens_and_padding():
    # row 0: prompt, policy, policy, env, policy (last), env, pad; row 1: prompt, policy x3, pad x3
    mask = t([0, 1, 1, 0, 1, 0, 0], [0, 1, 1, 1, 0, 0, 0])
    kl = t([9, 1, 2, 9, 3, 9, 9], [9, 4, 5, 6, 9, 9, 9])  # 9 on non-policy tokens must be ignored
    rewards, non_score = core.token_rewards(kl, t(2.0, -1.0), mask, kl_coef=0.1)
    close(non_score, [[0, -0.1, -0.2, 0, -0.3, 0, 0], [0, -0.4, -0.5, -0.6, 0, 0, 0]])
    # -0.3 + 2 = 1.7 at t=4 of row 0; -0.6 - 1 = -1.6 at t=3 of row 1
    close(rewards, [[0, -0.1, -0.2, 0, 1.7, 0, 0], [0, -0.4, -0.5, -1.6, 0, 0, 0]])


def test_token_rewards_row_without_policy_tokens():
    mask = t([0, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        core.token_rewards(torch.zeros(2, 3, dtype=F64), t(1.0, 0.5), mask, 0.1)
    # A dropped episode (mask zeroed AND score zeroed, as train_ppo does for non-finite scores) gets all zeros.
    rewards, _ = core.token_rewards(torch.zeros(2, 3, dtype=F64), t(1.0, 0.0), mask, 0.1)
    close(rewards, [[0, 0, 1.0], [0, 0, 0]])


# ---------------------------------------------------------------------------------------------------------------------
# GAE

# policy, policy, ENV, policy, policy; score 1 at the end.
GAE_MASK = t([1, 1, 0, 1, 1])
GAE_REWARDS = t([0.0, 0.0, 0.0, 0.0, 1.0])
GAE_VALUES = t([0.5, 0.6, 0.7, 0.4, 0.8])


def gae_zeroing(rewards, values, mask, gamma, lam):
    """The WRONG alternative: plain GAE over every token (env tokens are steps with reward 0), then zeroed."""
    out, next_value, running = [], 0.0, 0.0
    for step in reversed(range(len(rewards))):
        running = rewards[step] + gamma * next_value - values[step] + gamma * lam * running
        next_value = values[step]
        out.append(running * mask[step])
    return torch.stack(out[::-1])


def test_gae_skips_environment_tokens_hand_numbers():
    adv, returns = core.gae(GAE_REWARDS[None], GAE_VALUES[None], GAE_MASK[None], gamma=1.0, lam=0.95)
    # t=4: delta = 1 + 0 - 0.8 = 0.2                                A = 0.2
    # t=3: delta = 0 + 0.8 - 0.4 = 0.4                              A = 0.4 + 0.95 * 0.2 = 0.59
    # t=2: env token skipped: next value stays 0.4, running A 0.59  A = 0
    # t=1: delta = 0 + 0.4 - 0.6 = -0.2                             A = -0.2 + 0.95 * 0.59 = 0.3605
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1                              A = 0.1 + 0.95 * 0.3605 = 0.442475
    close(adv, [[0.442475, 0.3605, 0.0, 0.59, 0.2]])
    close(returns, [[0.942475, 0.9605, 0.0, 0.99, 1.0]])  # A + V on policy tokens, 0 on the env token
    # Zeroing instead: t=2 delta = 0 + 0.4 - 0.7 = -0.3, A2 = -0.3 + 0.95 * 0.59 = 0.2605;
    # t=1 delta = 0.7 - 0.6 = 0.1, A1 = 0.1 + 0.95 * 0.2605 = 0.347475 != 0.3605;
    # t=0 A0 = 0.1 + 0.95 * 0.347475 = 0.43010125 != 0.442475.
    close(gae_zeroing(GAE_REWARDS, GAE_VALUES, GAE_MASK, 1.0, 0.95), [0.43010125, 0.347475, 0.0, 0.59, 0.2])


def test_gae_skipping_and_zeroing_agree_when_gamma_lambda_one():
    # gamma = lam = 1 telescopes: A_t = (sum of rewards from t) - V_t = 1 - V_t = [0.5, 0.4, -, 0.6, 0.2]
    adv, _ = core.gae(GAE_REWARDS[None], GAE_VALUES[None], GAE_MASK[None], 1.0, 1.0)
    close(adv, [[0.5, 0.4, 0.0, 0.6, 0.2]])
    close(gae_zeroing(GAE_REWARDS, GAE_VALUES, GAE_MASK, 1.0, 1.0), adv[0])


def test_gae_terminal_value_is_zero_and_garbage_off_policy_is_ignored():
    # The same episode followed by an env token and padding holding junk values/rewards: identical advantages.
    rewards = torch.cat([GAE_REWARDS, t(5.0, float("nan"))])[None]
    values = torch.cat([GAE_VALUES, t(3.0, float("inf"))])[None]
    mask = torch.cat([GAE_MASK, t(0, 0)])[None]
    adv, returns = core.gae(rewards, values, mask, 1.0, 0.95)
    close(adv, [[0.442475, 0.3605, 0.0, 0.59, 0.2, 0.0, 0.0]])
    close(returns, [[0.942475, 0.9605, 0.0, 0.99, 1.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------------------------------
# masked statistics

X = t(2.0, 4.0, 6.0, 100.0)
M = t(1, 1, 1, 0)  # mean 4; squared deviations 4, 0, 4 -> biased var 8/3, unbiased 8/2 = 4, std 2


def test_masked_mean_var_bessel():
    close(core.masked_mean(X, M), 4.0)
    close(core.masked_var(X, M, unbiased=False), 8 / 3)
    close(core.masked_var(X, M), 4.0)
    close(core.masked_mean(t([1.0, 3.0], [5.0, 7.0]), t([1, 1], [0, 1]), dim=1), [2.0, 7.0])
    close(core.masked_sum(X, M), 12.0)


def test_masked_whiten_shift_mean_semantics():
    eps_scale = 1 / math.sqrt(1 + 1e-8)  # rsqrt(var + eps) with var = 4 -> 0.5 * (1 - 1.25e-9)
    # shift_mean=True: (x - 4) / 2 = [-1, 0, 1]; masked position -> 0
    close(core.masked_whiten(X, M), [-eps_scale, 0.0, eps_scale, 0.0], atol=1e-8)
    # shift_mean=False adds the mean back (TRL/veRL): [-1, 0, 1] + 4 = [3, 4, 5]
    close(core.masked_whiten(X, M, shift_mean=False), [3.0, 4.0, 5.0, 0.0], atol=1e-8)


def test_masked_statistics_errors():
    with pytest.raises(ValueError, match="empty"):
        core.masked_mean(X, torch.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        core.masked_whiten(X, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="single element"):
        core.masked_var(X, t(1, 0, 0, 0))
    close(core.masked_var(X, t(1, 0, 0, 0), unbiased=False), 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# policy and value losses


def test_policy_loss_ratio_one():
    g = torch.Generator().manual_seed(3)
    logp, adv = torch.randn(3, 6, generator=g, dtype=F64), torch.randn(3, 6, generator=g, dtype=F64)
    mask = (torch.rand(3, 6, generator=g) > 0.3).to(F64)
    loss, stats = core.policy_loss(logp, logp.clone(), adv, mask)
    close(loss, -core.masked_mean(adv, mask))  # rho = 1: max(-A, -A) = -A
    close(stats["clipfrac"], 0.0)
    close(stats["approx_kl"], 0.0)
    close(stats["ratio"], 1.0)
    close(stats["ratio_max"], 1.0)


# Four policy tokens and one masked token with a huge ratio/advantage that must not count.
RATIOS = t(1.5, 0.5, 0.5, 1.1, 1e6)
ADVS = t(1.0, -1.0, 1.0, -2.0, 1e6)
PL_MASK = t(1, 1, 1, 1, 0)


def test_policy_loss_clipping_hand_numbers():
    loss, stats = core.policy_loss(RATIOS.log()[None], torch.zeros(1, 5, dtype=F64), ADVS[None], PL_MASK[None])
    # A=+1, rho=1.5: max(-1.5, -1.2) = -1.2 (clipped, counts)   A=-1, rho=0.5: max(0.5, 0.8) = 0.8 (clipped, counts)
    # A=+1, rho=0.5: max(-0.5, -0.8) = -0.5 (no: wrong side)    A=-2, rho=1.1: max(2.2, 2.2) = 2.2 (inside the range)
    close(loss, (-1.2 + 0.8 - 0.5 + 2.2) / 4)  # 0.325
    close(stats["clipfrac"], 0.5)
    close(stats["ratio"], (1.5 + 0.5 + 0.5 + 1.1) / 4)  # 0.9
    close(stats["ratio_max"], 1.5)
    # (rho - 1) - ln rho: 0.5 - ln 1.5 = 0.094535; 2 x (-0.5 + ln 2) = 2 x 0.193147; 0.1 - ln 1.1 = 0.004690
    close(stats["approx_kl"], (0.5 - math.log(1.5) + 2 * (math.log(2) - 0.5) + 0.1 - math.log(1.1)) / 4)
    assert all(not v.requires_grad for v in stats.values())


def test_policy_loss_dual_clip():
    ratios, advs = t(5.0, 2.0, 5.0), t(-1.0, -1.0, 1.0)
    args = (ratios.log()[None], torch.zeros(1, 3, dtype=F64), advs[None], torch.ones(1, 3))
    # A=-1, rho=5: max(5, 1.2) = 5, capped at -3 * -1 = 3; A=-1, rho=2: max(2, 1.2) = 2 < 3, kept;
    # A=+1, rho=5: max(-5, -1.2) = -1.2, the cap only applies to A < 0.
    loss, stats = core.policy_loss(*args, dual_clip=3.0)
    close(loss, (3.0 + 2.0 - 1.2) / 3)
    close(stats["dual_clipfrac"], 1 / 3)
    close(core.policy_loss(*args)[0], (5.0 + 2.0 - 1.2) / 3)
    with pytest.raises(ValueError, match="dual_clip"):
        core.policy_loss(*args, dual_clip=0.5)


def test_policy_loss_global_normaliser_is_invariant_to_micro_batching():
    g = torch.Generator().manual_seed(4)
    old = torch.randn(4, 8, generator=g, dtype=F64)
    new = (old + 0.3 * torch.randn(4, 8, generator=g, dtype=F64)).requires_grad_()
    adv = torch.randn(4, 8, generator=g, dtype=F64)
    mask = (torch.rand(4, 8, generator=g) > 0.4).to(F64)
    mask[0, :6] = 1  # unequal token counts per micro-batch, so a per-micro-batch mean would differ
    full, _ = core.policy_loss(new, old, adv, mask)
    (grad_full,) = torch.autograd.grad(full, new)
    total = mask.sum()
    parts = [
        core.policy_loss(new[s], old[s], adv[s], mask[s], normaliser=total)[0] for s in (slice(0, 2), slice(2, 4))
    ]
    (grad_parts,) = torch.autograd.grad(parts[0] + parts[1], new)
    close(parts[0] + parts[1], full)
    close(grad_parts, grad_full)
    means = [core.policy_loss(new[s], old[s], adv[s], mask[s])[0] for s in (slice(0, 2), slice(2, 4))]
    assert abs(float((means[0] + means[1]).detach() / 2 - full.detach())) > 1e-3  # a mean of means would differ


def test_policy_loss_empty_micro_batch_is_zero_not_nan():
    loss, stats = core.policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3), 0.2)
    assert float(loss) == 0.0 and all(float(v) == 0.0 for v in stats.values())


def test_value_loss_hand_numbers():
    values, old, returns = t(1.0, 0.0, 2.0, 50.0), t(0.5, 0.1, 1.0, 0.0), t(1.0, 1.0, 0.0, 0.0)
    mask = t(1, 1, 1, 0)
    # V=1, V_old=.5, R=1: (V-R)^2 = 0, clip(V) = .7 -> .09; max .09 (clipped larger, counts)
    # V=0, V_old=.1, R=1: 1, clip(V) = 0 (inside [-.1, .3]) -> 1; max 1 (equal, does not count)
    # V=2, V_old=1,  R=0: 4, clip(V) = 1.2 -> 1.44; max 4
    loss, stats = core.value_loss(values[None], old[None], returns[None], mask[None], clip_eps=0.2)
    close(loss, 0.5 * (0.09 + 1.0 + 4.0) / 3)  # 0.848333
    close(stats["clipfrac"], 1 / 3)
    loss, stats = core.value_loss(values[None], old[None], returns[None], mask[None], clip_eps=None)
    close(loss, 0.5 * (0.0 + 1.0 + 4.0) / 3)  # 0.833333
    close(stats["clipfrac"], 0.0)
    loss, _ = core.value_loss(values[None], old[None], returns[None], mask[None], None, normaliser=10)
    close(loss, 0.5 * 5.0 / 10)


def test_explained_variance():
    returns, mask = t([1.0, 2.0, 4.0, 0.0]), t([1, 1, 1, 0])
    close(core.explained_variance(returns.clone(), returns, mask), 1.0)
    close(core.explained_variance(torch.zeros_like(returns), returns, mask), 0.0)  # 1 - Var[R] / Var[R]
    assert math.isnan(float(core.explained_variance(returns, t([3.0, 3.0, 3.0, 1.0]), mask)))  # Var[R] = 0


# ---------------------------------------------------------------------------------------------------------------------
# KL controllers and critic-free advantages


def test_adaptive_kl_controller_by_hand():
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 64)  # e = clip(9/6 - 1 = 0.5, +-0.2) = 0.2; 0.1 * (1 + 0.2 * 64 / 10000) = 0.100128
    assert ctl.value == pytest.approx(0.100128, abs=1e-12)
    ctl.update(0.0, 64)  # e = clip(-1) = -0.2; 0.100128 * (1 - 0.00128) = 0.0999998362
    assert ctl.value == pytest.approx(0.100128 * 0.99872, abs=1e-12)
    restored = core.AdaptiveKLController(0.5, 6.0, 10000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    fixed = core.FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05 and fixed.state_dict() == {"value": 0.05}


GROUP_SCORES = t(1.0, 2.0, 0.0, 4.0, 0.0, 6.0, 1.0)
GROUP_IDS = torch.tensor([3, 7, 3, 7, 3, 7, 3])  # group 3: [1, 0, 0, 1]; group 7: [2, 4, 6] (interleaved)


def test_grpo_advantages_by_hand():
    # group 3: mean .5, unbiased var (4 x .25) / 3 = 1/3, std .577350 -> +-.5 / .577350 = +-.866025 (sqrt(3)/2)
    # group 7: mean 4, unbiased var (4 + 0 + 4) / 2 = 4, std 2 -> [-1, 0, 1]
    h = math.sqrt(3) / 2
    close(core.grpo_advantages(GROUP_SCORES, GROUP_IDS, eps=0.0), [h, -1.0, -h, 0.0, -h, 1.0, h])
    close(core.grpo_advantages(GROUP_SCORES, GROUP_IDS, scale=False), [0.5, -2.0, -0.5, 0.0, -0.5, 2.0, 0.5])
    expected_eps = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    close(core.grpo_advantages(GROUP_SCORES, GROUP_IDS)[0], expected_eps)


def test_rloo_advantages_by_hand():
    # group 3: 1 - (0 + 0 + 1) / 3 = 2/3; 0 - (1 + 0 + 1) / 3 = -2/3. group 7: 2 - 5 = -3; 4 - 4 = 0; 6 - 3 = 3
    close(core.rloo_advantages(GROUP_SCORES, GROUP_IDS), [2 / 3, -3.0, -2 / 3, 0.0, -2 / 3, 3.0, 2 / 3])


def test_reinforce_plus_plus_by_hand():
    # gamma 0.5. Row 0: policy, policy, env reply, policy (score 1 and KL -0.1 each on the last token).
    #   t=3: R = 0.9;  t=2: env token skipped (not a step, not discounted);  t=1: R = -0.1 + 0.5 x 0.9 = 0.35;
    #   t=0: R = -0.1 + 0.5 x 0.35 = 0.075.
    # Row 1: two policy tokens then padding holding junk rewards: t=1: R = -1.0;  t=0: R = 0.2 + 0.5 x -1.0 = -0.3.
    # Whitening over the 5 policy returns [0.075, 0.35, 0.9, -0.3, -1.0]: mean 0.025 / 5 = 0.005; deviations
    # [0.07, 0.345, 0.895, -0.305, -1.005]; squares sum 0.0049 + 0.119025 + 0.801025 + 0.093025 + 1.010025 = 2.028;
    # unbiased var 2.028 / 4 = 0.507 -> advantage = deviation / sqrt(0.507 + 1e-8).
    rewards = t([-0.1, -0.1, 0.0, 0.9], [0.2, -1.0, 7.0, float("nan")])
    mask = t([1, 1, 0, 1], [1, 1, 0, 0])
    adv, returns = core.reinforce_plus_plus(rewards, mask, gamma=0.5)
    close(returns, [[0.075, 0.35, 0.0, 0.9], [-0.3, -1.0, 0.0, 0.0]])
    std = math.sqrt(0.507 + 1e-8)
    close(adv, [[0.07 / std, 0.345 / std, 0.0, 0.895 / std], [-0.305 / std, -1.005 / std, 0.0, 0.0]])
    # No policy token anywhere (every episode dropped): zeros, not an error.
    adv, returns = core.reinforce_plus_plus(rewards, torch.zeros_like(mask), gamma=0.5)
    close(adv, torch.zeros_like(mask))


def test_group_of_one_raises():
    for fn in (core.grpo_advantages, core.rloo_advantages):
        with pytest.raises(ValueError, match="at least 2"):
            fn(t(1.0, 2.0, 3.0), torch.tensor([0, 0, 1]))


def test_broadcast_to_tokens():
    close(
        core.broadcast_to_tokens(t(2.0, -1.0), t([0, 1, 0, 1], [1, 1, 0, 0])), [[0, 2.0, 0, 2.0], [-1.0, -1.0, 0, 0]]
    )


def test_nan_outside_the_mask_reaches_neither_the_losses_nor_their_gradients():
    # Position 1 is masked out and holds NaN in every input; the losses and gradients must equal those of a clean
    # copy (the masked position set to 0), element by element, and hold no NaN.
    mask = torch.tensor([[True, False, True]])
    nan = float("nan")
    clean = {
        "logp": torch.tensor([[-0.5, 0.0, -1.0]], dtype=torch.float64),
        "old": torch.tensor([[-0.6, 0.0, -0.9]], dtype=torch.float64),
        "adv": torch.tensor([[1.0, 0.0, -2.0]], dtype=torch.float64),
        "values": torch.tensor([[0.3, 0.0, 0.1]], dtype=torch.float64),
        "ret": torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64),
    }
    dirty = {k: v.clone() for k, v in clean.items()}
    for v in dirty.values():
        v[0, 1] = nan
    results = []
    for inputs in (clean, dirty):
        logp = inputs["logp"].clone().requires_grad_()
        values = inputs["values"].clone().requires_grad_()
        pg, _ = core.policy_loss(logp, inputs["old"], inputs["adv"], mask)
        vf, _ = core.value_loss(values, inputs["old"], inputs["ret"], mask, clip_eps=None)
        (pg + vf).backward()
        results.append((pg.detach(), vf.detach(), logp.grad, values.grad))
    for a, b in zip(*results):
        assert torch.isfinite(b).all() and torch.equal(a, b)
    # The value gradient by hand: d/dV 1/2 (V-R)^2 / 2 tokens = (V-R)/2 -> (0.3-1)/2 = -0.35, (0.1-0)/2 = 0.05.
    assert torch.allclose(results[1][3], torch.tensor([[-0.35, 0.0, 0.05]], dtype=torch.float64), atol=1e-12)
