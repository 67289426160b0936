"""Bradley–Terry loss against numbers worked out by hand (softplus(x) = log(1 + e^x) = −log σ(−x))."""

import math

import pytest
import torch

from reward_models.losses import bradley_terry_loss

# Two pairs: the first ranked right by 1.0, the second wrong by 1.0.
CHOSEN = torch.tensor([2.0, 0.5])
REJECTED = torch.tensor([1.0, 1.5])


def test_plain_loss_accuracy_and_margin():
    # d = r_c - r_r = [1, -1]; loss = mean(log(1 + e^-1), log(1 + e^1)) = mean(0.31326169, 1.31326169) = 0.81326169
    loss, stats = bradley_terry_loss(CHOSEN, REJECTED)
    assert loss.item() == pytest.approx(0.8132616875, abs=1e-6)
    assert stats["accuracy"].item() == 0.5  # one of two pairs has r_c > r_r
    assert stats["margin"].item() == pytest.approx(0.0, abs=1e-7)  # mean(1, -1)
    assert stats["chosen"].item() == pytest.approx(1.25) and stats["rejected"].item() == pytest.approx(1.25)
    assert stats["bt_loss"].item() == pytest.approx(loss.item(), abs=1e-7)


def test_margin_shifts_the_difference():
    # margin 0.5: d - m = [0.5, -1.5]; loss = mean(log(1 + e^-0.5), log(1 + e^1.5)) = mean(0.47407698, 1.70141328)
    loss, stats = bradley_terry_loss(CHOSEN, REJECTED, margin=0.5)
    assert loss.item() == pytest.approx(1.0877451311, abs=1e-6)
    assert stats["margin"].item() == pytest.approx(0.0, abs=1e-7)  # the learned margin, not the requested one
    # per-pair margins [0, 1] (TRL's `margin` column): d - m = [1, -2]; mean(0.31326169, 2.12692801) = 1.22009485
    loss, _ = bradley_terry_loss(CHOSEN, REJECTED, margin=torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(1.2200948493, abs=1e-6)


def test_centring_term():
    # (r_c + r_r)^2 = [3^2, 2^2] = [9, 4], mean 6.5; with coef 0.1 the loss grows by 0.65 over the margin-0.5 case.
    loss, stats = bradley_terry_loss(CHOSEN, REJECTED, margin=0.5, center_coef=0.1)
    assert loss.item() == pytest.approx(1.0877451311 + 0.65, abs=1e-6)
    assert stats["bt_loss"].item() == pytest.approx(1.0877451311, abs=1e-6)


def test_gradient_by_hand():
    # d loss / d r_c = -σ(-(d - m)) / N per pair; with d = [1, -1], m = 0, N = 2: [-σ(-1)/2, -σ(1)/2]
    chosen = CHOSEN.clone().requires_grad_(True)
    rejected = REJECTED.clone().requires_grad_(True)
    loss, _ = bradley_terry_loss(chosen, rejected)
    loss.backward()
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    expected = torch.tensor([-sigmoid(-1) / 2, -sigmoid(1) / 2])
    torch.testing.assert_close(chosen.grad, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(rejected.grad, -expected, rtol=0, atol=1e-7)


def test_ties_count_as_wrong_and_shapes_are_checked():
    _, stats = bradley_terry_loss(torch.zeros(3), torch.zeros(3))
    assert stats["accuracy"].item() == 0.0
    with pytest.raises(ValueError, match="num_pairs"):
        bradley_terry_loss(torch.zeros(2, 1), torch.zeros(2, 1))
