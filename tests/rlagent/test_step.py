"""rlagent/training/step.py: one optimizer step over several models, with one optimizer or one per model (what
PPO's policy and critic get under FSDP), and the checkpointed training state of either."""

import pytest
import torch

from rlagent.common.config import ConfigError, OptimConfig
from rlagent.training.setup import build_optimizer, make_accelerator
from rlagent.training.step import optimizer_step, restore_training_state, training_state

OPTIM = OptimConfig(lr=0.1, weight_decay=0.01, warmup_ratio=0.5, schedule="cosine")


def two_models():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)


def optimizers_for(models, split: bool):
    """Policy lr 0.1, critic lr 0.5: one AdamW with two param groups, or one AdamW (and schedule) per model."""
    groups = [[{"params": list(m.parameters()), "lr": lr}] for m, lr in zip(models, (0.1, 0.5))]
    if not split:
        optimizer, scheduler = build_optimizer([g for model in groups for g in model], OPTIM, 4)
        return [optimizer], [scheduler]
    built = [build_optimizer(model_groups, OPTIM, 4) for model_groups in groups]
    return [o for o, _ in built], [s for _, s in built]


def train(split: bool, steps: int = 3, poison_at: int | None = None):
    accelerator = make_accelerator()
    models = two_models()
    optimizers, schedulers = optimizers_for(models, split)
    data = torch.arange(12.0).reshape(4, 3) / 10

    scale = [1.0]

    def loss_of(rows):
        return models[1](models[0](data[rows])).sum() * scale[0]

    for step in range(steps):
        scale[0] = float("nan") if step == poison_at else 1.0
        optimizer_step(accelerator, models, optimizers if split else optimizers[0], [[0, 1], [2, 3]], loss_of, 1.0)
        for scheduler in schedulers:
            scheduler.step()
    return models, optimizers, schedulers


def test_one_optimizer_per_model_computes_what_one_with_two_groups_computes():
    """AdamW updates every parameter on its own, and the schedule scales each group's own lr alike: bit-equal."""
    one, _, _ = train(split=False)
    split, _, _ = train(split=True)
    for a, b in zip(one, split):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)


def test_a_non_finite_loss_steps_no_optimizer():
    """Step 1's loss is NaN: neither model moves on that step (the norms are not finite), both do on the others."""
    skipped, _, _ = train(split=True, steps=2, poison_at=1)
    reference, _, _ = train(split=True, steps=1)
    for a, b in zip(skipped, reference):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)


def test_training_state_keeps_one_optimizer_as_itself_and_several_as_a_list():
    accelerator = make_accelerator()
    _, optimizers, schedulers = train(split=True, steps=1)
    several = training_state(accelerator, optimizers, schedulers, 1, {}, {})
    assert isinstance(several["optimizer"], list) and len(several["scheduler"]) == 2
    single = training_state(accelerator, optimizers[0], schedulers[0], 1, {}, {})
    assert isinstance(single["optimizer"], dict) and isinstance(single["scheduler"], dict)
    _, fresh, fresh_schedulers = train(split=True, steps=0)
    assert restore_training_state(accelerator, several, fresh, fresh_schedulers)[0] == 1
    assert fresh_schedulers[1].state_dict() == schedulers[1].state_dict()
    assert torch.equal(fresh[1].state_dict()["state"][0]["exp_avg"], optimizers[1].state_dict()["state"][0]["exp_avg"])
    _, one, one_scheduler = train(split=False, steps=0)
    with pytest.raises(ConfigError, match="holds 2 optimizer state"):
        restore_training_state(accelerator, several, one, one_scheduler)
