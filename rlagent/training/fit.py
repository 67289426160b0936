"""The supervised training loop that SFT (stage 1) and the reward model (stage 2) share: `fit(cfg, accelerator,
model, task)`.

A stage builds its data and model and hands fit() a `SupervisedTask`: its examples, how a micro-batch becomes a
summed loss, how many units (assistant tokens, pairs) a global batch's loss is a mean over, and its held-out
evaluation. fit() then runs the same numbered loop for both:

1 global batch (a pure function of seed and step) -> this process's share -> micro-batches ·
2-3 one optimizer step (rlagent.training.step, shared with PPO): forward/backward per micro-batch, gradients
synchronised on the last, clip, step (skipped when the gradient norm is not finite), schedule ·
4 eval + early stopping · 5 log · 6 checkpoint.

The loss is a mean over the units of the GLOBAL batch (all micro-batches, all processes): each micro-batch's summed
loss is divided by the global count, so the same global batch gives the same update whatever the accumulation steps
or process count. Checkpoint save and restore sit side by side at the end of this file.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlagent.common.config import AT_LEAST_ONE, NON_NEGATIVE, StageConfig, doc, save_config
from rlagent.common.memory import release_freed_heap
from rlagent.common.modeling import count_parameters
from rlagent.training.checkpoints import load_checkpoint, resolve_resume, save_checkpoint
from rlagent.training.guards import StepGuard
from rlagent.training.setup import batch_indices, build_optimizer
from rlagent.training.step import optimizer_step, restore_training_state, training_state
from rlagent.training.tracking import Progress, Tracker


@dataclass
class SupervisedConfig(StageConfig):
    """The keys of a stage trained by fit(): the keys every stage has, plus logging, eval and early stopping."""

    log_every: int = doc("Log train metrics every N steps.", 5, range=AT_LEAST_ONE)
    eval_every: int = doc("Evaluate on the held-out set every N steps (0 = only at the end).", 50)
    early_stopping_patience: int = doc("Stop after N evals without eval-loss improvement (0 = never).", 0)
    max_seconds: float = doc(
        "Stop after this many seconds of training steps (0 = no limit), then evaluate and save as at max_steps.",
        0.0,
        range=NON_NEGATIVE,
    )


@dataclass
class SupervisedTask:
    """What a stage hands to fit()."""

    name: str  # "sft" / "reward": the progress-bar label and the start-up line's prefix
    describe: str  # the data part of the start-up line
    train_set: Sequence
    eval_set: Sequence
    # (summed loss to back-propagate, {metric: sum over the micro-batch's units}) for one micro-batch of examples.
    # The dict holds "loss"; each sum divided by the global unit count is logged as train/<metric>.
    loss_sums: Callable[[Any, list], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    units: Callable[[list], int]  # units of a global batch (list of examples) that the loss is a mean over
    evaluate: Callable[[Any], dict]  # held-out metrics of the (wrapped) model, with "eval/loss"
    throughput: str  # metric name of units per second, e.g. "train/tokens_per_s"
    progress: Callable[[dict], dict]  # the progress bar's live fields from a step's metrics
    length: Callable[[Any], int] | None = None  # sort key of an example: similar lengths share a micro-batch


@dataclass
class EarlyStopping:
    """Stop after `patience` evals in a row without the eval loss improving by more than 1e-6 (0 = never)."""

    patience: int
    best: float = math.inf
    bad_evals: int = 0
    stop: bool = False

    def update(self, eval_loss: float) -> None:
        if eval_loss < self.best - 1e-6:
            self.best, self.bad_evals = eval_loss, 0
        else:
            self.bad_evals += 1
        self.stop = 0 < self.patience <= self.bad_evals


@dataclass
class FitResult:
    """What fit() leaves for the stage's final save and summary."""

    model: Any  # as prepared by accelerate (unwrap before saving)
    tracker: Tracker  # still open: the stage closes it with its summary
    metrics: dict  # the last step's metrics, plus a held-out eval when this run evaluated nothing
    steps: int
    stopped_early: bool
    parameters: tuple[int, int]  # trainable, total
    history: list[float] = field(default_factory=list)  # train loss of each step this run
    first_train_loss: float | None = None  # of step 1, carried through checkpoints so a resumed run reports it too
    stopped_on_time: bool = False  # max_seconds ran out before max_steps

    def summary(self) -> dict:
        """The summary keys every supervised stage writes."""
        return {
            "final/train_loss": self.metrics.get("train/loss"),
            "first/train_loss": self.first_train_loss,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "stopped_on_time": self.stopped_on_time,
            "parameters/trainable": self.parameters[0],
            "parameters/total": self.parameters[1],
        }


def fit(cfg: SupervisedConfig, accelerator, model, task: SupervisedTask) -> FitResult:
    """Train `model` for cfg.max_steps optimizer steps (or until early stopping), resuming if asked."""
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    parameters = count_parameters(model)
    # Resume: weights, optimiser, schedule, RNG, step and early-stopping state from the latest complete checkpoint.
    resume = resolve_resume(cfg.resume_from, cfg.output_dir)
    start_step, stopping, record = restore_state(
        accelerator, resume, model, optimizer, scheduler, cfg.early_stopping_patience
    )
    tracker = Tracker.for_run(cfg, accelerator.is_main_process, resume_step=start_step)
    announce(cfg, accelerator, task, parameters, resume)
    progress = Progress(
        cfg.max_steps, task.name, enabled=cfg.progress and accelerator.is_main_process, start=start_step
    )
    # A resumed run starts from the checkpoint's last metrics and first loss, so a kill after the last checkpoint
    # but before summary.json still ends with the summary an uninterrupted run writes.
    history, metrics, t0 = [], record.get("metrics", {}), time.time()
    first_loss, t_start, out_of_time = record.get("first_train_loss"), t0, False
    # Checkpoints older than the guard did not count updates: any step they saved had one.
    guard = StepGuard(cfg.optim.max_skipped_steps, record.get("updates", start_step))
    for step in range(start_step, cfg.max_steps):
        done = step + 1
        # 1-3. This process's micro-batches of global batch `step`, then one optimizer step.
        micro_batches, units = split_batch(cfg, accelerator, task, step)
        metrics = train_step(model, optimizer, scheduler, accelerator, task, micro_batches, units, cfg.optim)
        guard.after_step(not metrics["train/skipped_steps"], {"model": model}, done)
        metrics["train/lr"] = scheduler.get_last_lr()[0]
        metrics[task.throughput] = units / max(time.time() - t0, 1e-9)
        t0 = time.time()
        history.append(metrics["train/loss"])
        first_loss = metrics["train/loss"] if first_loss is None else first_loss
        out_of_time = time_is_up(accelerator, t_start, cfg.max_seconds)
        last = done == cfg.max_steps or out_of_time

        # 4. Held-out eval (every eval_every steps and at the last); early stopping on eval loss.
        if task.eval_set and ((cfg.eval_every and done % cfg.eval_every == 0) or last):
            metrics.update(task.evaluate(model))
            stopping.update(metrics["eval/loss"])

        # 5. Log.
        if done % cfg.log_every == 0 or last or "eval/loss" in metrics or stopping.stop:
            tracker.log(metrics, step=done)
        progress.update(done, **task.progress(metrics))

        # 6. Checkpoint (atomic); resume_from=auto continues from here.
        if (cfg.save_every and done % cfg.save_every == 0) or stopping.stop:
            record = {"metrics": metrics, "first_train_loss": first_loss, "updates": guard.updates}
            save_state(accelerator, cfg, done, model, optimizer, scheduler, stopping, record)
        if stopping.stop or out_of_time:
            break
    progress.close()
    guard.require_an_update("final/")
    if task.eval_set and "eval/loss" not in metrics:  # resumed at the last step: nothing was evaluated this run
        metrics.update(task.evaluate(model))
    steps = start_step + len(history)
    return FitResult(model, tracker, metrics, steps, stopping.stop, parameters, history, first_loss, out_of_time)


def announce(cfg: SupervisedConfig, accelerator, task: SupervisedTask, parameters: tuple, resume) -> None:
    """The resolved config.yaml and the one line that says what this run trains (main process only)."""
    if accelerator.is_main_process:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        print(
            f"rlagent {task.name}: {parameters[0]:,}/{parameters[1]:,} trainable parameters, {task.describe}, "
            f"{accelerator.num_processes} process(es) ({accelerator.distributed_type.value}), resume={resume}"
        )


def time_is_up(accelerator, t_start: float, max_seconds: float) -> bool:
    """Whether the time budget is spent; every process takes the slowest one's view, so all stop at the same step."""
    if not max_seconds:
        return False
    spent = torch.tensor([time.time() - t_start], device=accelerator.device)
    if accelerator.num_processes > 1:
        spent = accelerator.reduce(spent, reduction="max")  # per-process clocks differ; stopping must not
    return bool(spent.item() >= max_seconds)


def split_batch(cfg: SupervisedConfig, accelerator, task: SupervisedTask, step: int) -> tuple[list[list], int]:
    """This process's share of global batch `step`, as micro-batches of examples, and the global batch's units."""
    indices = batch_indices(len(task.train_set), cfg.optim.batch_size, step, cfg.seed)
    units = task.units([task.train_set[i] for i in indices])
    per_rank = cfg.optim.batch_size // accelerator.num_processes
    rank = accelerator.process_index
    mine = indices[rank * per_rank : (rank + 1) * per_rank]
    if task.length is not None:
        mine = sorted(mine, key=lambda i: task.length(task.train_set[i]))
    micro = cfg.optim.micro_batch_size
    return [[task.train_set[i] for i in mine[j : j + micro]] for j in range(0, per_rank, micro)], units


def train_step(model, optimizer, scheduler, accelerator, task, micro_batches: list, units: int, optim) -> dict:
    """One optimizer step over this process's micro-batches (rlagent.training.step); each summed loss is divided by the
    GLOBAL unit count."""
    # Train mode: from_pretrained returns a model in eval mode, where activation checkpointing is off.
    model.train()
    sums, names = [torch.zeros((), device=accelerator.device)], []

    def loss_of(rows):
        loss, stats = task.loss_sums(model, rows)
        sums[0] = sums[0] + torch.stack([value.detach() for value in stats.values()])
        names[:] = list(stats)
        return loss / units

    step_stats, _ = optimizer_step(accelerator, [model], optimizer, micro_batches, loss_of, optim.max_grad_norm)
    # Micro-batches of different lengths fragment glibc's heap; give the freed activations back (common.memory).
    release_freed_heap()
    scheduler.step()
    means = (accelerator.reduce(sums[0], reduction="sum") / units).tolist()
    return {**{f"train/{name}": mean for name, mean in zip(names, means)}, **step_stats}


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint state of a supervised run: what save_state writes, restore_state reads back (training.py does the files).


def save_state(
    accelerator, cfg: SupervisedConfig, step: int, model, optimizer, scheduler, stopping, record: dict
) -> None:
    """Weights and the training state (rlagent.training.step: optimiser, schedule, step, last metrics; the loop's
    own: early stopping, first train loss, applied updates) as OUTPUT_DIR/checkpoints/step-N (atomic)."""
    loop = {
        "best_eval": stopping.best,
        "bad_evals": stopping.bad_evals,
        "first_train_loss": record["first_train_loss"],
        "updates": record["updates"],
    }
    state = training_state(accelerator, optimizer, scheduler, step, record["metrics"], loop)
    save_checkpoint(accelerator, cfg.output_dir, step, {"model": model}, state, cfg.keep_checkpoints)


def restore_state(
    accelerator, resume: str | None, model, optimizer, scheduler, patience: int
) -> tuple[int, EarlyStopping, dict]:
    """(step, early-stopping state, run record) from checkpoint `resume` — weights, optimiser, schedule and this
    process's RNG come back too — or those of a fresh start when `resume` is None."""
    if not resume:
        return 0, EarlyStopping(patience), {}
    state = load_checkpoint(resume, {"model": accelerator.unwrap_model(model)}, accelerator.process_index)
    step, metrics, loop = restore_training_state(accelerator, state, optimizer, scheduler)
    record = {"metrics": metrics, "first_train_loss": loop["first_train_loss"], "updates": loop.get("updates", step)}
    return step, EarlyStopping(patience, loop["best_eval"], loop["bad_evals"]), record
