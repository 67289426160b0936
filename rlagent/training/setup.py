"""What every stage's training loop sets up the same way: the accelerator, seeding, data order, optimiser and
schedule."""

from __future__ import annotations

import math
import os
import random
import warnings

import numpy as np
import torch
from transformers import get_scheduler

from rlagent.common.config import OptimConfig
from rlagent.common.precision import mixed_precision_mode


def make_accelerator(model_dtype: str = "float32", **kwargs):
    """An Accelerator that also forms a gloo process group on CPU-only hosts, with bf16 autocast when `model_dtype`
    (model.dtype) asks for it.

    accelerate picks MULTI_CPU only when cpu=True, so `accelerate launch --multi_gpu --num_processes 2` on a machine
    without GPUs would otherwise start two independent single-process runs. model.dtype alone decides the mixed
    precision (accelerate then wraps each prepared model's forward in autocast and returns fp32 outputs); a launcher
    config's `mixed_precision` that disagrees is overridden, with a warning, so bf16 is never applied twice.
    """
    from accelerate import Accelerator
    from transformers.utils import logging

    logging.disable_progress_bar()  # "Writing model shards" bars would interleave with our own progress bar
    mode = mixed_precision_mode(model_dtype, "cuda" if torch.cuda.is_available() else "cpu")
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher not in ("no", mode):
        warnings.warn(
            f"accelerate mixed_precision={launcher} ignored: model.dtype={model_dtype} means mixed_precision={mode} "
            "here (model.dtype: auto autocasts to bf16 where the hardware has it)",
            stacklevel=2,
        )
    _forget_other_precision(mode)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mode, **kwargs)


def _forget_other_precision(mode: str) -> None:
    """accelerate's state is a process-wide singleton that refuses a second precision; a process that runs stages
    of different model.dtype in turn (tests, notebooks) starts the new one afresh (the process group is kept)."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != mode:
        AcceleratorState._reset_state()


def set_seed(seed: int, rank: int = 0) -> None:
    """docs/ppo.md A.5: per-rank sampling seeds differ (seed + rank); weight init uses its own seeded generator."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the global batch for optimizer step `step` (0-based).

    The order is a pure function of (seed, epoch), so a resumed run and a run on more processes see exactly the
    same examples at the same step. Batches never straddle epochs; the tail of each permutation is dropped.
    """
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({num_examples} examples)")
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[offset * batch_size : (offset + 1) * batch_size].tolist()


def check_batch_shape(cfg: OptimConfig, world_size: int) -> int:
    """Global batch = micro batch × accumulation × processes; return the accumulation steps or raise."""
    per_process, rest = divmod(cfg.batch_size, world_size)
    if rest or per_process % cfg.micro_batch_size:
        raise ValueError(
            f"optim.batch_size={cfg.batch_size} must divide by processes ({world_size}) × "
            f"optim.micro_batch_size ({cfg.micro_batch_size})"
        )
    return per_process // cfg.micro_batch_size


def build_optimizer(model_or_groups, cfg: OptimConfig, max_steps: int):
    """AdamW over a module's trainable parameters (or explicit param groups) plus warm-up + cosine/linear/constant."""
    if isinstance(model_or_groups, torch.nn.Module):
        params = [p for p in model_or_groups.parameters() if p.requires_grad]
    else:
        params = model_or_groups
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    warmup = math.ceil(cfg.warmup_ratio * max_steps)
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------------------------------------
