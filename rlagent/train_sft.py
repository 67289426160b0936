"""Stage 1 — SFT warm start: imitate tool-use demonstrations with a loss on assistant tokens only.

One process:        rlagent sft --config configs/quickstart/sft.yaml   (same as: python rlagent/train_sft.py ...)
Several processes:  accelerate launch --multi_gpu --num_processes 2 rlagent/train_sft.py --config ... (CPU: gloo)
GPUs / DeepSpeed:   accelerate launch --config_file configs/accelerate/ddp.yaml rlagent/train_sft.py --config ...
From Python:        rlagent.SFTTrainer(config, model=..., train_dataset=...).train()   (README "Python API")

The loss is a token mean over the GLOBAL batch (all micro-batches, all processes), so the same global batch gives
the same update whatever the accumulation steps or process count.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlagent.algorithms.ppo_core import selected_cross_entropy_sum
from rlagent.common.config import (
    AT_LEAST_ONE,
    FRACTION,
    DataSourceConfig,
    ModelConfig,
    Range,
    config_to_dict,
    doc,
    env_spec_errors,
    parse_args,
    run_main,
)
from rlagent.common.data import (
    DataError,
    TokenizedConversation,
    TokenizedDataset,
    collate_right_padded,
    iter_conversations,
    tokenized_dataset,
)
from rlagent.common.modeling import disable_dropout, load_causal_lm, load_tokenizer, make_trainable
from rlagent.training.checkpoints import check_resume_from, save_final
from rlagent.training.fit import SupervisedConfig, SupervisedTask, fit
from rlagent.training.output_head import CHUNK_TOKENS, hidden_before, output_head
from rlagent.training.setup import check_batch_shape, make_accelerator, set_seed


@dataclass
class SFTDataConfig(DataSourceConfig):
    """Where demonstrations come from."""

    path: str | None = doc(
        "Conversations {'messages': [...], 'tools': [...]}: a JSONL/Parquet/JSON file, save_to_disk folder or Hub id.",
        None,
    )
    episodes: int = doc("Expert episodes per environment (source: expert).", 400, range=AT_LEAST_ONE)
    noise: float = doc(
        "Expert noise: probability of a deliberate mistake per episode (source: expert).", 0.0, range=FRACTION
    )
    only_successful: bool = doc("Keep only expert episodes that succeeded.", False)
    difficulty: int | None = doc(
        "Task difficulty level for expert episodes (null = the environment's mix).", None, range=AT_LEAST_ONE
    )
    noise_modes: list[str] = doc(
        "Expert failure modes noise picks from (guess, malformed, loop, typo, one_hop).",
        factory=lambda: ["guess", "malformed", "loop", "typo", "one_hop"],
    )
    eval_fraction: float = doc(
        "Fraction of conversations held out for eval loss.", 0.05, range=Range(0, 1, high_inclusive=False)
    )


@dataclass
class SFTConfig(SupervisedConfig):
    """Supervised fine-tuning on conversations with tool calls (assistant-only loss)."""

    output_dir: str = doc("Where metrics, checkpoints and final/ go.", "runs/sft")
    model: ModelConfig = doc("Model to fine-tune.", factory=ModelConfig)
    data: SFTDataConfig = doc("Demonstrations.", factory=SFTDataConfig)
    max_length: int = doc(
        "Longest conversation in tokens; longer ones are truncated and counted.", 768, range=AT_LEAST_ONE
    )


def load_conversations(cfg: SFTConfig, key: str = "data.path") -> tuple[Iterable[dict], str]:
    """Demonstrations from a data file (streamed record by record; `key` data.eval_path: the held-out file) or from
    the scripted experts of `envs`, and a key that changes whenever the input does (for the tokenised-data cache)."""
    if cfg.data.source == "file":
        path = cfg.data.checked_path(key)
        if not os.path.exists(path):  # a Hub dataset id: the cache key is the id
            return iter_conversations(path), f"hub|{path}"
        stat = os.stat(path)
        return iter_conversations(path), f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    from envs.experts import generate_demonstrations

    rows = []
    for i, env_id in enumerate(cfg.data.env_ids):
        with env_spec_errors(f"data.env_ids[{i}]"):
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
    """Tokenise into an Arrow table (datasets), split train/eval deterministically (or read data.eval_path), count
    truncations (never drop silently). Each process writes its own tables under OUTPUT_DIR/data/rankN, so processes
    never race."""
    rows, key = load_conversations(cfg)
    cache_dir = os.path.join(cfg.output_dir, "data", f"rank{rank}")
    tokenized = tokenized_dataset(rows, tokenizer, cfg.max_length, cache_dir, key)
    order = list(range(len(tokenized)))
    random.Random(cfg.seed).shuffle(order)
    if cfg.data.source == "file" and cfg.data.eval_path:
        eval_rows, eval_key = load_conversations(cfg, "data.eval_path")
        eval_dir = os.path.join(cfg.output_dir, "data", f"rank{rank}-eval")
        eval_set, train_set = tokenized_dataset(eval_rows, tokenizer, cfg.max_length, eval_dir, eval_key), tokenized
    else:
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


def to_device(rows: list[TokenizedConversation], pad_id: int, device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in collate_right_padded(rows, pad_id).items()}


def token_loss_sum(model, batch: dict, selective: bool = True) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over assistant tokens (logits at t score token t+1) and the token count.

    `selective` (model.selective_head): the output head runs on assistant positions only, in chunks
    (rlagent.training.output_head); otherwise, or when the head does not allow it, on full logits.
    """
    labels = batch["labels"]
    count = int((labels[:, 1:] != -100).sum())
    head = output_head(model) if selective else None
    if head is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        flat_logits, flat_labels = logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten()
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum"), count
    hidden, (rows, columns) = hidden_before(model, batch["input_ids"], batch["attention_mask"], labels != -100)
    return selected_cross_entropy_sum(hidden, head.weight, head.bias, labels[rows, columns], CHUNK_TOKENS), count


def count_targets(rows: list[TokenizedConversation]) -> int:
    """Assistant tokens that are prediction targets (the first token of a sequence never is)."""
    return sum(sum(r.assistant_mask[1:]) for r in rows)


def micro_batch_loss(
    model, rows: list[TokenizedConversation], pad_id: int, device, selective: bool = True
) -> tuple[torch.Tensor, dict]:
    """fit()'s loss_sums: the summed token loss, which is also the one metric summed (train/loss)."""
    loss, _ = token_loss_sum(model, to_device(rows, pad_id, device), selective)
    return loss, {"loss": loss}


@torch.no_grad()
def evaluate(model, rows: list, pad_id: int, micro: int, device, selective: bool = True) -> dict:
    """Held-out token-mean loss (eval/loss)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), micro):
        loss, n = token_loss_sum(model, to_device(rows[i : i + micro], pad_id, device), selective)
        total, count = total + float(loss), count + n
    model.train()
    return {"eval/loss": total / max(count, 1)}


def conversation_length(row: TokenizedConversation) -> int:
    return len(row.input_ids)


def sft_task(cfg, train_set, eval_set, data_stats: dict, pad_id: int, device, name: str = "sft") -> SupervisedTask:
    """fit()'s task for imitation of conversations (assistant-only loss); also distillation's sequence mode. The loss
    is a token mean over the global batch: summed token losses over its assistant-token count."""
    selective, micro = cfg.model.selective_head, cfg.optim.micro_batch_size
    # Similar lengths share a micro-batch (training and eval): the same loss sums with less padding to compute.
    eval_rows = sorted((eval_set[i] for i in range(len(eval_set))), key=conversation_length)
    return SupervisedTask(
        name=name,
        describe=f"{data_stats['data/train']} train and {data_stats['data/eval']} eval conversations, "
        f"{data_stats['data/truncated']} truncated to {cfg.max_length} tokens",
        train_set=train_set,
        eval_set=eval_set,
        loss_sums=lambda model, rows: micro_batch_loss(model, rows, pad_id, device, selective),
        units=count_targets,
        evaluate=lambda model: evaluate(model, eval_rows, pad_id, micro, device, selective),
        throughput="train/tokens_per_s",
        length=conversation_length,
        progress=lambda m: {"loss": m["train/loss"], "lr": m["train/lr"], "tok_s": round(m["train/tokens_per_s"])},
    )


CONFIG = SFTConfig  # the stage's config class (the Python API, rlagent/api.py, resolves configs with it)


def main(argv: list[str] | None = None) -> dict:
    """`rlagent sft --config FILE [key=value ...]`: the summary of `train`."""
    return train(parse_args(SFTConfig, argv, prog="rlagent sft"))


def train(cfg: SFTConfig) -> dict:
    """Run stage 1 on a resolved config (the CLI's and the Python API's SFTTrainer path); returns the summary."""
    cfg.data.resolve_source("rlagent sft")
    accelerator = make_accelerator(cfg.model.dtype)
    set_seed(cfg.seed, accelerator.process_index)
    check_batch_shape(cfg.optim, accelerator.num_processes, "rlagent sft")  # fail before the data is built
    check_resume_from(cfg.resume_from)

    # 1. Data: demonstrations -> token ids + assistant-only masks.
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    pad_id, device = tokenizer.pad_token_id, accelerator.device
    train_set, eval_set, data_stats = prepare_data(cfg, tokenizer, accelerator.process_index)
    if len(train_set) < cfg.optim.batch_size:
        raise DataError(
            f"only {len(train_set)} training conversations, fewer than optim.batch_size={cfg.optim.batch_size}; "
            "add data or lower optim.batch_size"
        )

    # 2. Model (dropout off).
    model = make_trainable(load_causal_lm(cfg.model, tokenizer, cfg.seed), cfg.model)
    disable_dropout(model)

    # 3. The shared supervised loop (optimiser, resume, micro-batches, eval, early stopping, checkpoints, tracking).
    run = fit(cfg, accelerator, model, sft_task(cfg, train_set, eval_set, data_stats, pad_id, device))

    # 4. Final model in Hugging Face format, and the summary.
    save_final(accelerator, run.model, tokenizer, os.path.join(cfg.output_dir, "final"))
    summary = {**data_stats, **run.summary(), "final/eval_loss": run.metrics.get("eval/loss")}
    run.tracker.finish(summary)
    return summary


if __name__ == "__main__":
    run_main(main, prog="rlagent sft")
