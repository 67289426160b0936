"""The supervised training loop that SFT (stage 1) and the reward model (stage 2) share: `fit(cfg, accelerator,
model, task)`.

A stage builds its data and model and hands fit() a `SupervisedTask`: its examples, how a micro-batch becomes a
summed loss, how many units (assistant tokens, pairs) a global batch's loss is a mean over, and its held-out
evaluation. fit() then runs the same numbered loop for both:

1 global batch (a pure function of seed and step) -> this process's share -> micro-batches ·
2 forward/backward per micro-batch, gradients synchronised on the last · 3 clip, optimizer step (skipped when the
gradient norm is not finite), schedule · 4 eval + early stopping · 5 log · 6 checkpoint.

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

from rlagent.common.config import StageConfig, doc, save_config
from rlagent.common.memory import release_freed_heap
from rlagent.common.modeling import count_parameters
from rlagent.training.checkpoints import load_checkpoint, resolve_resume, save_checkpoint
from rlagent.training.setup import batch_indices, build_optimizer
from rlagent.training.tracking import Progress, Tracker


@dataclass
class SupervisedConfig(StageConfig):
    """The keys of a stage trained by fit(): the keys every stage has, plus logging, eval and early stopping."""

    log_every: int = doc("Log train metrics every N steps.", 5)
    eval_every: int = doc("Evaluate on the held-out set every N steps (0 = only at the end).", 50)
    early_stopping_patience: int = doc("Stop after N evals without eval-loss improvement (0 = never).", 0)


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

    def summary(self) -> dict:
        """The summary keys every supervised stage writes."""
        return {
            "final/train_loss": self.metrics.get("train/loss"),
            "first/train_loss": self.first_train_loss,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
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
    if accelerator.is_main_process:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        print(
            f"rlagent {task.name}: {parameters[0]:,}/{parameters[1]:,} trainable parameters, {task.describe}, "
            f"{accelerator.num_processes} process(es), resume={resume}"
        )
    progress = Progress(
        cfg.max_steps, task.name, enabled=cfg.progress and accelerator.is_main_process, start=start_step
    )
    # A resumed run starts from the checkpoint's last metrics and first loss, so a kill after the last checkpoint
    # but before summary.json still ends with the summary an uninterrupted run writes.
    history, metrics, t0 = [], record.get("metrics", {}), time.time()
    first_loss = record.get("first_train_loss")
    for step in range(start_step, cfg.max_steps):
        done = step + 1
        # 1-3. This process's micro-batches of global batch `step`, then one optimizer step.
        micro_batches, units = split_batch(cfg, accelerator, task, step)
        metrics = train_step(model, optimizer, scheduler, accelerator, task, micro_batches, units, cfg.optim)
        metrics["train/lr"] = scheduler.get_last_lr()[0]
        metrics[task.throughput] = units / max(time.time() - t0, 1e-9)
        t0 = time.time()
        history.append(metrics["train/loss"])
        first_loss = metrics["train/loss"] if first_loss is None else first_loss

        # 4. Held-out eval (every eval_every steps and at the last); early stopping on eval loss.
        if task.eval_set and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps):
            metrics.update(task.evaluate(model))
            stopping.update(metrics["eval/loss"])

        # 5. Log.
        if done % cfg.log_every == 0 or done == cfg.max_steps or "eval/loss" in metrics or stopping.stop:
            tracker.log(metrics, step=done)
        progress.update(done, **task.progress(metrics))

        # 6. Checkpoint (atomic); resume_from=auto continues from here.
        if (cfg.save_every and done % cfg.save_every == 0) or stopping.stop:
            record = {"metrics": metrics, "first_train_loss": first_loss}
            save_state(accelerator, cfg, done, model, optimizer, scheduler, stopping, record)
        if stopping.stop:
            break
    progress.close()
    if task.eval_set and "eval/loss" not in metrics:  # resumed at the last step: nothing was evaluated this run
        metrics.update(task.evaluate(model))
    steps = start_step + len(history)
    return FitResult(model, tracker, metrics, steps, stopping.stop, parameters, history, first_loss)


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
    """One optimizer step over this process's micro-batches; each summed loss is divided by the GLOBAL unit count."""
    # Train mode: from_pretrained returns a model in eval mode, where activation checkpointing is off.
    model.train()
    sums = torch.zeros((), device=accelerator.device)
    for i, rows in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1
        with accelerator.no_sync(model) if not sync else torch.enable_grad():
            loss, stats = task.loss_sums(model, rows)
            # DDP averages gradients over processes, so multiply back by the process count.
            accelerator.backward(loss * accelerator.num_processes / units)
        sums = sums + torch.stack([value.detach() for value in stats.values()])
        # Micro-batches of different lengths fragment glibc's heap; give the freed activations back (common.memory).
        release_freed_heap()
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
    if torch.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    means = (accelerator.reduce(sums, reduction="sum") / units).tolist()
    return {
        **{f"train/{name}": mean for name, mean in zip(stats, means)},
        "train/grad_norm": float(grad_norm),
        "train/skipped_step": int(not torch.isfinite(grad_norm)),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint state of a supervised run: what save_state writes, restore_state reads back (training.py does the files).


def save_state(
    accelerator, cfg: SupervisedConfig, step: int, model, optimizer, scheduler, stopping, record: dict
) -> None:
    """Weights, optimiser, schedule, step, early-stopping state and the run `record` (last metrics, first loss) as
    OUTPUT_DIR/checkpoints/step-N (atomic)."""
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best_eval": stopping.best,
        "bad_evals": stopping.bad_evals,
        "record": record,
    }
    save_checkpoint(accelerator, cfg.output_dir, step, {"model": model}, state, cfg.keep_checkpoints)


def restore_state(
    accelerator, resume: str | None, model, optimizer, scheduler, patience: int
) -> tuple[int, EarlyStopping, dict]:
    """(step, early-stopping state, run record) from checkpoint `resume` — weights, optimiser, schedule and this
    process's RNG come back too — or those of a fresh start when `resume` is None."""
    if not resume:
        return 0, EarlyStopping(patience), {}
    state = load_checkpoint(resume, {"model": accelerator.unwrap_model(model)}, accelerator.process_index)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # Checkpoints written before the record existed resume with an empty one (first loss unknown).
    return state["step"], EarlyStopping(patience, state["best_eval"], state["bad_evals"]), state.get("record", {})
