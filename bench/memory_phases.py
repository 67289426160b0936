"""Which phase of an rlagent stage sets its peak memory, on a real-shape model (SmolLM2-135M-Instruct).

    .venv/bin/python bench/memory_phases.py                   # 2 decoder layers (real vocabulary), ~2 min
    .venv/bin/python bench/memory_phases.py --layers 0        # the full 30-layer model, ~10 min on 2 CPU cores
    .venv/bin/python bench/memory_phases.py --set model.gradient_checkpointing=true   # any override, both stages
    .venv/bin/python bench/memory_phases.py --ppo-set value.freeze_embeddings=true    # an override for PPO only

Each stage runs in its own process (peak RSS, VmHWM, is per process and never goes down) as the real
`rlagent sft` / `rlagent ppo` main with the configs/smollm2 settings, LoRA included, and a few steps. The stage's
phase functions are wrapped (nothing else changes) to record, when each phase ends, the process's current RSS
(VmRSS) and its peak so far; a phase whose end raises the peak is where the memory goes. SFT: tokenised data, model
load (+ LoRA), each optimizer step (forward + backward over its micro-batches, then AdamW), the held-out loss, the
final save. PPO (on the truncated copy with a random-head reward model, value.init=policy): models, then per
iteration the rollout, scoring, old/reference/value passes, the PPO epochs and the checkpoint. Measured numbers
only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from report import banner, emit, rss_mib, uptime

BENCH = "memory_phases"
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "@@phase "


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers kept (0 = all 30)")
    parser.add_argument("--steps", type=int, default=2, help="SFT optimizer steps and PPO iterations")
    parser.add_argument("--set", action="append", default=[], help="config override for both stages (repeatable)")
    parser.add_argument("--ppo-set", action="append", default=[], help="config override for PPO only (repeatable)")
    parser.add_argument("--quick", action="store_true", help="1 step / iteration")
    parser.add_argument("--worker", choices=["sft", "ppo"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 1
    return args


def record(phase: str) -> None:
    current, peak = rss_mib()
    print(PREFIX + json.dumps({"phase": phase, "rss_mib": current, "peak_mib": peak, "t": time.time()}), flush=True)


def wrap(owner, name: str, label: str) -> None:
    """Replace owner.name by a version that records `label` when it returns."""
    inner = getattr(owner, name)

    def wrapped(*args, **kwargs):
        out = inner(*args, **kwargs)
        record(label)
        return out

    setattr(owner, name, wrapped)


def run_sft(args) -> None:
    from rlagent import train_sft
    from rlagent.training.checkpoints import fit

    wrap(train_sft, "prepare_data", "data tokenised")
    wrap(train_sft, "make_trainable", "model loaded (+ LoRA)")
    wrap(fit, "train_step", "optimizer step")
    wrap(train_sft, "evaluate", "held-out loss")
    wrap(train_sft, "save_final", "final saved")
    record("start")
    train_sft.main(
        ["--config", os.path.join(REPO_DIR, "configs", "smollm2", "sft.yaml"), f"output_dir={args.folder}/sft",
         f"model.name_or_path={args.folder}/model", f"max_steps={args.steps}", "data.episodes=40",
         "data.eval_fraction=0.2", f"eval_every={args.steps}", "optim.batch_size=16", "optim.micro_batch_size=8",
         "max_length=400", "save_every=0", "progress=false", *args.set]
    )  # fmt: skip


def run_ppo(args) -> None:
    from rlagent import train_ppo

    wrap(train_ppo, "load_models", "models loaded (policy + LoRA, critic, reward model)")
    phases = [("rollout", "rollout"), ("score", "scored"), ("old_ref_value_passes", "old/ref/value passes"),
              ("ppo_update", "PPO epochs"), ("save", "checkpoint")]  # fmt: skip
    for method, label in phases:
        wrap(train_ppo.PPOTrainer, method, label)
    record("start")
    train_ppo.main(
        ["--config", os.path.join(REPO_DIR, "configs", "smollm2", "ppo.yaml"), f"output_dir={args.folder}/ppo",
         f"model.name_or_path={args.folder}/model", f"reward.model_path={args.folder}/models/reward",
         "value.init=policy", f"max_steps={args.steps}", "env.episodes=8", "optim.batch_size=8",
         "optim.micro_batch_size=4", "rollout.max_new_tokens=48", "save_every=1", "progress=false", *args.set,
         *args.ppo_set]
    )  # fmt: skip


def run_stage(args, stage: str) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={stage}", f"--folder={args.folder}",
           f"--steps={args.steps}", *[f"--set={s}" for s in args.set],
           *[f"--ppo-set={s}" for s in args.ppo_set]]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_DIR)
    phases = [json.loads(line[len(PREFIX) :]) for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return phases


def report(stage: str, phases: list[dict]) -> list[dict]:
    print(f"\n   {stage}: {'phase':<52}{'RSS MiB':>9}{'peak MiB':>10}{'peak +':>8}{'s':>7}")
    rows, last_peak, t0 = [], phases[0]["peak_mib"], phases[0]["t"]
    for p in phases:
        rise = p["peak_mib"] - last_peak
        print(f"   {'':<{len(stage) + 2}}{p['phase']:<52}{p['rss_mib']:>9.0f}{p['peak_mib']:>10.0f}{rise:>8.0f}"
              f"{p['t'] - t0:>7.1f}")  # fmt: skip
        rows.append({"phase": p["phase"], "rss_mib": p["rss_mib"], "peak_mib": p["peak_mib"], "peak_rise_mib": rise})
        last_peak = p["peak_mib"]
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        (run_sft if args.worker == "sft" else run_ppo)(args)
        return
    from fixtures import real_model_folder, save_single_turn_models_from

    with tempfile.TemporaryDirectory(prefix="bench_memory_") as folder:
        args.folder = folder
        model = real_model_folder(os.path.join(folder, "model"), layers=args.layers)
        save_single_turn_models_from(model, os.path.join(folder, "models"))
        with open(os.path.join(model, "config.json"), encoding="utf-8") as handle:
            layers = json.load(handle)["num_hidden_layers"]
        shape = f"SmolLM2-135M-Instruct shape, {layers} decoder layers, {args.steps} step(s)"
        banner(f"{BENCH}: {shape}; set {args.set}, PPO {args.ppo_set}")
        results = {stage: report(stage, run_stage(args, stage)) for stage in ("sft", "ppo")}
    emit(BENCH, **results, layers=layers, steps=args.steps, overrides=args.set + [f"ppo: {s}" for s in args.ppo_set])
    print(f"   uptime: {uptime()}", flush=True)


if __name__ == "__main__":
    main()
