"""The shared supervised loop's pieces, on a one-weight model whose loss and gradient are worked out by hand."""

from types import SimpleNamespace

import pytest
import torch

from rlagent.training.fit import (
    EarlyStopping,
    SupervisedConfig,
    SupervisedTask,
    restore_state,
    split_batch,
    train_step,
)
from rlagent.training.setup import batch_indices, make_accelerator

# Examples (x, u): x scales the loss, u is how many units (tokens, pairs) the example holds.
EXAMPLES = [(1.0, 1), (2.0, 3), (3.0, 2), (4.0, 4)]


def toy_task(examples) -> SupervisedTask:
    """Loss of an example = w * x * u (a sum over its u units of w * x): global mean = w * Σxu / Σu."""

    def loss_sums(model, rows):
        x = torch.tensor([[x * u] for x, u in rows])
        loss = model(x).sum()
        return loss, {"loss": loss, "units_seen": torch.tensor(float(sum(u for _, u in rows)))}

    return SupervisedTask(
        name="toy",
        describe="",
        train_set=examples,
        eval_set=[],
        loss_sums=loss_sums,
        units=lambda rows: sum(u for _, u in rows),
        evaluate=lambda model: {},
        throughput="train/units_per_s",
        progress=lambda metrics: {},
        length=lambda example: example[1],
    )


@pytest.mark.parametrize("micro", [1, 2, 4])
def test_train_step_is_a_global_unit_mean_whatever_the_micro_batches(micro):
    """w = 0.5: Σ w·x·u = 0.5·(1 + 6 + 6 + 16) = 14.5 over Σu = 10 units -> loss 1.45; dloss/dw = 29 / 10 = 2.9;
    SGD lr 0.1 -> w = 0.5 - 0.29 = 0.21."""
    accelerator = make_accelerator()
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    micro_batches = [EXAMPLES[i : i + micro] for i in range(0, len(EXAMPLES), micro)]
    optim = SimpleNamespace(max_grad_norm=100.0)
    metrics = train_step(model, optimizer, scheduler, accelerator, toy_task(EXAMPLES), micro_batches, 10, optim)
    assert metrics["train/loss"] == pytest.approx(1.45, abs=1e-6)
    assert metrics["train/units_seen"] == pytest.approx(1.0, abs=1e-6)  # each metric sum is divided by the units
    assert metrics["train/grad_norm"] == pytest.approx(2.9, abs=1e-6)
    assert metrics["train/skipped_steps"] == 0
    assert model.weight.item() == pytest.approx(0.21, abs=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")  # the skipped step is the point
def test_non_finite_gradient_skips_the_step():
    accelerator = make_accelerator()
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optim = SimpleNamespace(max_grad_norm=1.0)
    metrics = train_step(model, optimizer, scheduler, accelerator, toy_task([]), [[(float("inf"), 1)]], 1, optim)
    assert metrics["train/skipped_steps"] == 1 and model.weight.item() == 0.5


def test_split_batch_gives_this_process_its_share_sorted_by_length():
    """8 examples, global batch 4 on 2 processes, micro-batches of 1: process 1 gets the batch's last 2 indices,
    shortest first; the unit count is the whole global batch's."""
    examples = [(float(i), 10 - i) for i in range(8)]  # example i holds 10 - i units
    cfg = SupervisedConfig(seed=3)
    cfg.optim.batch_size, cfg.optim.micro_batch_size = 4, 1
    rank1 = SimpleNamespace(num_processes=2, process_index=1)
    micro_batches, units = split_batch(cfg, rank1, toy_task(examples), step=5)
    indices = batch_indices(8, 4, 5, 3)
    assert units == sum(10 - i for i in indices)
    mine = sorted(indices[2:], key=lambda i: 10 - i)
    assert micro_batches == [[examples[mine[0]]], [examples[mine[1]]]]


def test_early_stopping_counts_evals_without_improvement():
    """patience 2: 1.0 (best) · 0.9 (best) · 0.9 (no gain: 1) · 0.9 - 1e-7 (below the 1e-6 threshold: 2) -> stop."""
    stopping = EarlyStopping(patience=2)
    seen = []
    for loss in [1.0, 0.9, 0.9, 0.9 - 1e-7]:
        stopping.update(loss)
        seen.append((stopping.best, stopping.bad_evals, stopping.stop))
    assert seen == [(1.0, 0, False), (0.9, 0, False), (0.9, 1, False), (0.9, 2, True)]


def test_patience_zero_never_stops():
    stopping = EarlyStopping(patience=0)
    for loss in [1.0, 2.0, 3.0, 4.0]:
        stopping.update(loss)
    assert (stopping.bad_evals, stopping.stop) == (3, False)


def test_restore_state_without_a_checkpoint_is_a_fresh_start():
    step, stopping, record = restore_state(None, None, None, None, None, patience=3)
    assert step == 0 and stopping == EarlyStopping(patience=3) and record == {}


def test_train_step_trains_in_train_mode_whatever_mode_the_model_came_in():
    """from_pretrained hands over a model in eval mode, where activation checkpointing is off: a step sets train
    mode before the first forward."""
    modes = []
    task = toy_task(EXAMPLES)
    inner = task.loss_sums
    task.loss_sums = lambda model, rows: modes.append(model.training) or inner(model, rows)
    model = torch.nn.Linear(1, 1, bias=False).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optim = SimpleNamespace(max_grad_norm=100.0)
    train_step(model, optimizer, scheduler, make_accelerator(), task, [EXAMPLES[:2], EXAMPLES[2:]], 10, optim)
    assert modes == [True, True]
