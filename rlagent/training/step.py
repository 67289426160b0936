"""What every training loop shares (fit's SFT/RM loop and PPO's minibatch update): one optimizer step over
micro-batches, and the one shape of the training state a checkpoint holds.

`optimizer_step`: back-propagate each micro-batch's loss with gradient synchronisation skipped on all but the last
(`accelerator.no_sync`), times the process count because DDP averages gradients while the losses are already sums
over the GLOBAL batch divided by its global unit count; then clip each model's gradient norm, step unless a norm is
not finite, zero the gradients. It logs `train/grad_norm` (the first model's) and `train/skipped_steps`.

Usually one optimizer holds every model's parameters (PPO: policy and critic as two param groups). accelerate's FSDP2
takes one model per optimizer, so there PPO passes one optimizer (and one schedule) per model: AdamW updates every
parameter on its own, so the two compute what the one with two groups computes, and both step or neither does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlagent.common.config import ConfigError
from rlagent.training.checkpoints import load_optimizer_state, optimizer_state


def optimizer_step(
    accelerator,
    models: Sequence,
    optimizer,
    micro_batches: Sequence,
    loss_of: Callable[[Any], torch.Tensor],
    max_grad_norm: float,
) -> tuple[dict, list[float]]:
    """One optimizer step over `micro_batches`; `loss_of(micro_batch)` returns its share of the global-mean loss.
    `optimizer`: one optimizer, or a list of them (one per model).

    Returns ({"train/grad_norm": first model's norm, "train/skipped_steps": 0 or 1}, every model's norm).
    """
    for i, micro_batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.ExitStack() as stack:
            if not last:  # gradients are all-reduced once, on the last micro-batch
                for model in models:
                    stack.enter_context(accelerator.no_sync(model))
            accelerator.backward(loss_of(micro_batch) * accelerator.num_processes)
    norms = [float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)) for model in models]
    finite = all(math.isfinite(norm) for norm in norms)
    for each in as_list(optimizer):
        if finite:
            each.step()
        each.zero_grad(set_to_none=True)
    return {"train/grad_norm": norms[0], "train/skipped_steps": float(not finite)}, norms


def as_list(one_or_many) -> list:
    """An optimizer or schedule, or a list of them (one per model), as a list."""
    return list(one_or_many) if isinstance(one_or_many, (list, tuple)) else [one_or_many]


def training_state(accelerator, optimizer, scheduler, step: int, metrics: dict, loop: dict) -> dict:
    """The state every loop checkpoints: optimiser (under FSDP this rank's slices), schedule, steps done, last
    metrics, and `loop` — the state only that loop has (early stopping, update count; KL controller, curriculum,
    shuffle RNG). Several optimizers and schedules (one per model) are saved as lists; one alone as itself (the
    format every stage always had)."""
    optimizers = [optimizer_state(accelerator, each) for each in as_list(optimizer)]
    schedulers = [each.state_dict() for each in as_list(scheduler)]
    several = len(optimizers) > 1
    return {
        "optimizer": optimizers if several else optimizers[0],
        "scheduler": schedulers if several else schedulers[0],
        "step": step,
        "metrics": metrics,
        "loop": loop,
    }


def restore_training_state(accelerator, state: dict, optimizer, scheduler) -> tuple[int, dict, dict]:
    """Load optimiser and schedule from a `training_state` dict; returns (step, metrics, loop state). A checkpoint
    saved with another number of optimizers (another launcher) is a ConfigError."""
    optimizers, schedulers = as_list(optimizer), as_list(scheduler)
    saved_optimizers, saved_schedulers = as_list(state["optimizer"]), as_list(state["scheduler"])
    if len(saved_optimizers) != len(optimizers):
        raise ConfigError(
            f"the checkpoint holds {len(saved_optimizers)} optimizer state(s), this run has {len(optimizers)} "
            "optimizer(s): resume with the launcher config it was saved with (FSDP gives each model its own)"
        )
    for each, saved in zip(optimizers, saved_optimizers):
        load_optimizer_state(accelerator, each, saved)
    for each, saved in zip(schedulers, saved_schedulers):
        each.load_state_dict(saved)
    return state["step"], state.get("metrics", {}), state.get("loop", {})
