"""Peak memory per process: SFT on one process against FSDP full shard on two CPU processes (gloo).

    .venv/bin/python bench/memory_sharded.py            # SmolLM2-135M-Instruct, LoRA and full, 2 SFT steps each
    .venv/bin/python bench/memory_sharded.py --quick    # the tiny model (hidden 256, 4 layers): checks the plumbing

Each variant runs `rlagent sft` in fresh processes (`accelerate launch --config_file configs/accelerate/fsdp.yaml
--num_processes 2 --mixed_precision no` for the sharded one); every process prints its own peak resident set size
(VmHWM). Sharding splits weights, gradients and AdamW moments across the processes; activations and the
process's own libraries are not split, so the saving per process is below one half.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from report import banner, emit, peak_rss_mib, uptime

BENCH = "memory_sharded"
PREFIX = "@@memory "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDP = ["--config_file", os.path.join(ROOT, "configs", "accelerate", "fsdp.yaml"), "--num_processes", "2"]


def sft_argv(args, out: str, lora: bool) -> list[str]:
    model = [
        "model.name_or_path=tiny",
        "model.tiny.hidden_size=256",
        "model.tiny.num_layers=4",
        "model.tiny.num_heads=4",
    ]
    argv = [
        f"output_dir={out}",
        *(model if args.quick else ["model.name_or_path=smollm2-135m-instruct"]),
        "model.dtype=float32",
        "data.env_ids=[rlagent/Calculator-v0]",
        "data.episodes=32",
        "data.eval_fraction=0.0",
        f"optim.batch_size={args.batch}",
        f"optim.micro_batch_size={args.batch // 2}",
        "max_length=512",
        "eval_every=0",
        "save_every=0",
        "progress=false",
        f"max_steps={args.steps}",
    ]
    return argv + (["model.lora.enabled=true", "model.lora.r=16"] if lora else [])


def run_worker(argv: list[str]) -> None:
    """One process of a variant: train, then print this process's rank and peak memory."""
    from rlagent import train_sft

    train_sft.main(argv)
    rank = int(os.environ.get("RANK", "0"))
    print(PREFIX + json.dumps({"rank": rank, "peak_rss_mib": peak_rss_mib()}), flush=True)


def measure(args, folder: str, sharded: bool, lora: bool) -> list[float]:
    """Peak RSS (MiB) of each process of one variant, by rank."""
    name = f"{'fsdp2' if sharded else 'one'}-{'lora' if lora else 'full'}"
    argv = sft_argv(args, os.path.join(folder, name), lora)
    me = [os.path.abspath(__file__), "--worker", *argv]
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", *FSDP, "--mixed_precision", "no", *me] if sharded else [sys.executable, *me]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    reports = [json.loads(line[len(PREFIX) :]) for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    if done.returncode != 0 or len(reports) != (2 if sharded else 1):
        raise RuntimeError(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    peaks = [r["peak_rss_mib"] for r in sorted(reports, key=lambda r: r["rank"])]
    print(f"   {name}: peak RSS per process {', '.join(f'{p:.0f}' for p in peaks)} MiB", flush=True)
    return peaks


def main(argv=None) -> None:
    if argv is None and "--worker" in sys.argv:
        run_worker(sys.argv[sys.argv.index("--worker") + 1 :])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model instead of SmolLM2")
    parser.add_argument("--steps", type=int, default=2, help="SFT optimizer steps per variant")
    parser.add_argument("--batch", type=int, default=4, help="conversations per step (2 micro-batches)")
    args = parser.parse_args(argv)
    banner("peak RSS per process: 1 process vs FSDP full shard on 2")
    result = {"model": "tiny (256 x 4)" if args.quick else "smollm2-135m-instruct", "steps": args.steps}
    with tempfile.TemporaryDirectory() as folder:
        for lora in (False, True):
            kind = "lora" if lora else "full"
            result[f"one_{kind}"] = measure(args, folder, sharded=False, lora=lora)[0]
            result[f"fsdp2_{kind}"] = measure(args, folder, sharded=True, lora=lora)
    emit(BENCH, **result, batch=args.batch, uptime=uptime())


if __name__ == "__main__":
    main()
