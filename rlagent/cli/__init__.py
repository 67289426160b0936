"""`rlagent` command line: the training stages, distillation and sweeps, plus rollout, eval, quickstart, plot and
shipping (export, serve, ab-report)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "sft": ("rlagent.train_sft", "Stage 1: supervised warm start on demonstrations (assistant-only loss)."),
    "reward": ("rlagent.train_reward", "Stage 2: reward model from preference pairs (Bradley-Terry)."),
    "ppo": ("rlagent.train_ppo", "Stage 3: multi-turn PPO in a tool-use environment."),
    "distill": ("rlagent.train_distill", "Distil a teacher policy into a student: on-policy reverse KL, or sequence."),
    "sweep": ("rlagent.cli.sweep", "Hyper-parameter search over a stage's config keys (Optuna; pruning; resumable)."),
    "rollout": ("rlagent.cli.rollout_cli", "Play episodes with a policy and print the transcripts."),
    "eval": ("rlagent.cli.evaluate", "Held-out success with confidence intervals; --compare for significance."),
    "quickstart": ("rlagent.cli.quickstart", "SFT -> reward model -> PPO on the tiny default, then a result table."),
    "plot": ("rlagent.cli.plot", "Learning curves (success, reward, KL, entropy) of runs, overlaid, to an image."),
    "export": ("rlagent.cli.export", "A policy as a deployable folder: hf or onnx, optionally INT8, self-checked."),
    "serve": (
        "rlagent.cli.serve",
        "OpenAI-compatible server: batching, hot reload, A/B arms, --log as training data.",
    ),
    "ab-report": ("rlagent.cli.ab_report", "Per-arm success of a served A/B test from its --log folder, Fisher p."),
}


def usage() -> str:
    lines = ["usage: rlagent COMMAND [args]   (rlagent COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise SystemExit(f"rlagent: unknown command '{command}'\n\n{usage()}")
    from rlagent.common.config import precheck_args, run_main

    if command in ("sft", "reward", "ppo", "distill"):
        precheck_args(rest, prog=f"rlagent {command}")  # before the stage module imports torch (seconds)
    module = importlib.import_module(COMMANDS[command][0])
    run_main(module.main, rest, prog=f"rlagent {command}")


if __name__ == "__main__":
    main()
