"""Stage 2 — reward model: a scalar head on a causal backbone, trained on preference pairs with a Bradley–Terry loss.

One process:        rlagent reward --config configs/quickstart/reward.yaml [--pairs-out pairs.jsonl]
                    (same as: python rlagent/train_reward.py ...)
Several processes:  accelerate launch --multi_gpu --num_processes 2 rlagent/train_reward.py --config ... (CPU: gloo)
From Python:        rlagent.RewardTrainer(config, model=..., train_dataset=pairs).train()   (README "Python API")

Pairs come from a TRL-style JSONL file (data.path) or from the environments' scripted experts (data.source: expert),
enlarged with rule-built negatives (reward_models/pairs.py). optim.batch_size counts PAIRS per optimizer step; the
loss is a mean over the global batch of pairs, so it does not depend on accumulation steps or process count.
After training, the mean and std of scores on a reference sample become a gain and bias stored in
final/reward_normalization.json, so `reward_models.load(OUTPUT_DIR + "/final").score(...)` has mean 0 and std 1.

Metrics: train/loss, train/accuracy (chosen scored above rejected), train/margin (mean r_c − r_r), eval/loss,
eval/accuracy and eval/margin on held-out pairs (the file's or the experts' pairs, never rule-built ones).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass

import torch

from reward_models.losses import bradley_terry_loss
from reward_models.modeling import load_reward_backbone
from reward_models.pairs import RULES, pair_conversations, read_pairs, rule_negative_pairs
from reward_models.scoring import (
    NORMALIZATION_FILE,
    fit_normalization,
    forward_scores,
    raw_scores,
    render_many_for_reward,
)
from rlagent.common.config import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    DataSourceConfig,
    ModelConfig,
    Range,
    doc,
    env_spec_errors,
    parse_args,
    run_main,
)
from rlagent.common.data import DataError, write_jsonl
from rlagent.common.modeling import disable_dropout, load_tokenizer, make_trainable
from rlagent.training.checkpoints import check_resume_from, save_final
from rlagent.training.fit import SupervisedConfig, SupervisedTask, fit
from rlagent.training.setup import check_batch_shape, make_accelerator, set_seed


@dataclass
class RewardDataConfig(DataSourceConfig):
    """Where preference pairs come from."""

    path: str | None = doc(
        "TRL-style pairs (prompt + chosen/rejected, or whole conversations): a file, save_to_disk folder or Hub id.",
        None,
    )
    pairs: int = doc("Expert pairs per environment (source: expert).", 400, range=AT_LEAST_ONE)
    noise: float = doc("Expert noise for the failed (rejected) episodes (source: expert).", 0.5, range=FRACTION)
    rule_negatives: bool = doc("Add rule-built negatives from each training pair's chosen conversation.", True)
    rule_negatives_per_pair: int = doc(
        "At most this many rule-built negatives per pair (0 = every rule that applies).", 1
    )
    rule_kinds: list[str] = doc(
        "Rules to draw from (reward_models.pairs.RULES); a rule named twice is drawn twice as often.",
        factory=lambda: list(RULES),
    )
    eval_fraction: float = doc(
        "Fraction of pairs held out for eval accuracy and margin.", 0.1, range=Range(0, 1, high_inclusive=False)
    )


@dataclass
class NormalizeConfig:
    """Score normalisation stored with the final model."""

    reference_samples: int = doc(
        "Conversations (chosen and rejected, held-out first) to measure mean/std on.", 512, range=AT_LEAST_ONE
    )
    clip: float | None = doc("Clip normalised scores to [-clip, clip]; null = no clipping.", None, range=POSITIVE)


@dataclass
class RewardConfig(SupervisedConfig):
    """Reward model from preference pairs (Bradley–Terry). optim.batch_size and micro_batch_size count pairs."""

    output_dir: str = doc("Where metrics, checkpoints and final/ go.", "runs/reward")
    model: ModelConfig = doc(
        "Backbone: 'tiny', a causal-LM folder (fresh head) or a reward-model folder.", factory=ModelConfig
    )
    data: RewardDataConfig = doc("Preference pairs.", factory=RewardDataConfig)
    margin: float = doc(
        "Bradley–Terry margin: chosen must win by this much (0 = off; a pair's 'margin' wins).",
        0.0,
        range=NON_NEGATIVE,
    )
    center_rewards_coef: float = doc(
        "Weight of mean (r_c + r_r)² keeping scores centred (TRL uses 0.01; 0 = off).", 0.01, range=NON_NEGATIVE
    )
    max_length: int = doc(
        "Longest conversation in tokens; longer ones keep their last max_length tokens.", 768, range=AT_LEAST_ONE
    )
    normalize: NormalizeConfig = doc("Score normalisation.", factory=NormalizeConfig)
    pairs_out: str | None = doc("Write the pairs used (train + eval, rule-built included) to this JSONL.", None)


@dataclass
class TokenizedPair:
    chosen: list[int]
    rejected: list[int]
    margin: float


def load_pairs(cfg: RewardConfig) -> list[dict]:
    """Pairs from a data file or from the scripted experts of `envs`."""
    if cfg.data.source == "file":
        return read_pairs(cfg.data.checked_path())
    from envs.experts import generate_preference_pairs

    rows = []
    for i, env_id in enumerate(cfg.data.env_ids):
        with env_spec_errors(f"data.env_ids[{i}]"):
            pairs = generate_preference_pairs(env_id, cfg.data.pairs, noise=cfg.data.noise, seed=cfg.seed * 1000 + i)
        rows += [{"prompt": [], "tools": None, **p, "kind": f"expert:{env_id}"} for p in pairs]
    return rows


def tokenize_pairs(pairs: list[dict], tokenizer, cfg: RewardConfig, stats: dict, prefix: str) -> list[TokenizedPair]:
    """Render both sides; longer than max_length = keep the END (where the score is read) and count it; pairs
    identical once rendered are dropped and counted."""
    conversations = [conv for pair in pairs for conv in pair_conversations(pair)]  # chosen, rejected, chosen, ...
    tools = [pair.get("tools") for pair in pairs for _side in range(2)]
    rendered = render_many_for_reward(tokenizer, conversations, tools)
    out = []
    for n, pair in enumerate(pairs):
        ids = rendered[2 * n : 2 * n + 2]
        stats[f"data/{prefix}_truncated"] += max(len(i) for i in ids) > cfg.max_length
        ids = [i[-cfg.max_length :] for i in ids]
        if ids[0] == ids[1]:
            stats[f"data/{prefix}_identical_render"] += 1
        else:
            out.append(TokenizedPair(ids[0], ids[1], pair.get("margin", cfg.margin)))
    return out


def prepare_data(cfg: RewardConfig, tokenizer) -> tuple[list, list, list, dict]:
    """Split pairs (eval first, deterministic), add rule negatives to train only, tokenise, export if asked."""
    unknown = sorted(set(cfg.data.rule_kinds) - set(RULES))
    if unknown:
        raise DataError(f"data.rule_kinds: unknown rule(s) {unknown}; known: {sorted(RULES)}")
    pairs = load_pairs(cfg)
    order = list(range(len(pairs)))
    random.Random(cfg.seed).shuffle(order)
    if cfg.data.source == "file" and cfg.data.eval_path:
        eval_pairs, train_pairs = read_pairs(cfg.data.checked_path("data.eval_path")), pairs
    else:
        n_eval = max(1, int(len(pairs) * cfg.data.eval_fraction)) if cfg.data.eval_fraction > 0 else 0
        eval_pairs, train_pairs = [pairs[i] for i in order[:n_eval]], [pairs[i] for i in order[n_eval:]]
    rule_pairs = []
    if cfg.data.rule_negatives:
        kinds, per_pair = cfg.data.rule_kinds, cfg.data.rule_negatives_per_pair or None
        rule_pairs = rule_negative_pairs(train_pairs, cfg.seed, per_pair, kinds)
        print(
            f"rlagent reward: data: {len(rule_pairs)} rule-built negative pair(s) added to {len(train_pairs)} "
            "training pairs (data.rule_negatives=true; false trains on the given pairs only)",
            flush=True,
        )
    if cfg.pairs_out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.pairs_out)), exist_ok=True)
        rows = [{**p, "split": "eval"} for p in eval_pairs] + [
            {**p, "split": "train"} for p in train_pairs + rule_pairs
        ]
        write_jsonl(cfg.pairs_out, [{k: v for k, v in row.items() if v not in (None, [])} for row in rows])
    stats = {f"data/{p}_{what}": 0 for p in ("train", "eval") for what in ("truncated", "identical_render")}
    train_set = tokenize_pairs(train_pairs + rule_pairs, tokenizer, cfg, stats, "train")
    eval_set = tokenize_pairs(eval_pairs, tokenizer, cfg, stats, "eval")
    if len(train_set) < cfg.optim.batch_size:
        raise DataError(
            f"only {len(train_set)} usable training pairs, fewer than optim.batch_size={cfg.optim.batch_size}"
        )
    stats.update(
        {
            "data/pairs": len(pairs),
            "data/rule_pairs": len(rule_pairs),
            "data/train": len(train_set),
            "data/eval": len(eval_set),
            "data/mean_tokens": sum(len(p.chosen) + len(p.rejected) for p in train_set) / (2 * len(train_set)),
        }
    )
    # Normalisation reference: both sides of held-out pairs first, then training pairs.
    reference = [ids for p in eval_set + train_set for ids in (p.chosen, p.rejected)][
        : cfg.normalize.reference_samples
    ]
    return train_set, eval_set, reference, stats


def pair_loss(model, pairs: list[TokenizedPair], pad_id: int, device, center_coef: float):
    """Bradley–Terry loss (mean over `pairs`) from ONE forward over chosen and rejected sequences together."""
    scores = forward_scores(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)
    chosen, rejected = scores[: len(pairs)], scores[len(pairs) :]
    margin = torch.tensor([p.margin for p in pairs], device=device) if any(p.margin for p in pairs) else None
    return bradley_terry_loss(chosen, rejected, margin, center_coef)


@torch.no_grad()
def evaluate(model, pairs: list[TokenizedPair], pad_id: int, micro: int, device, center_coef: float) -> dict:
    """Held-out loss, pairwise accuracy and mean margin r_c − r_r."""
    model.eval()
    chosen = raw_scores(model, [p.chosen for p in pairs], pad_id, 2 * micro, device)
    rejected = raw_scores(model, [p.rejected for p in pairs], pad_id, 2 * micro, device)
    margin = torch.tensor([p.margin for p in pairs]) if any(p.margin for p in pairs) else None
    loss, stats = bradley_terry_loss(chosen, rejected, margin, center_coef)
    model.train()
    return {"eval/loss": float(loss), "eval/accuracy": float(stats["accuracy"]), "eval/margin": float(stats["margin"])}


def pair_loss_sums(model, pairs: list[TokenizedPair], pad_id: int, device, center_coef: float):
    """fit()'s loss_sums: the micro-batch's mean loss, accuracy and margin times its pair count (sums over pairs)."""
    loss, stats = pair_loss(model, pairs, pad_id, device, center_coef)
    n = len(pairs)
    return loss * n, {"loss": loss.detach() * n, "accuracy": stats["accuracy"] * n, "margin": stats["margin"] * n}


def describe_data(stats: dict, max_length: int) -> str:
    """The data part of the start-up line."""
    truncated = stats["data/train_truncated"] + stats["data/eval_truncated"]
    dropped = stats["data/train_identical_render"] + stats["data/eval_identical_render"]
    return (
        f"{stats['data/train']} train pairs ({stats['data/rule_pairs']} rule-built) and {stats['data/eval']} eval "
        f"pairs, {truncated} truncated to {max_length} tokens, {dropped} dropped (identical once rendered)"
    )


def pop_pairs_out(argv: list[str]) -> tuple[list[str], str | None]:
    """Strip `--pairs-out FILE` (the issue's flag) from argv; it becomes the `pairs_out` override."""
    argv = list(argv)
    if "--pairs-out" not in argv:
        return argv, None
    i = argv.index("--pairs-out")
    if i + 1 >= len(argv):
        raise SystemExit("rlagent reward: error: --pairs-out needs a file path")
    path = argv[i + 1]
    del argv[i : i + 2]
    return argv, path


CONFIG = RewardConfig  # the stage's config class (the Python API, rlagent/api.py, resolves configs with it)


def main(argv: list[str] | None = None) -> dict:
    """`rlagent reward --config FILE [--pairs-out FILE] [key=value ...]`: the summary of `train`."""
    argv, pairs_out = pop_pairs_out(sys.argv[1:] if argv is None else argv)
    return train(
        parse_args(RewardConfig, argv + ([f"pairs_out={pairs_out}"] if pairs_out else []), prog="rlagent reward")
    )


def train(cfg: RewardConfig) -> dict:
    """Run stage 2 on a resolved config (the CLI's and the Python API's RewardTrainer path); returns the summary."""
    cfg.data.resolve_source("rlagent reward")
    accelerator = make_accelerator(cfg.model.dtype)
    set_seed(cfg.seed, accelerator.process_index)
    check_batch_shape(cfg.optim, accelerator.num_processes, "rlagent reward", "pairs")  # before the pairs
    check_resume_from(cfg.resume_from)
    t_start = time.time()

    # 1. Data: pairs -> rule negatives -> token ids of both sides; a reference sample for normalisation.
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    pad_id, device = tokenizer.pad_token_id, accelerator.device
    if not accelerator.is_main_process:
        cfg.pairs_out = None  # one writer
    train_set, eval_set, reference, data_stats = prepare_data(cfg, tokenizer)

    # 2. Model: scalar head N(0, 1/√(d+1)), dropout off.
    model = make_trainable(load_reward_backbone(cfg.model, tokenizer, cfg.seed), cfg.model, task_type="SEQ_CLS")
    disable_dropout(model)

    # 3. The shared supervised loop (optimiser, resume, micro-batches, eval, early stopping, checkpoints, tracking).
    # The loss is a mean over the global batch of pairs; micro-batches of similar length waste little on padding
    # (about 2x faster at micro_batch_size 4).
    micro, coef = cfg.optim.micro_batch_size, cfg.center_rewards_coef
    task = SupervisedTask(
        name="reward",
        describe=describe_data(data_stats, cfg.max_length),
        train_set=train_set,
        eval_set=eval_set,
        loss_sums=lambda model, pairs: pair_loss_sums(model, pairs, pad_id, device, coef),
        units=len,
        evaluate=lambda model: evaluate(model, eval_set, pad_id, micro, device, coef),
        throughput="train/pairs_per_s",
        progress=lambda m: {
            "loss": m["train/loss"],
            "acc": m["train/accuracy"],
            "eval_acc": m.get("eval/accuracy", float("nan")),
        },
        length=lambda pair: max(len(pair.chosen), len(pair.rejected)),
    )
    run = fit(cfg, accelerator, model, task)

    # 4. Normalisation on the reference sample, then final/ (LoRA merged, so it is a plain HF reward model).
    final_model = accelerator.unwrap_model(run.model)
    if hasattr(final_model, "merge_and_unload"):
        final_model = final_model.merge_and_unload()
    final_model.eval()
    norm = fit_normalization(raw_scores(final_model, reference, pad_id, 2 * micro, device), cfg.normalize.clip)
    extra = {NORMALIZATION_FILE: json.dumps(norm, indent=2)}
    save_final(accelerator, final_model, tokenizer, os.path.join(cfg.output_dir, "final"), extra_files=extra)
    summary = {
        **data_stats,
        **{key: run.metrics.get(key) for key in ("eval/accuracy", "eval/margin", "eval/loss")},
        **run.summary(),
        "normalization/mean": norm["mean"],
        "normalization/std": norm["std"],
        "seconds": time.time() - t_start,
    }
    run.tracker.finish(summary)
    return summary


if __name__ == "__main__":
    run_main(main, prog="rlagent reward")
