"""The episode score PPO optimises: a weighted sum of the environment's verifiable reward and the RM score."""

from __future__ import annotations

import torch


def combine_rewards(
    env_reward: torch.Tensor, rm_score: torch.Tensor | None, env_weight: float = 1.0, rm_weight: float = 0.0
) -> torch.Tensor:
    """env_weight · env_reward + rm_weight · rm_score, Shape: (num_episodes,).

    rm_score should be the normalised score (`RewardModel.score*`), so rm_weight means "reward units per standard
    deviation of the RM on its reference sample". rm_score=None (no reward model) needs rm_weight == 0.
    """
    scores = env_weight * env_reward.float()
    if rm_score is None:
        if rm_weight:
            raise ValueError(f"rm_weight={rm_weight} but no reward-model score was given")
        return scores
    if rm_score.shape != env_reward.shape:
        raise ValueError(f"env_reward {tuple(env_reward.shape)} and rm_score {tuple(rm_score.shape)} differ in shape")
    return scores + rm_weight * rm_score.to(scores.device).float()
