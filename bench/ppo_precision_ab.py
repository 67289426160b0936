"""Seconds per SmolLM2 PPO iteration (LoRA, configs/smollm2/ppo.yaml): fp32 (model.dtype=float32, what c874d7b did
on every CPU) against model.dtype=auto (bf16 autocast where the probe finds native bf16), in lock step.

    .venv/bin/python bench/ppo_precision_ab.py                   # 16 episodes, 1 warm-up + 2 measured iterations
    .venv/bin/python bench/ppo_precision_ab.py --episodes 64
    .venv/bin/python bench/ppo_precision_ab.py --quick           # 4 episodes, 16 new tokens, 1 measured iteration

Both sides are the real `rlagent ppo` on the shipped config with the stock SmolLM2-135M-Instruct as the policy
(`reward.model_path=null reward.rm_weight=0 value.init=policy`: env reward only, so no earlier stage is needed),
same seed, run by bench/lockstep.py one iteration at a time, alternating. Reported per side: median seconds and
CPU-seconds per iteration, split into rollout (generation) and PPO training, and the fp32/auto ratio of each.
Generation is timed apart: its speed comes from the rollout backend (rollout.dtype, rollout.prefix_cache).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from lockstep import Gate, Lockstep, WorkerFailed, round_order
from report import banner, emit, uptime

BENCH = "ppo_precision_ab"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# side -> overrides: "fp32" is what c874d7b did on every CPU (fp32 training, sampling from the trainer's fp32 weights,
# every prompt prefilled in full); "auto" is today's default (bf16 autocast, bf16 sampling copy, shared prefix).
SIDES = {
    "fp32": ["model.dtype=float32", "rollout.dtype=float32", "rollout.prefix_cache=false"],
    "auto": ["model.dtype=auto", "rollout.dtype=auto", "rollout.prefix_cache=true"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 episodes, 16 new tokens, 1 iteration")
    parser.add_argument("--episodes", type=int, default=16, help="episodes per iteration (env.episodes)")
    parser.add_argument("--iterations", type=int, default=2, help="measured iterations per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up iterations per side")
    parser.add_argument("--max-new-tokens", type=int, help="rollout.max_new_tokens (default: the config's)")
    parser.add_argument("--worker", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.iterations, args.max_new_tokens = 4, 1, 16
    return args


def overrides(args, side: str, folder: str) -> list[str]:
    """The `rlagent ppo` command line of one side: the shipped config, the stock policy, no reward model."""
    return [
        "--config",
        os.path.join(REPO, "configs", "smollm2", "ppo.yaml"),
        f"output_dir={folder}/{side}",
        "model.name_or_path=smollm2-135m-instruct",
        *SIDES[side],
        "reward.model_path=null",
        "reward.rm_weight=0",
        "value.init=policy",
        f"env.episodes={args.episodes}",
        f"optim.batch_size={args.episodes}",
        f"max_steps={args.warmup + args.iterations}",
        *([f"rollout.max_new_tokens={args.max_new_tokens}"] if args.max_new_tokens else []),
        "save_every=0",
        "log_samples_every=0",
        "progress=false",
    ]


def run_worker(args) -> None:
    from rlagent import train_ppo

    gate = Gate()

    class Gated(train_ppo.Callback):
        def on_train_begin(self, trainer):
            gate.ready(side=args.worker)

        def on_iteration(self, trainer, step, metrics):
            gate.done(step=step, rollout_s=metrics["timing/rollout_s"], train_s=metrics["timing/train_s"])

    train_ppo.main(overrides(args, args.worker, args.dir), callbacks=[Gated()])


def interleave(args, folder: str) -> dict[str, list[dict]]:
    measured: dict[str, list[dict]] = {side: [] for side in SIDES}
    flags = [f"--episodes={args.episodes}", f"--iterations={args.iterations}", f"--warmup={args.warmup}"]
    flags += [f"--max-new-tokens={args.max_new_tokens}"] if args.max_new_tokens else []
    with Lockstep() as run:
        for side in SIDES:
            cmd = [sys.executable, os.path.abspath(__file__), f"--worker={side}", f"--dir={folder}", *flags]
            ready = run.start(side, cmd, None, os.path.join(folder, f"{side}.log"))
            print(f"   {side}: ready after {ready['setup_seconds']:.1f} s set-up", flush=True)
        for round_index in range(args.warmup + args.iterations):
            for side in round_order(list(SIDES), round_index):
                report = run.step(side)
                if round_index >= args.warmup:
                    measured[side].append(report)
                print(
                    f"   round {round_index + 1} {side:>4}: {report['seconds']:7.1f} s wall, "
                    f"{report['cpu_seconds']:7.1f} s CPU (rollout {report['rollout_s']:.1f} s, "
                    f"training {report['train_s']:.1f} s); uptime {uptime()}",
                    flush=True,
                )
        run.stop_all()
    return measured


def summarise(args, measured: dict[str, list[dict]]) -> None:
    keys = {"s_per_iter": "seconds", "cpu_s_per_iter": "cpu_seconds", "rollout_s": "rollout_s", "train_s": "train_s"}
    sides = {s: {k: statistics.median(r[v] for r in reps) for k, v in keys.items()} for s, reps in measured.items()}
    ratios = {k: sides["fp32"][k] / max(sides["auto"][k], 1e-9) for k in keys}
    for side, row in sides.items():
        print(f"   {side:>4}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
    print("   fp32 / auto (>1 = auto faster): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    emit(BENCH, sides=sides, ratios=ratios, episodes=args.episodes, iterations=args.iterations, uptime=uptime())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    banner(f"{BENCH}: SmolLM2 LoRA PPO, {args.episodes} episodes, {args.iterations} measured iterations per side")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_ppo_ab_") as folder:
        try:
            measured = interleave(args, folder)
        except WorkerFailed as err:
            print(f"   FAILED: {err}", flush=True)
            emit(BENCH, error=str(err).splitlines()[0])
            raise SystemExit(1) from None
    summarise(args, measured)
    print(f"   total {time.time() - t0:.0f} s; uptime: {uptime()}", flush=True)


if __name__ == "__main__":
    main()
