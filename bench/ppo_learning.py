"""Does PPO learn? From a deliberately weak SFT policy on Calculator-v0, N PPO iterations on the environment reward.

    python bench/ppo_learning.py [--sft-dir DIR] [--iterations 30] [--quick]

1. A weak SFT policy, in two SFT runs: the quickstart's stage 1 (configs/quickstart/sft.yaml, shared with
   multiturn_vs_trl_grpo through bench/fixtures.py), then --sft-steps more steps at lr 1e-3 on demonstrations where
   the expert fails on purpose in --noise (85 %) of the episodes (answers without the tool, or writes a malformed
   call). It keeps the copying skill of the first run and takes the bad habits of the second. (Noisy data from the
   start does not give a usable weak policy: at 60 % noise the tiny model never learned to copy numbers, and at
   45 % it copied so poorly that fixing its habits was worth only +14 points.) Built once into --sft-dir.
2. `rlagent ppo` with configs/quickstart/ppo.yaml on Calculator-v0 only, environment reward only (no reward model).
3. Prints the TRAINING success (sampled episodes of each iteration) averaged over the first and the last 3
   iterations, and held-out (test split) success of both policies, greedy and sampled, with Fisher-exact p-values.
Numbers only, no assertions (issue: +20 points of training success in 30 iterations).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ENV_ID = "rlagent/Calculator-v0"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-dir", help="Weak SFT folder (default: bench/.cache/weak_sft-<noise>-<steps>).")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", ".cache", "ppo_learning"))
    parser.add_argument("--iterations", type=int, default=30, help="PPO iterations.")
    parser.add_argument("--sft-steps", type=int, default=300, help="Steps of the second (bad-habits) SFT run.")
    parser.add_argument("--noise", type=float, default=0.85, help="Expert failure rate in the second run's data.")
    parser.add_argument("--eval-episodes", type=int, default=200, help="Held-out episodes per policy.")
    parser.add_argument("--quick", action="store_true", help="Smoke sizes (numbers mean little).")
    return parser.parse_args()


def weak_sft(args: argparse.Namespace) -> str:
    from fixtures import sft_policy

    from rlagent import train_sft

    final = os.path.join(args.sft_dir, "final")
    if not os.path.isdir(final):
        base = sft_policy(max_steps=50 if args.quick else None)
        train_sft.main(
            [
                "--config",
                os.path.join(REPO, "configs", "quickstart", "sft.yaml"),
                f"output_dir={args.sft_dir}",
                f"model.name_or_path={base}",
                f"max_steps={args.sft_steps}",
                "optim.lr=1e-3",
                f"data.noise={args.noise}",
                "data.episodes=1000",
                "eval_every=0",
                "save_every=0",
                "progress=false",
            ]
        )
    return final


def run_ppo(args: argparse.Namespace, sft: str) -> list[dict]:
    from rlagent import train_ppo

    train_ppo.main(
        [
            "--config",
            os.path.join(REPO, "configs", "quickstart", "ppo.yaml"),
            f"output_dir={args.out}",
            f"model.name_or_path={sft}",
            f"env.ids=[{ENV_ID}]",
            "reward.model_path=null",
            "reward.rm_weight=0.0",
            f"max_steps={args.iterations}",
            "save_every=0",
            "progress=false",
        ]
    )
    with open(os.path.join(args.out, "metrics.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def held_out(args: argparse.Namespace, sft: str) -> None:
    from rlagent.cli.quickstart import evaluate_sft_vs_ppo

    policies = {"sft": sft, "ppo": os.path.join(args.out, "final")}
    row = evaluate_sft_vs_ppo(policies, [ENV_ID], args.eval_episodes, seed=10_000)[ENV_ID]
    for suffix, mode in (("", "greedy"), ("_sampled", "sampled")):
        print(
            f"held-out {mode:7s}: SFT {row['sft' + suffix]['success_rate']:.1%}  "
            f"PPO {row['ppo' + suffix]['success_rate']:.1%}  difference {row['difference' + suffix]:+.1%}  "
            f"p={row['p_value' + suffix]:.2g}  ({args.eval_episodes} episodes each)"
        )


def main() -> None:
    args = parse()
    if args.quick:
        args.sft_steps, args.iterations, args.eval_episodes = 20, 3, 16
        args.out += "_quick"
    # The recipe is in the folder name, so a cached policy is never reused for another recipe.
    recipe = f"weak_sft-{args.noise}-{args.sft_steps}" + ("-quick" if args.quick else "")
    args.sft_dir = args.sft_dir or os.path.join(REPO, "bench", ".cache", recipe)
    t0 = time.time()
    sft = weak_sft(args)
    t1 = time.time()
    metrics = run_ppo(args, sft)
    t2 = time.time()
    success = [m["env/success_rate"] for m in metrics if "env/success_rate" in m]
    first, last = sum(success[:3]) / len(success[:3]), sum(success[-3:]) / len(success[-3:])
    print(f"weak SFT: {t1 - t0:.0f} s (0 when reused); PPO: {len(success)} iterations in {t2 - t1:.0f} s")
    print("training success per iteration: " + " ".join(f"{s:.2f}" for s in success))
    print(f"training success, mean of first 3 iterations {first:.1%} -> last 3 {last:.1%}: {last - first:+.1%}")
    held_out(args, sft)


if __name__ == "__main__":
    main()
