"""How much do the tiny quickstart's results move with the CPU's floating-point kernels and the seed?

    python bench/quickstart_spread.py                                   # 3 kernel settings x 3 seeds, SFT + eval
    python bench/quickstart_spread.py --settings default,avx512 --seeds 0 --steps 500 --episodes 100
    python bench/quickstart_spread.py --full                            # the whole `rlagent quickstart` per cell
    python bench/quickstart_spread.py --quick                           # smoke sizes (numbers mean little)
    python bench/quickstart_spread.py --jobs 2                          # two cells at a time, one thread each

A second CPU is not needed to see what another CPU would do: PyTorch picks its vectorised kernels by
ATEN_CPU_CAPABILITY (default / avx2 / avx512), oneDNN (the matmuls) by ONEDNN_MAX_CPU_ISA, and the thread count
changes the order of reductions. Each setting rounds differently, as a different CPU does. For every setting x seed
cell this runs, each in a fresh process under that setting's environment variables:
1. `rlagent sft --config configs/quickstart/sft.yaml seed=S` (stage 1 of the quickstart), recording the eval loss at
   every eval step;
2. `rlagent eval` of its final/ on both environments, greedy, --episodes test-split episodes (the same episodes in
   every cell: --eval-seed), or, with --full, `rlagent quickstart --seed S` and its table's SFT/PPO greedy rows.
Prints one line per cell and a RESULT line with the mean, min and max of each number over the cells. Numbers only,
no assertions. Cells run one after another with the threads the quickstart itself would use (the thread count is
part of the rounding; on 2 CPU cores an idle SFT stage takes ~7 minutes), or --jobs N at a time with one thread each
(OMP_NUM_THREADS=1 on top of each setting: the rounding then differs from a multi-thread run's as another CPU's
would). Evaluation is cheap next to training (500 episodes per environment: seconds), so the default is the
quickstart's own 500 episodes, a 95 % interval of about +-4 points per cell.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from report import RESULT_PREFIX, banner, uptime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_CONFIG = os.path.join(REPO, "configs", "quickstart", "sft.yaml")
ENV_IDS = ("rlagent/Calculator-v0", "rlagent/KBSearch-v0")
# Environment of each kernel setting. A setting above what the CPU supports falls back to what it has (PyTorch and
# oneDNN both clamp), so on an older CPU two names can mean the same kernels: the banner prints the CPU.
SETTINGS = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "1thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},  # with --jobs > 1 every cell is one-thread
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="default,avx2,avx512", help=f"Comma list of {', '.join(SETTINGS)}.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma list of seeds.")
    parser.add_argument("--steps", type=int, default=None, help="SFT max_steps (default: the config's).")
    parser.add_argument("--episodes", type=int, default=500, help="Held-out episodes per env per cell (0: none).")
    parser.add_argument("--eval-seed", type=int, default=10_000, help="Episode i of the eval uses seed EVAL_SEED+i.")
    parser.add_argument("--full", action="store_true", help="Run the whole quickstart (SFT, reward, PPO) per cell.")
    parser.add_argument("--out", default=None, help="Where the runs go (default: a temporary folder).")
    parser.add_argument("--jobs", type=int, default=1, help="Cells run at once (each on one thread when > 1).")
    parser.add_argument(
        "--quick", action="store_true", help="Smoke: 2 settings x 1 seed, 30 steps, 10 episodes (--full: --smoke)."
    )
    parser.add_argument("overrides", nargs="*", help="Extra key=value overrides for the SFT config.")
    args = parser.parse_args(argv)
    if args.quick:
        args.settings, args.seeds, args.steps, args.episodes = "default,avx512", "0", 30, 10
    args.settings = [name for name in args.settings.split(",") if name]
    unknown = [name for name in args.settings if name not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; known: {', '.join(SETTINGS)}")
    args.seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    return args


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
THREADS: dict[str, str] = {}  # ONE_THREAD with --jobs > 1


def run_cli(argv: list[str], setting: str, log_path: str) -> None:
    """`python -m rlagent.cli ARGV` in a fresh process under the kernel setting (its output goes to log_path)."""
    env = {**os.environ, **SETTINGS[setting], **THREADS, "PYTHONPATH": REPO, "WANDB_MODE": "offline"}
    env["HF_HUB_OFFLINE"] = "1"
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, "-m", "rlagent.cli", *argv], env=env, cwd=REPO, stdout=log, stderr=log)
    if done.returncode != 0:
        sys.exit(f"quickstart_spread: `rlagent {' '.join(argv)}` failed ({done.returncode}); see {log_path}")


def eval_losses(run_dir: str) -> dict[int, float]:
    """Step -> eval loss, from the stage's metrics.jsonl."""
    losses = {}
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if "eval/loss" in record:
                losses[record["step"]] = record["eval/loss"]
    return losses


def sft_cell(args: argparse.Namespace, setting: str, seed: int, cell_dir: str) -> dict:
    """Stage 1 and a greedy held-out eval of its policy under one setting and seed."""
    sft_dir = os.path.join(cell_dir, "sft")
    argv = ["sft", "--config", SFT_CONFIG, f"output_dir={sft_dir}", f"seed={seed}", "progress=false", "save_every=0"]
    argv += [f"max_steps={args.steps}"] if args.steps else []
    run_cli(argv + args.overrides, setting, os.path.join(cell_dir, "sft.log"))
    losses = eval_losses(sft_dir)
    cell = {"eval_loss": losses[max(losses)], "eval_loss_curve": losses}
    return {**cell, **sft_success(args, setting, cell_dir)} if args.episodes else cell


def sft_success(args: argparse.Namespace, setting: str, cell_dir: str) -> dict:
    """Greedy held-out success of the cell's SFT policy per environment, in float32 as the quickstart evaluates it
    (`rlagent eval`'s default `auto` would sample in bf16 on a CPU that has it)."""
    out = os.path.join(cell_dir, "eval.json")
    argv = ["eval", "--policy", os.path.join(cell_dir, "sft", "final"), "--episodes", str(args.episodes)]
    argv += [arg for env_id in ENV_IDS for arg in ("--env", env_id)] + ["--seed", str(args.eval_seed), "--out", out]
    run_cli(argv + ["--dtype", "float32"], setting, os.path.join(cell_dir, "eval.log"))
    with open(out, encoding="utf-8") as handle:
        results = json.load(handle)
    return {f"{short(r['env'])}/sft_greedy": r["success_rate"] for r in results.get("envs", [results])}


def full_cell(args: argparse.Namespace, setting: str, seed: int, cell_dir: str) -> dict:
    """The whole quickstart under one setting and seed; its summary's greedy success of SFT and PPO."""
    argv = ["quickstart", "--output-dir", cell_dir, "--seed", str(seed), "--eval-episodes", str(args.episodes)]
    argv += ["--smoke"] if args.quick else []  # minutes-scale stages: checks the plumbing, not the spread
    run_cli(argv, setting, os.path.join(cell_dir, "quickstart.log"))
    losses = eval_losses(os.path.join(cell_dir, "sft"))
    cell = {"eval_loss": losses[max(losses)], "eval_loss_curve": losses}
    with open(os.path.join(cell_dir, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    for env_id in ENV_IDS:
        row = summary[env_id]
        cell[f"{short(env_id)}/sft_greedy"] = row["sft"]["success_rate"]
        cell[f"{short(env_id)}/ppo_greedy"] = row["ppo"]["success_rate"]
    return cell


def short(env_id: str) -> str:
    return env_id.split("/")[-1]


def spread(cells: list[dict]) -> dict:
    """Mean, min, max and n of every scalar number over the cells."""
    keys = [key for key in cells[0] if isinstance(cells[0][key], float)]
    return {
        key: {
            "mean": statistics.fmean(cell[key] for cell in cells),
            "min": min(cell[key] for cell in cells),
            "max": max(cell[key] for cell in cells),
            "n": len(cells),
        }
        for key in keys
    }


def run_cell(args: argparse.Namespace, out: str, setting: str, seed: int) -> dict:
    """One setting x seed cell in its own folder; prints its line when done."""
    cell_dir = os.path.join(out, f"{setting}-seed{seed}")
    os.makedirs(cell_dir, exist_ok=True)
    t0 = time.time()
    cell = (full_cell if args.full else sft_cell)(args, setting, seed, cell_dir)
    cell.update(setting=setting, seed=seed, seconds=round(time.time() - t0, 1))
    curve = " ".join(f"{step}:{loss:.4f}" for step, loss in sorted(cell["eval_loss_curve"].items()))
    rates = " ".join(f"{k} {v:.1%}" for k, v in cell.items() if k.endswith("_greedy"))
    print(f"{setting:8s} seed {seed}: eval loss {curve} | {rates} | {cell['seconds']} s", flush=True)
    return cell


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    banner(f"quickstart spread: settings {args.settings} x seeds {args.seeds}" + (" (full)" if args.full else ""))
    out = args.out or tempfile.mkdtemp(prefix="quickstart_spread-")
    if args.jobs > 1:
        THREADS.update(ONE_THREAD)
    grid = [(setting, seed) for setting in args.settings for seed in args.seeds]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each cell is a subprocess
        cells = list(pool.map(lambda cell: run_cell(args, out, *cell), grid))
    result = {
        "benchmark": "quickstart_spread",
        "settings": args.settings,
        "seeds": args.seeds,
        "sft_steps": args.steps or "config",
        "episodes": args.episodes,
        "full": args.full,
        "jobs": args.jobs,
        "spread": spread(cells),
        "cells": cells,
    }
    for key, s in result["spread"].items():
        print(f"{key}: mean {s['mean']:.7g}, range [{s['min']:.7g}, {s['max']:.7g}] over {s['n']} runs")
    print(f"   uptime: {uptime()}")
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
