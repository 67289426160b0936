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

from rlagent.common.config import ConfigError, OptimConfig
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
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mode, **kwargs)
    on_cpu = accelerator.distributed_type == "MULTI_CPU"
    if on_cpu and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        _use_fsdp_on_cpu(accelerator)
    if on_cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        warnings.warn("DeepSpeed on CPU processes: accelerate runs plain data parallel here (no ZeRO)", stacklevel=2)
    return accelerator


def _use_fsdp_on_cpu(accelerator) -> None:
    """Honour `--config_file configs/accelerate/fsdp.yaml` on CPU processes (gloo).

    accelerate only switches MULTI_GPU-like states to FSDP, so on a CPU host the fsdp config silently ran plain DDP
    (replicated weights). FSDP2's fully_shard works over gloo, so switch the shared state to FSDP with the plugin the
    launcher described in the environment.
    """
    from accelerate import FullyShardedDataParallelPlugin, PartialState
    from accelerate.utils import DistributedType

    plugin = FullyShardedDataParallelPlugin()
    if accelerator.state.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.state.mixed_precision)
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    # Every AcceleratorState() refreshes itself from PartialState's shared dict; accelerate does the same on GPUs.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


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


def check_batch_shape(cfg: OptimConfig, world_size: int, prog: str = "rlagent", unit: str = "sequences") -> int:
    """Derive the batch shape: optim.batch_size (global) / processes per process, in micro-batches of at most
    optim.micro_batch_size; return the accumulation steps. Only a batch the processes cannot share is an error.

    A micro-batch larger than a process's share is lowered to it (the resolved config records the value used), and a
    share that is not a multiple of the micro-batch ends in a smaller last micro-batch: every loss is a sum divided by
    the GLOBAL batch's unit count, so neither changes the update. One line says what was derived."""
    if cfg.batch_size < world_size or cfg.batch_size % world_size:
        raise ConfigError(
            f"optim.batch_size={cfg.batch_size} must be a multiple of the number of processes ({world_size}) "
            f"and at least that large; try optim.batch_size={max(1, round(cfg.batch_size / world_size)) * world_size}"
        )
    per_process = cfg.batch_size // world_size
    lowered = cfg.micro_batch_size > per_process
    cfg.micro_batch_size = min(cfg.micro_batch_size, per_process)
    steps = math.ceil(per_process / cfg.micro_batch_size)
    if lowered or per_process % cfg.micro_batch_size:
        print(
            f"{prog}: batch shape: optim.batch_size={cfg.batch_size} {unit} = {world_size} process(es) x "
            f"{per_process}, in {steps} micro-batch(es) of <= {cfg.micro_batch_size} (gradient accumulation {steps})",
            flush=True,
        )
    return steps


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
