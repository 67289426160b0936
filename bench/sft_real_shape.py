"""SFT at a real vocabulary (SmolLM2-135M-Instruct, 49,152 tokens): rlagent's training step against a plain
Hugging Face step, in lock step, with each side's peak memory.

    .venv/bin/python bench/sft_real_shape.py              # full SmolLM2 (30 layers), micro 8 x 400, 3 measured steps
    .venv/bin/python bench/sft_real_shape.py --quick      # a 2-layer copy (real vocabulary and hidden size), 1 step
    .venv/bin/python bench/sft_real_shape.py --model DIR  # any local causal LM folder

Sides (each its own process, same data, same micro-batches, AdamW, fp32 on CPU):
  hf            plain HF step: model(input_ids, labels=...) -> full B x T x V logits and HF's cross-entropy
  rlagent       rlagent.train_sft.token_loss_sum (model.selective_head on: the head only at assistant tokens)
  rlagent-lora  the same with LoRA adapters (r 16, the stage's default target modules)
  lora-full     LoRA with model.selective_head=false: what the selective head saves under LoRA
  lora-ckpt     rlagent-lora with model.gradient_checkpointing=true: layers recomputed in the backward pass
  trl-sft       TRL's SFTTrainer (assistant-only loss from an assistant_masks column, its own chunked LM-head loss),
                full fine-tuning, fed the same token ids and masks; a TrainerCallback is its lock-step gate
One optimizer step = `--batch` conversations (Calculator scripted-expert demonstrations rendered with the SmolLM2
template that rlagent.common.chat_templates.prepare_tokenizer gives it), in micro-batches of `--micro`, each
right-padded to
`--width` tokens so every side sees the same B x T shape. Workers are stepped one at a time, alternating
(bench/lockstep.py), so a busy machine slows every side alike; peak RSS (VmHWM) is each process's own, after
set-up (model, data, optimiser) and after the measured steps.
Every side's process stays alive for the whole run: on the full model each needs ~10 GiB, so on a small machine
pass fewer --sides (the 23 GiB development machine cannot hold three).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from lockstep import Gate, Lockstep, round_order
from report import banner, emit, fmt, peak_rss_mib, uptime

BENCH = "sft_real_shape"
SIDES = ("hf", "rlagent", "rlagent-lora", "lora-full", "lora-ckpt", "trl-sft")
LORA_SIDES = ("rlagent-lora", "lora-full", "lora-ckpt")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2-layer copy of SmolLM2, 1 measured step")
    parser.add_argument("--model", help="local model folder (default: SmolLM2-135M-Instruct from the rlagent cache)")
    parser.add_argument("--layers", type=int, default=0, help="keep only this many decoder layers (0 = all)")
    parser.add_argument("--batch", type=int, default=16, help="conversations per optimizer step")
    parser.add_argument("--micro", type=int, default=8, help="conversations per forward pass")
    parser.add_argument("--width", type=int, default=400, help="tokens per row (conversations padded to it)")
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured optimizer steps per side")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of: " + ", ".join(SIDES))
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.steps = args.layers or 2, 1
    return args


def sft_config(args, side: str):
    from rlagent.common.config import load_config
    from rlagent.train_sft import SFTConfig

    overrides = [
        f"output_dir={args.folder}/{side}",
        f"model.name_or_path={args.folder}/model",
        "model.dtype=float32",
        "data.env_ids=[rlagent/Calculator-v0]",
        f"data.episodes={args.batch * (args.warmup + args.steps)}",
        "data.eval_fraction=0.0",
        f"max_length={args.width}",
        f"model.lora.enabled={side in LORA_SIDES}",
        f"model.selective_head={side != 'lora-full'}",
        f"model.gradient_checkpointing={side == 'lora-ckpt'}",
    ]
    return load_config(SFTConfig, None, overrides)


def micro_batches(args, cfg, tokenizer) -> list[list[dict]]:
    """Steps of micro-batches, every row right-padded to --width (the same tensors on every side)."""
    import torch

    from rlagent.common.data import collate_right_padded
    from rlagent.train_sft import prepare_data

    train_set, _, _ = prepare_data(cfg, tokenizer)
    rows = [train_set[i] for i in range(len(train_set))]
    steps = []
    for start in range(0, args.batch * (args.warmup + args.steps), args.batch):
        step = []
        for m in range(start, start + args.batch, args.micro):
            batch = collate_right_padded(rows[m : m + args.micro], tokenizer.pad_token_id)
            pad = args.width - batch["input_ids"].shape[1]
            fills = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "labels": -100}
            step.append({k: torch.nn.functional.pad(v, (0, pad), value=fills[k]) for k, v in batch.items()})
        steps.append(step)
    return steps


def train_step(side: str, model, optimizer, step: list[dict]) -> dict:
    """One optimizer step over the micro-batches: the loss is the token mean over the whole step on every side."""
    from rlagent.train_sft import token_loss_sum

    targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in step)
    for batch in step:
        if side == "hf":
            # HF's loss is a mean over this micro-batch's targets: rescale to the step's token mean.
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            loss = out.loss * int((batch["labels"][:, 1:] != -100).sum()) / targets
        else:
            summed, _ = token_loss_sum(model, batch, selective=side != "lora-full")
            loss = summed / targets
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in step)
    return {"tokens": tokens, "padded_tokens": sum(b["input_ids"].numel() for b in step), "targets": targets}


def run_worker(args) -> None:
    import torch

    from rlagent.common.modeling import disable_dropout, load_causal_lm, load_tokenizer, make_trainable

    gate = Gate()
    t0 = time.perf_counter()
    cfg = sft_config(args, args.worker)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    steps = micro_batches(args, cfg, tokenizer)
    if args.worker == "trl-sft":
        run_trl_worker(args, cfg, tokenizer, steps, gate, t0)
        return
    model = make_trainable(load_causal_lm(cfg.model, tokenizer, cfg.seed), cfg.model)
    disable_dropout(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    gate.ready(setup_seconds=time.perf_counter() - t0, setup_rss_mib=peak_rss_mib())
    for step in steps:
        report = train_step(args.worker, model, optimizer, step)
        gate.done(**report, peak_rss_mib=peak_rss_mib())


def run_trl_worker(args, cfg, tokenizer, steps: list[list[dict]], gate, t0: float) -> None:
    """TRL 1.16 SFTTrainer on the rows of `steps` (ids and assistant masks, unpadded), micro `--micro`, accumulation
    to `--batch`, padded to `--width` by its collator; the gate opens before the first step and after every step."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = []
    for step in steps:
        for batch in step:
            for ids, attention, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
                n = int(attention.sum())
                rows.append({"input_ids": ids[:n].tolist(), "assistant_masks": (labels[:n] != -100).long().tolist()})
    # TRL builds the labels from an `assistant_masks` column itself (its assistant-only loss; assistant_only_loss=True
    # only tells it to compute that column from raw conversations, which would re-tokenise). rlagent's label at t is
    # the token at t (the loss shifts), the same convention as TRL's masks. TRL's SFTConfig turns activation
    # checkpointing on by default: off here, like the rlagent full fine-tuning side it is compared with.
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=torch.float32, local_files_only=True)
    config = SFTConfig(
        output_dir=os.path.join(args.folder, "trl-sft"), per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.batch // args.micro, max_steps=args.warmup + args.steps, learning_rate=1e-5,
        lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0, activation_checkpointing=False,
        max_length=args.width, pad_to_multiple_of=args.width, bf16=False, fp16=False, use_cpu=True,
        save_strategy="no", report_to=[], logging_steps=10**6, dataloader_num_workers=0, seed=0,
        disable_tqdm=True, model_init_kwargs=None,
    )  # fmt: skip
    counts = {"tokens": 0, "padded_tokens": 0, "targets": 0}

    class GateCallback(TrainerCallback):
        def on_train_begin(self, *unused, **kwargs):
            gate.ready(setup_seconds=time.perf_counter() - t0, setup_rss_mib=peak_rss_mib())

        def on_step_end(self, *unused, **kwargs):
            gate.done(**counts, peak_rss_mib=peak_rss_mib())
            counts.update(tokens=0, padded_tokens=0, targets=0)

    class CountingSFTTrainer(SFTTrainer):
        """Counts the micro-batches it trains on (the data loader reads one batch ahead, so not in the collator)."""

        def training_step(self, model, inputs, *rest, **kwargs):
            counts["tokens"] += int(inputs["attention_mask"].sum())
            counts["padded_tokens"] += inputs["input_ids"].numel()
            counts["targets"] += int((inputs["labels"][:, 1:] != -100).sum())
            return super().training_step(model, inputs, *rest, **kwargs)

    trainer = CountingSFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer, callbacks=[GateCallback()])  # fmt: skip
    trainer.train()


def interleave(args, folder: str, sides: list[str]) -> dict[str, list[dict]]:
    measured: dict[str, list[dict]] = {side: [] for side in sides}
    flags = [f"--{k}={getattr(args, k)}" for k in ("batch", "micro", "width", "steps", "warmup")]
    with Lockstep() as run:
        for side in sides:
            cmd = [sys.executable, os.path.abspath(__file__), f"--worker={side}", f"--folder={folder}", *flags]
            ready = run.start(side, cmd, None, os.path.join(folder, f"{side}.log"))
            print(
                f"   {side}: ready after {ready['setup_seconds']:.1f} s, peak RSS {ready['setup_rss_mib']:.0f} MiB",
                flush=True,
            )
            measured[side].append(ready)
        for round_index in range(args.warmup + args.steps):
            for side in round_order(sides, round_index):
                report = run.step(side)
                measured[side].append(report)
                print(
                    f"   round {round_index + 1} {side:>12}: {report['seconds']:6.2f} s, "
                    f"{report['tokens'] / report['seconds']:6.1f} tokens/s, peak RSS {report['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
        run.stop_all()
    return measured


def summarise(args, measured: dict[str, list[dict]]) -> dict:
    results = {}
    for side, reports in measured.items():
        timed = reports[1 + args.warmup :]
        results[side] = {
            "tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed),
            "setup_rss_mib": reports[0]["setup_rss_mib"],
            "peak_rss_mib": reports[-1]["peak_rss_mib"],
            "target_fraction": timed[0]["targets"] / timed[0]["tokens"],
        }
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    sides = [s for s in args.sides.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="bench_sft_real_") as folder:
        from fixtures import real_model_folder

        model_dir = real_model_folder(os.path.join(folder, "model"), args.model, args.layers)
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
        shape = f"vocab {config['vocab_size']}, hidden {config['hidden_size']}, {config['num_hidden_layers']} layers"
        banner(f"{BENCH}: {shape}; steps of {args.batch} conversations, micro {args.micro} x {args.width} tokens")
        results = summarise(args, interleave(args, folder, sides))
    for side, r in results.items():
        ratio = r["tokens_per_s"] / results["hf"]["tokens_per_s"] if "hf" in results else None
        print(
            f"   {side:>12}: {r['tokens_per_s']:7.1f} tokens/s ({fmt(ratio)}x hf), peak RSS {r['peak_rss_mib']:6.0f} "
            f"MiB (after set-up {r['setup_rss_mib']:.0f}), loss on {100 * r['target_fraction']:.0f} % of tokens",
            flush=True,
        )
    emit(BENCH, **results, shape=shape, batch=args.batch, micro=args.micro, width=args.width, steps=args.steps)
    print(f"   uptime: {uptime()}", flush=True)


if __name__ == "__main__":
    main()
