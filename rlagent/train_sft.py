"""Stage 1 — SFT warm start: imitate tool-use demonstrations with a loss on assistant tokens only.

One process:        rlagent sft --config configs/quickstart/sft.yaml   (same as: python rlagent/train_sft.py ...)
Several processes:  accelerate launch --multi_gpu --num_processes 2 rlagent/train_sft.py --config ... (CPU: gloo)
GPUs / DeepSpeed:   accelerate launch --config_file configs/accelerate/ddp.yaml rlagent/train_sft.py --config ...

The loss is a token mean over the GLOBAL batch (all micro-batches, all processes), so the same global batch gives
the same update whatever the accumulation steps or process count.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from rlagent.config import ModelConfig, OptimConfig, config_to_dict, doc, parse_args, run_main, save_config
from rlagent.data import (
    DataError,
    TokenizedConversation,
    TokenizedDataset,
    check_input_file,
    collate_right_padded,
    iter_conversations,
    tokenized_dataset,
)
from rlagent.modeling import apply_lora, count_parameters, disable_dropout, load_causal_lm, load_tokenizer
from rlagent.tracking import Progress, Tracker
from rlagent.training import (
    batch_indices,
    build_optimizer,
    check_batch_shape,
    make_accelerator,
    resolve_resume,
    restore_training,
    save_checkpoint,
    save_final,
    set_seed,
)


@dataclass
class SFTDataConfig:
    """Where demonstrations come from."""

    source: Literal["file", "expert"] = doc(
        "'file' reads data.path; 'expert' generates scripted-expert episodes.", "expert"
    )
    path: str | None = doc("JSONL of {'messages': [...], 'tools': [...]} conversations (source: file).", None)
    env_ids: list[str] = doc(
        "Environments the expert plays (source: expert).", factory=lambda: ["rlagent/Calculator-v0"]
    )
    episodes: int = doc("Expert episodes per environment (source: expert).", 400)
    noise: float = doc("Expert noise: probability of a deliberate mistake per episode (source: expert).", 0.0)
    only_successful: bool = doc("Keep only expert episodes that succeeded.", False)
    difficulty: int | None = doc("Task difficulty level for expert episodes (null = the environment's mix).", None)
    noise_modes: list[str] = doc(
        "Expert failure modes noise picks from (guess, malformed, loop, typo, one_hop).",
        factory=lambda: ["guess", "malformed", "loop", "typo", "one_hop"],
    )
    eval_fraction: float = doc("Fraction of conversations held out for eval loss.", 0.05)


@dataclass
class SFTConfig:
    """Supervised fine-tuning on conversations with tool calls (assistant-only loss)."""

    output_dir: str = doc("Where metrics, checkpoints and final/ go.", "runs/sft")
    seed: int = doc("Seed for model init, data order and expert episodes.", 0)
    max_steps: int = doc("Optimizer steps.", 200)
    report_to: list[str] = doc("Any of jsonl, wandb, tensorboard.", factory=lambda: ["jsonl"])
    resume_from: str | None = doc(
        "'auto' = latest checkpoint in output_dir; or a checkpoint path; null = fresh.", None
    )
    model: ModelConfig = doc("Model to fine-tune.", factory=ModelConfig)
    optim: OptimConfig = doc("Optimiser and batch shape.", factory=OptimConfig)
    data: SFTDataConfig = doc("Demonstrations.", factory=SFTDataConfig)
    max_length: int = doc("Longest conversation in tokens; longer ones are truncated and counted.", 768)
    log_every: int = doc("Log train metrics every N steps.", 5)
    eval_every: int = doc("Compute eval loss every N steps (0 = only at the end).", 50)
    early_stopping_patience: int = doc("Stop after N evals without eval-loss improvement (0 = never).", 0)
    save_every: int = doc("Checkpoint every N steps (0 = never).", 100)
    keep_checkpoints: int = doc("How many recent checkpoints to keep.", 2)
    progress: bool = doc("Show a rich progress bar.", True)
    wandb_project: str = doc("W&B project name.", "rlagent")


def load_conversations(cfg: SFTConfig) -> tuple[Iterable[dict], str]:
    """Demonstrations from a JSONL file (streamed line by line) or from the scripted experts of `envs`, and a key
    that changes whenever the input does (for the tokenised-data cache)."""
    if cfg.data.source == "file":
        if not cfg.data.path:
            raise DataError("data.path must be set when data.source is 'file'")
        check_input_file(cfg.data.path, "data.path")
        stat = os.stat(cfg.data.path)
        return iter_conversations(cfg.data.path), f"{os.path.abspath(cfg.data.path)}|{stat.st_size}|{stat.st_mtime_ns}"
    from envs.experts import generate_demonstrations

    rows = []
    for i, env_id in enumerate(cfg.data.env_ids):
        rows += generate_demonstrations(
            env_id,
            cfg.data.episodes,
            noise=cfg.data.noise,
            seed=cfg.seed * 1000 + i,
            split="train",
            only_successful=cfg.data.only_successful,
            difficulty=cfg.data.difficulty,
            modes=tuple(cfg.data.noise_modes),
        )
    return rows, f"expert|{cfg.seed}|{config_to_dict(cfg.data)}"


def prepare_data(cfg: SFTConfig, tokenizer, rank: int = 0) -> tuple[TokenizedDataset, TokenizedDataset, dict]:
    """Tokenise into an Arrow table (datasets), split train/eval deterministically, count truncations (never drop
    silently). Each process writes its own table under OUTPUT_DIR/data/rankN, so processes never race."""
    rows, key = load_conversations(cfg)
    cache_dir = os.path.join(cfg.output_dir, "data", f"rank{rank}")
    tokenized = tokenized_dataset(rows, tokenizer, cfg.max_length, cache_dir, key)
    order = list(range(len(tokenized)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = max(1, int(len(order) * cfg.data.eval_fraction)) if cfg.data.eval_fraction > 0 else 0
    eval_set, train_set = tokenized.subset(order[:n_eval]), tokenized.subset(order[n_eval:])
    truncated, mean_tokens = tokenized.column_stats()
    stats = {
        "data/conversations": len(tokenized),
        "data/train": len(train_set),
        "data/eval": len(eval_set),
        "data/truncated": truncated,
        "data/mean_tokens": mean_tokens,
    }
    return train_set, eval_set, stats


def token_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over assistant tokens (logits at t score token t+1) and the token count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


def count_targets(rows: list[TokenizedConversation]) -> int:
    """Assistant tokens that are prediction targets (the first token of a sequence never is)."""
    return sum(sum(r.assistant_mask[1:]) for r in rows)


@torch.no_grad()
def evaluate(model, rows: list, pad_id: int, micro: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), micro):
        batch = {k: v.to(device) for k, v in collate_right_padded(rows[i : i + micro], pad_id).items()}
        loss, n = token_loss_sum(model, batch)
        total, count = total + float(loss), count + n
    model.train()
    return total / max(count, 1)


def train_step(
    model, optimizer, scheduler, accelerator, micro_batches: list, normaliser: int, pad_id: int, max_grad_norm: float
) -> dict:
    """One optimizer step over this rank's micro-batches; loss scaled so DDP's gradient mean gives the global mean."""
    loss_sum = torch.zeros((), device=accelerator.device)
    for i, rows in enumerate(micro_batches):
        batch = {k: v.to(accelerator.device) for k, v in collate_right_padded(rows, pad_id).items()}
        sync = i == len(micro_batches) - 1
        with accelerator.no_sync(model) if not sync else torch.enable_grad():
            loss, _ = token_loss_sum(model, batch)
            # DDP averages gradients over processes, so multiply back by the process count.
            accelerator.backward(loss * accelerator.num_processes / normaliser)
        loss_sum += loss.detach()
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    if torch.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    global_loss = accelerator.reduce(loss_sum, reduction="sum") / normaliser
    return {
        "train/loss": float(global_loss),
        "train/grad_norm": float(grad_norm),
        "train/skipped_step": int(not torch.isfinite(grad_norm)),
    }


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(SFTConfig, argv, prog="rlagent sft")
    accelerator = make_accelerator()
    set_seed(cfg.seed, accelerator.process_index)
    accumulation = check_batch_shape(cfg.optim, accelerator.num_processes)

    # 1. Data: demonstrations -> token ids + assistant-only masks.
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    pad_id = tokenizer.pad_token_id
    train_set, eval_set, data_stats = prepare_data(cfg, tokenizer, accelerator.process_index)

    # 2. Model, optimiser, schedule.
    model = apply_lora(load_causal_lm(cfg.model, tokenizer, cfg.seed), cfg.model)
    disable_dropout(model)
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    trainable, total = count_parameters(model)

    # 3. Resume: weights, optimiser, schedule, RNG and step from the latest complete checkpoint.
    resume = resolve_resume(cfg.resume_from, cfg.output_dir)
    start_step, best_eval, bad_evals = restore_training(accelerator, resume, model, optimizer, scheduler)

    tracker = Tracker.for_run(cfg, accelerator.is_main_process, resume_step=start_step)
    if accelerator.is_main_process:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        print(
            f"rlagent sft: {trainable:,}/{total:,} trainable parameters, {data_stats['data/train']} train and "
            f"{data_stats['data/eval']} eval conversations, {data_stats['data/truncated']} truncated to "
            f"{cfg.max_length} tokens, {accelerator.num_processes} process(es), resume={resume}"
        )
    progress = Progress(cfg.max_steps, "sft", enabled=cfg.progress and accelerator.is_main_process, start=start_step)

    # 4. Main loop: each global batch is split into this rank's micro-batches.
    history, metrics, stopped_early, t0 = [], {}, False, time.time()
    per_rank = cfg.optim.batch_size // accelerator.num_processes
    for step in range(start_step, cfg.max_steps):
        indices = batch_indices(len(train_set), cfg.optim.batch_size, step, cfg.seed)
        normaliser = count_targets([train_set[i] for i in indices])
        mine = indices[accelerator.process_index * per_rank : (accelerator.process_index + 1) * per_rank]
        micro = [
            [train_set[i] for i in mine[j : j + cfg.optim.micro_batch_size]]
            for j in range(0, per_rank, cfg.optim.micro_batch_size)
        ]
        assert len(micro) == accumulation
        metrics = train_step(
            model, optimizer, scheduler, accelerator, micro, normaliser, pad_id, cfg.optim.max_grad_norm
        )
        metrics["train/lr"] = scheduler.get_last_lr()[0]
        metrics["train/tokens_per_s"] = normaliser / max(time.time() - t0, 1e-9)
        t0 = time.time()
        history.append(metrics["train/loss"])
        done = step + 1

        # 5. Eval loss and early stopping.
        if eval_set and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps):
            metrics["eval/loss"] = evaluate(model, eval_set, pad_id, cfg.optim.micro_batch_size, accelerator.device)
            if metrics["eval/loss"] < best_eval - 1e-6:
                best_eval, bad_evals = metrics["eval/loss"], 0
            else:
                bad_evals += 1
            stopped_early = 0 < cfg.early_stopping_patience <= bad_evals

        # 6. Log.
        if done % cfg.log_every == 0 or done == cfg.max_steps or "eval/loss" in metrics or stopped_early:
            tracker.log(metrics, step=done)
        progress.update(
            done, loss=metrics["train/loss"], lr=metrics["train/lr"], tok_s=round(metrics["train/tokens_per_s"])
        )

        # 7. Checkpoint (atomic); resume_from=auto continues from here.
        if (cfg.save_every and done % cfg.save_every == 0) or stopped_early:
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": done,
                "best_eval": best_eval,
                "bad_evals": bad_evals,
            }
            save_checkpoint(accelerator, cfg.output_dir, done, {"model": model}, state, cfg.keep_checkpoints)
        if stopped_early:
            break
    progress.close()

    # 8. Final model in Hugging Face format, and the summary.
    save_final(accelerator, model, tokenizer, os.path.join(cfg.output_dir, "final"))
    summary = {
        **data_stats,
        "final/train_loss": metrics.get("train/loss"),
        "first/train_loss": history[0] if history else None,
        "final/eval_loss": metrics.get("eval/loss", best_eval if best_eval < math.inf else None),
        "steps": start_step + len(history),
        "stopped_early": stopped_early,
        "parameters/trainable": trainable,
        "parameters/total": total,
    }
    tracker.finish(summary)
    return summary


if __name__ == "__main__":
    run_main(main, prog="rlagent sft")
