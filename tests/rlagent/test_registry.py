"""rlagent.algorithms.registry: estimator names are registry keys, traits drive the trainer, unknown names are
config errors listing the keys."""

import pytest
import torch

from rlagent.algorithms import ppo_core as core
from rlagent.algorithms.registry import (
    ADV_ESTIMATORS,
    AdvantageInputs,
    get_adv_estimator,
    get_policy_loss,
    register_adv_est,
)
from rlagent.common.config import ConfigError, load_config
from rlagent.training.ppo_config import PPOConfig


def test_registered_estimators_and_their_traits():
    traits = {name: (e.needs_critic, e.needs_groups, e.self_normalised) for name, e in ADV_ESTIMATORS.items()}
    assert traits == {
        "gae": (True, False, False),
        "grpo": (False, True, False),
        "rloo": (False, True, False),
        "reinforce_plus_plus": (False, False, True),
    }
    assert get_policy_loss("ppo_clip").fn is core.policy_loss


def test_unknown_names_list_the_keys():
    with pytest.raises(ValueError, match="registered: gae, grpo, rloo, reinforce_plus_plus"):
        get_adv_estimator("ppo2")
    with pytest.raises(ValueError, match="registered: ppo_clip"):
        get_policy_loss("dpo")
    with pytest.raises(
        ConfigError, match="'algo.estimator' must be 'gae' \\| 'grpo' \\| 'rloo' \\| 'reinforce_plus_plus'"
    ):
        load_config(PPOConfig, None, ["algo.estimator=ppo2"])
    assert load_config(PPOConfig, None, ["algo.estimator=reinforce_plus_plus"]).algo.estimator == "reinforce_plus_plus"


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="already registered"):
        register_adv_est("gae", needs_critic=True, needs_groups=False)(lambda batch, gamma, lam: None)


def test_registry_entries_call_the_pure_functions():
    # Two episodes of one group; scores 1 and 0; 3 tokens each, the middle one an environment token.
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    scores = torch.tensor([1.0, 0.0], dtype=torch.float64)
    kl = torch.full_like(mask, 0.5)
    rewards, non_score = core.token_rewards(kl, scores, mask, 0.1)
    values = torch.tensor([[0.2, 9.0, 0.4], [0.1, 9.0, 0.3]], dtype=torch.float64)
    batch = AdvantageInputs(rewards, non_score, values, mask, scores, torch.tensor([0, 0]))
    for name, expected in [
        ("gae", core.gae(rewards, values, mask, 0.9, 0.8)),
        ("reinforce_plus_plus", core.reinforce_plus_plus(rewards, mask, 0.9)),
    ]:
        for got, want in zip(get_adv_estimator(name).fn(batch, 0.9, 0.8), expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    # rloo: 1 - 0 = 1 and 0 - 1 = -1 on every policy token, plus the KL still to come (-0.05 per token): -0.1, -0.05.
    adv, returns = get_adv_estimator("rloo").fn(batch, 0.9, 0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.9, 0.0, 0.95], [-1.1, 0.0, -1.05]], dtype=torch.float64))
    assert returns is adv
