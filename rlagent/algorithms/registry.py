"""Advantage estimators and policy losses by name: `algo.estimator` and `algo.policy_loss` are keys of these tables.

Each entry is a pure function of ppo_core plus the traits the trainer plans by (does it need a critic, does it need
groups of episodes per task, does it normalise its own advantages). Adding an estimator is one registered function
here; nothing else in the project compares estimator names (verl's `register_adv_est` in
verl/trainer/ppo/core_algos.py is the model).

    @register_adv_est("my_estimator", needs_critic=False, needs_groups=True)
    def my_estimator(batch: AdvantageInputs, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from rlagent.algorithms import ppo_core as core


class AdvantageInputs(NamedTuple):
    """What an estimator may read; per-token tensors are (B, T) on token positions (ppo_core's conventions)."""

    rewards: torch.Tensor  # -beta KL on policy tokens + the score at the last policy token
    non_score: torch.Tensor  # the -beta KL part of `rewards`
    values: torch.Tensor  # critic values (zeros when the estimator needs no critic)
    policy_mask: torch.Tensor  # 1 on tokens the policy sampled
    scores: torch.Tensor  # (B,) episode scores
    group_ids: torch.Tensor  # (B,) episodes with the same id played the same task


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator: fn(batch, gamma, lam) -> (advantages, returns), both (B, T), 0 off the mask."""

    name: str
    fn: Callable[[AdvantageInputs, float, float], tuple[torch.Tensor, torch.Tensor]]
    needs_critic: bool  # the trainer builds and trains a value model, and the value loss joins the update
    needs_groups: bool  # episodes come in groups of algo.group_size that share a task seed
    self_normalised: bool = False  # fn already whitens: algo.whiten_advantages is not applied again


@dataclass(frozen=True)
class PolicyLoss:
    """A registered policy loss: fn(logprobs, old_logprobs, advantages, mask, clip_eps, dual_clip, normaliser)
    -> (summed loss / normaliser, detached stats), as `ppo_core.policy_loss`."""

    name: str
    fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


ADV_ESTIMATORS: dict[str, AdvantageEstimator] = {}
POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_adv_est(name: str, *, needs_critic: bool, needs_groups: bool, self_normalised: bool = False):
    """Decorator: register `fn` as advantage estimator `name` with its traits."""

    def register(fn):
        if name in ADV_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADV_ESTIMATORS[name] = AdvantageEstimator(name, fn, needs_critic, needs_groups, self_normalised)
        return fn

    return register


def register_policy_loss(name: str):
    """Decorator: register `fn` as policy loss `name`."""

    def register(fn):
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = PolicyLoss(name, fn)
        return fn

    return register


def get_adv_estimator(name: str) -> AdvantageEstimator:
    """The registered estimator; an unknown name is a ValueError listing the keys."""
    if name not in ADV_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {', '.join(ADV_ESTIMATORS)}")
    return ADV_ESTIMATORS[name]


def get_policy_loss(name: str) -> PolicyLoss:
    """The registered policy loss; an unknown name is a ValueError listing the keys."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; registered: {', '.join(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]


# ---------------------------------------------------------------------------------------------------------------------
# The estimators


@register_adv_est("gae", needs_critic=True, needs_groups=False)
def gae_estimator(batch: AdvantageInputs, gamma: float, lam: float):
    """GAE with the critic over policy tokens, skipping environment tokens (ppo_core.gae)."""
    return core.gae(batch.rewards, batch.values, batch.policy_mask, gamma, lam)


def _outcome_with_kl(outcome: torch.Tensor, batch: AdvantageInputs):
    """Critic-free: the episode's outcome advantage on every policy token, plus the KL penalty still to come."""
    kl_to_go = core.gae(batch.non_score, torch.zeros_like(batch.non_score), batch.policy_mask, 1.0, 1.0)[0]
    advantages = core.broadcast_to_tokens(outcome, batch.policy_mask) + kl_to_go
    return advantages, advantages


@register_adv_est("grpo", needs_critic=False, needs_groups=True)
def grpo_estimator(batch: AdvantageInputs, gamma: float, lam: float):
    """Group-normalised outcome advantage (ppo_core.grpo_advantages) plus the KL to go; gamma and lam unused."""
    return _outcome_with_kl(core.grpo_advantages(batch.scores, batch.group_ids), batch)


@register_adv_est("rloo", needs_critic=False, needs_groups=True)
def rloo_estimator(batch: AdvantageInputs, gamma: float, lam: float):
    """Leave-one-out outcome advantage (ppo_core.rloo_advantages) plus the KL to go; gamma and lam unused."""
    return _outcome_with_kl(core.rloo_advantages(batch.scores, batch.group_ids), batch)


@register_adv_est("reinforce_plus_plus", needs_critic=False, needs_groups=False, self_normalised=True)
def reinforce_plus_plus_estimator(batch: AdvantageInputs, gamma: float, lam: float):
    """REINFORCE++ (ppo_core.reinforce_plus_plus): whitened discounted returns of the per-token rewards; lam unused."""
    return core.reinforce_plus_plus(batch.rewards, batch.policy_mask, gamma)


# ---------------------------------------------------------------------------------------------------------------------
# The policy losses

register_policy_loss("ppo_clip")(core.policy_loss)
