"""The distillation math of rlagent.algorithms.ppo_core against numbers worked out by hand (float64)."""

import math

import torch

from rlagent.algorithms import ppo_core as core

F64 = torch.float64


def close(actual, expected, atol=1e-9):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_reverse_kl_hand_example():
    # student [0, 0] -> p = [.5, .5]; teacher [ln 3, 0] -> q = [.75, .25]
    # KL(p || q) = .5 ln(.5/.75) + .5 ln(.5/.25) = .5 (-0.4054651081) + .5 (0.6931471806) = 0.1438410362
    student = torch.tensor([[0.0, 0.0]], dtype=F64)
    teacher = torch.tensor([[math.log(3), 0.0]], dtype=F64)
    close(core.reverse_kl(student, teacher), [0.1438410362], atol=1e-9)
    # it is the REVERSE direction: KL(q || p) = .75 ln 1.5 + .25 ln .5 = 0.3040988 - 0.1732868 = 0.1308120
    close(core.reverse_kl(teacher, student), [0.1308120], atol=1e-7)
    close(core.reverse_kl(student, student), [0.0])


def test_reverse_kl_temperature_and_wider_head():
    # temperature 2: student [0, 2 ln 3] / 2 -> p = [.25, .75]; teacher [2 ln 3, 0] / 2 -> q = [.75, .25]
    # KL = .25 ln(1/3) + .75 ln 3 = .5 ln 3 = 0.5493061443. The teacher's third (padding) column is cut off.
    student = torch.tensor([0.0, 2 * math.log(3)], dtype=F64)
    teacher = torch.tensor([2 * math.log(3), 0.0, 50.0], dtype=F64)
    close(core.reverse_kl(student, teacher, temperature=2.0), 0.5 * math.log(3))


def test_reverse_kl_gradient_by_hand():
    # d KL / d z_i = p_i (ln(p_i / q_i) - KL): with p = [.5, .5], q = [.75, .25], KL = 0.1438410362
    # -> .5 (-0.4054651081 - 0.1438410362) = -0.2746530722 and .5 (0.6931471806 - 0.1438410362) = 0.2746530722
    student = torch.tensor([0.0, 0.0], dtype=F64, requires_grad=True)
    core.reverse_kl(student, torch.tensor([math.log(3), 0.0], dtype=F64)).backward()
    close(student.grad, [-0.2746530722, 0.2746530722])


def test_distillation_loss_counts_policy_tokens_only():
    # Policy tokens: (0,1)=0.2, (0,2)=0.4, (1,1)=0.6 -> sum 1.2 over 3 tokens = 0.4. The prompt / environment
    # positions hold garbage (9, nan, inf) that must change neither the loss nor its gradient.
    token_kl = torch.tensor([[9.0, 0.2, 0.4], [float("nan"), 0.6, float("inf")]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    loss = core.distillation_loss(token_kl, mask)
    close(loss, 0.4)
    loss.backward()
    close(token_kl.grad, [[0.0, 1 / 3, 1 / 3], [0.0, 1 / 3, 0.0]])
    # with a global normaliser of 6 policy tokens (another micro-batch holds the other 3): 1.2 / 6 = 0.2
    close(core.distillation_loss(token_kl.detach(), mask, normaliser=6), 0.2)


def test_distillation_loss_is_the_same_split_into_micro_batches():
    # rows as micro-batches: (0.2 + 0.4) / 3 + 0.6 / 3 = 0.4, the whole batch's token mean
    token_kl = torch.tensor([[0.0, 0.2, 0.4], [0.0, 0.6, 0.0]], dtype=F64)
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    parts = sum(core.distillation_loss(token_kl[i : i + 1], mask[i : i + 1], normaliser=3) for i in range(2))
    close(parts, 0.4)
    close(core.distillation_loss(token_kl, torch.zeros_like(mask)), 0.0)  # no policy token: 0, not nan
