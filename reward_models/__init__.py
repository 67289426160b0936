"""Reward models: a scalar head on a causal backbone, trained on preference pairs (stage 2) and used by PPO.

import reward_models
rm = reward_models.load("runs/quickstart/reward/final")
scores = rm.score(conversations)                     # normalised with the gain/bias stored beside the weights
total = reward_models.combine_rewards(env_reward, scores, env_weight=1.0, rm_weight=0.5)
"""

from reward_models.combine import combine_rewards
from reward_models.losses import bradley_terry_loss
from reward_models.modeling import build_tiny_reward_model, init_score_head, load_reward_backbone
from reward_models.pairs import RULES, pair_conversations, read_pairs, rule_negative_pairs
from reward_models.scoring import NORMALIZATION_FILE, RewardModel, fit_normalization, load, render_for_reward

__all__ = [
    "NORMALIZATION_FILE",
    "RULES",
    "RewardModel",
    "bradley_terry_loss",
    "build_tiny_reward_model",
    "combine_rewards",
    "fit_normalization",
    "init_score_head",
    "load",
    "load_reward_backbone",
    "pair_conversations",
    "read_pairs",
    "render_for_reward",
    "rule_negative_pairs",
]
