"""The episode score PPO optimises: a weighted sum of the environment's verifiable reward, the RM score and the user's
reward functions (reward_models.functions)."""

from __future__ import annotations

import torch


def combine_rewards(
    env_reward: torch.Tensor,
    rm_score: torch.Tensor | None,
    env_weight: float = 1.0,
    rm_weight: float = 0.0,
    functions: dict[str, tuple[torch.Tensor, float]] | None = None,
) -> torch.Tensor:
    """env_weight · env_reward + rm_weight · rm_score + Σ weight_f · value_f, Shape: (num_episodes,).

    `functions` maps a reward function's name to (its values, Shape: (num_episodes,), its weight); a NaN value
    (the function failed on that episode) makes that episode's score NaN, which the PPO score step drops.

    rm_score should be the normalised score (`RewardModel.score*`), so rm_weight means "reward units per standard
    deviation of the RM on its reference sample". rm_score=None (no reward model) needs rm_weight == 0.
    """
    scores = env_weight * env_reward.float()
    if rm_score is None:
        if rm_weight:
            raise ValueError(f"rm_weight={rm_weight} but no reward-model score was given")
        return _add_functions(scores, functions)
    if rm_score.shape != env_reward.shape:
        raise ValueError(f"env_reward {tuple(env_reward.shape)} and rm_score {tuple(rm_score.shape)} differ in shape")
    return _add_functions(scores + rm_weight * rm_score.to(scores.device).float(), functions)


def _add_functions(scores: torch.Tensor, functions: dict[str, tuple[torch.Tensor, float]] | None) -> torch.Tensor:
    for name, (values, weight) in (functions or {}).items():
        if values.shape != scores.shape:
            raise ValueError(f"reward function {name!r} gave {tuple(values.shape)} values for {tuple(scores.shape)} "
                             "episodes")  # fmt: skip
        # Even at weight 0: 0 * NaN is NaN, so an episode a function failed on is still dropped.
        scores = scores + weight * values.to(scores.device).float()
    return scores
