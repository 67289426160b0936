"""Peak memory of full fine-tuning against LoRA: a few `rlagent sft` steps on a bigger tiny model.

    .venv/bin/python bench/memory_lora_vs_full.py            # ~3-5 min: hidden 512, 8 layers, 4 optimizer steps
    .venv/bin/python bench/memory_lora_vs_full.py --quick    # ~1 min: hidden 256, 4 layers, 2 steps

Each variant runs `rlagent sft` (rlagent.train_sft.main) in a fresh process on the same scripted-expert Calculator
demonstrations and reports that process's peak resident set size (VmHWM; on a GPU also
torch.cuda.max_memory_allocated). A third process runs the same command with max_steps=0 (data, model and optimiser
built, no step taken): subtracting its peak gives what training itself adds — gradients, AdamW moments and
activations — which is where full fine-tuning and LoRA differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from report import banner, emit, peak_rss_mib, uptime

BENCH = "memory_lora_vs_full"
PREFIX = "@@memory "
VARIANTS = ("baseline", "full", "lora")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, 2 steps")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per variant")
    parser.add_argument("--batch", type=int, default=4, help="conversations per step (one micro-batch)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.steps = 256, 4, 2
    return args


def sft_argv(args, variant: str) -> list[str]:
    """The `rlagent sft` overrides shared by all variants, plus what makes each one different."""
    argv = [
        f"output_dir={args.out}",
        "seed=0",
        "report_to=[jsonl]",
        "model.name_or_path=tiny",
        "model.dtype=float32",
        f"model.tiny.hidden_size={args.hidden}",
        f"model.tiny.num_layers={args.layers}",
        f"model.tiny.num_heads={max(1, args.hidden // 64)}",
        f"model.tiny.intermediate_size={args.hidden * 11 // 4}",
        "data.env_ids=[rlagent/Calculator-v0]",
        "data.episodes=64",
        "data.eval_fraction=0.0",
        f"optim.batch_size={args.batch}",
        f"optim.micro_batch_size={args.batch}",
        "optim.lr=1.0e-4",
        "max_length=512",
        "eval_every=0",
        "save_every=0",
        "log_every=1",
        "progress=false",
        f"max_steps={0 if variant == 'baseline' else args.steps}",
    ]
    if variant == "lora":
        argv += ["model.lora.enabled=true", f"model.lora.r={args.lora_r}", f"model.lora.alpha={2 * args.lora_r}"]
    return argv


def run_worker(args) -> None:
    """One variant in this process; prints its peak memory and parameter counts."""
    import torch

    from rlagent import train_sft

    t0 = time.perf_counter()
    summary = train_sft.main(sft_argv(args, args.worker))
    seconds = time.perf_counter() - t0
    peak = {"peak_rss_mib": peak_rss_mib()}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    tokens_per_s = None
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        rates = [r["train/tokens_per_s"] for r in rows[1:] if "train/tokens_per_s" in r]  # step 1 is warm-up
        tokens_per_s = sum(rates) / len(rates) if rates else None
    print(
        PREFIX
        + json.dumps(
            {
                **peak,
                "seconds": seconds,
                "trainable": summary.get("parameters/trainable"),
                "total": summary.get("parameters/total"),
                "tokens_per_s": tokens_per_s,
            }
        ),
        flush=True,
    )


def measure(args, variant: str, folder: str) -> dict:
    """Run one variant in a fresh process and parse its report."""
    out = os.path.join(folder, variant)
    flags = [f"--hidden={args.hidden}", f"--layers={args.layers}", f"--steps={args.steps}", f"--batch={args.batch}"]
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={variant}", f"--out={out}", f"--lora-r={args.lora_r}"]
    done = subprocess.run(cmd + flags, capture_output=True, text=True)
    reports = [json.loads(line[len(PREFIX) :]) for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    if done.returncode != 0 or not reports:
        raise RuntimeError(f"{variant} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return reports[0]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    banner(f"{BENCH}: tiny Llama hidden {args.hidden}, {args.layers} layers, {args.steps} SFT steps of {args.batch}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as folder:
        for variant in VARIANTS:
            results[variant] = measure(args, variant, folder)
            r = results[variant]
            print(
                f"   {variant:<9} peak RSS {r['peak_rss_mib']:8.1f} MiB, trainable {r['trainable']:,} of "
                f"{r['total']:,} parameters, {r['seconds']:.1f} s",
                flush=True,
            )
    base = results["baseline"]["peak_rss_mib"]
    for variant in ("full", "lora"):
        results[variant]["training_mib"] = results[variant]["peak_rss_mib"] - base
        # Not measured: what fp32 gradients + two AdamW moments of the trainable parameters need, for reading the gap.
        results[variant]["grad_and_adam_mib"] = results[variant]["trainable"] * 4 * 3 / 2**20
    ratio = results["full"]["training_mib"] / max(results["lora"]["training_mib"], 1e-9)
    print(
        f"   training adds {results['full']['training_mib']:.1f} MiB (full) vs {results['lora']['training_mib']:.1f} "
        f"MiB (LoRA r={args.lora_r}) over the no-step baseline: {ratio:.1f}x; peak "
        f"{results['full']['peak_rss_mib']:.0f} vs {results['lora']['peak_rss_mib']:.0f} MiB\n"
        f"   (for reference, fp32 gradients + AdamW moments of the trainable parameters: "
        f"{results['full']['grad_and_adam_mib']:.0f} MiB full, {results['lora']['grad_and_adam_mib']:.0f} MiB LoRA)"
    )
    emit(
        BENCH,
        **results,
        training_ratio=ratio,
        hidden=args.hidden,
        layers=args.layers,
        steps=args.steps,
        batch=args.batch,
        lora_r=args.lora_r,
        uptime=uptime(),
    )


if __name__ == "__main__":
    main()
