"""Bradley–Terry preference loss as a pure tensor function (no models, no I/O).

P(chosen ≻ rejected) = σ(r_c − r_r − m). The loss per pair is −log σ(r_c − r_r − m) + c·(r_c + r_r)²: the margin m
asks the chosen score to win by at least m (TRL's `margin` column), and the centring term c·(r_c + r_r)² (TRL's
`center_rewards_coefficient`, Eisenstein et al. 2023) keeps scores near zero, since the pairwise loss alone only
fixes differences and leaves the mean free to drift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean Bradley–Terry loss over a batch of pairs, and detached statistics.

    chosen, rejected: scalar scores, Shape: (num_pairs,). margin: a float for every pair or a (num_pairs,) tensor;
    None or 0 = no margin. center_coef: weight of the mean squared (r_c + r_r) term; 0 = off.

    Returns (loss, stats) with stats (all 0-dim, detached):
      accuracy  — fraction of pairs with r_c > r_r (ties count as wrong);
      margin    — mean of r_c − r_r (the learned margin, not the requested one);
      chosen, rejected — mean scores;
      bt_loss   — the loss without the centring term.
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(
            f"chosen and rejected must both be (num_pairs,), got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    chosen, rejected = chosen.float(), rejected.float()
    difference = chosen - rejected
    target = (
        difference
        if margin is None
        else difference - torch.as_tensor(margin, dtype=difference.dtype, device=difference.device)
    )
    bt_loss = -F.logsigmoid(target).mean()
    loss = bt_loss + center_coef * ((chosen + rejected) ** 2).mean() if center_coef else bt_loss
    stats = {
        "accuracy": (difference > 0).float().mean().detach(),
        "margin": difference.mean().detach(),
        "chosen": chosen.mean().detach(),
        "rejected": rejected.mean().detach(),
        "bt_loss": bt_loss.detach(),
    }
    return loss, stats
