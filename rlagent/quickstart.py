"""`rlagent quickstart`: noisy expert demos -> SFT -> preference pairs -> reward model -> PPO -> held-out table.

Runs the three stage scripts in this process with configs/quickstart/*.yaml (output folders redirected under
--output-dir), then evaluates the SFT and PPO policies on the TEST split of each environment and prints success with
95 % Wilson intervals and the Fisher-exact p-value of the difference. Writes DIR/summary.json as
{"rlagent/Calculator-v0": {"sft": {...}, "ppo": {...}, "difference": ..., "p_value": ...}, ...} (greedy decoding),
plus the same for sampling at temperature 1: "sft_sampled", "ppo_sampled", "difference_sampled", "p_value_sampled".
"""

from __future__ import annotations

import argparse
import json
import os
import time

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quickstart")
ENV_IDS = ["rlagent/Calculator-v0", "rlagent/KBSearch-v0"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlagent quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/quickstart", help="Where the three stages write.")
    # 500: a 95 % interval of about +-4 points; 200 (+-7) could not resolve the ~9-point sampled gains measured so far.
    parser.add_argument("--eval-episodes", type=int, default=500, help="Test-split episodes per environment.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for every stage and the evaluation.")
    parser.add_argument("--smoke", action="store_true", help="Minutes-scale settings for tests (numbers mean little).")
    parser.add_argument("--report-to", default="jsonl", help="Comma list: jsonl,wandb,tensorboard.")
    return parser.parse_args(argv)


SMOKE = {
    "sft": [
        "max_steps=20",
        "data.episodes=60",
        "eval_every=0",
        "save_every=0",
        "model.tiny.hidden_size=64",
        "model.tiny.num_layers=2",
        "model.tiny.num_heads=2",
        "model.tiny.intermediate_size=128",
    ],
    "reward": ["max_steps=10", "save_every=0", "eval_every=0", "data.pairs=40"],
    "ppo": [
        "max_steps=2",
        "env.episodes=8",
        "optim.batch_size=8",
        "optim.micro_batch_size=8",
        "rollout.max_new_tokens=48",
        "save_every=0",
        "log_samples_every=1",
    ],
}


def stage_args(stage: str, args: argparse.Namespace, extra: list[str]) -> list[str]:
    out = os.path.join(args.output_dir, stage)
    report = "[" + args.report_to + "]"
    argv = [
        "--config",
        os.path.join(CONFIG_DIR, f"{stage}.yaml"),
        f"output_dir={out}",
        f"seed={args.seed}",
        f"report_to={report}",
        "progress=true",
        *extra,
    ]
    return argv + (SMOKE[stage] if args.smoke else [])


def run_stages(args: argparse.Namespace) -> dict[str, float]:
    """The three stages, each reading the previous stage's final/ folder. Returns seconds per stage."""
    from rlagent import train_ppo, train_reward, train_sft

    sft_final = os.path.join(args.output_dir, "sft", "final")
    rm_final = os.path.join(args.output_dir, "reward", "final")
    seconds = {}
    for stage, module, extra in (
        ("sft", train_sft, []),
        # The reward model trains from its own fresh tiny backbone, as configs/quickstart/reward.yaml is measured.
        ("reward", train_reward, []),
        ("ppo", train_ppo, [f"model.name_or_path={sft_final}", f"reward.model_path={rm_final}"]),
    ):
        print(f"\n=== rlagent quickstart: stage {stage} ===", flush=True)
        t0 = time.time()
        module.main(stage_args(stage, args, extra))
        seconds[stage] = round(time.time() - t0, 1)
    return seconds


def evaluate_both(args: argparse.Namespace) -> dict:
    """Held-out success of the SFT and PPO policies on every environment, with the significance of the gain."""
    policies = {name: os.path.join(args.output_dir, name, "final") for name in ("sft", "ppo")}
    return evaluate_sft_vs_ppo(policies, ENV_IDS, args.eval_episodes, seed=args.seed + 10_000)


def evaluate_sft_vs_ppo(policies: dict[str, str], env_ids: list[str], episodes: int, seed: int) -> dict:
    """{env: row} for the model folders policies["sft"] and policies["ppo"] on the same test episodes.

    Greedy decoding is the headline ("sft", "ppo"); sampling at temperature 1 ("sft_sampled", "ppo_sampled") is the
    policy PPO actually optimises, so both are reported, each with its own Fisher-exact p-value.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlagent.evaluate import compare, evaluate_policy

    loaded = {
        name: (AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path))
        for name, path in policies.items()
    }
    results = {}
    for env_id in env_ids:
        row = {}
        for suffix, greedy in (("", True), ("_sampled", False)):
            for name, (model, tok) in loaded.items():
                row[name + suffix] = evaluate_policy(model, tok, env_id, episodes, seed=seed, greedy=greedy)
            stats = compare(row["sft" + suffix], row["ppo" + suffix])
            row.update({key + suffix: value for key, value in stats.items()})
        results[env_id] = row
    return results


def print_table(results: dict, seconds: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from rlagent.transcripts import wording_cell

    table = Table(title="rlagent quickstart: held-out (test split) results")
    columns = (
        "environment",
        "policy",
        "decoding",
        "success",
        "95% CI",
        "seen / unseen",
        "turns",
        "tool calls/ep",
        "invalid calls",
        "p",
    )
    for column in columns:
        table.add_column(column)
    for env_id, row in results.items():
        for suffix, decoding in (("", "greedy"), ("_sampled", "T=1")):
            for name in ("sft", "ppo"):
                r = row[name + suffix]
                lo, hi = r["success_ci95"]
                table.add_row(
                    env_id.removeprefix("rlagent/"),
                    name.upper(),
                    decoding,
                    f"{r['success_rate']:.1%}",
                    f"[{lo:.1%}, {hi:.1%}]",
                    wording_cell(r),
                    f"{r['mean_turns']:.2f}",
                    f"{r['tool_calls_per_episode']:.2f}",
                    f"{r['invalid_tool_call_rate']:.1%}",
                    f"{row['p_value' + suffix]:.2g}" if name == "ppo" else "",
                )
    Console(width=max(Console().width, 132)).print(table)  # a pipe or CI log must not squeeze the table
    print("p: two-sided Fisher exact test, PPO vs SFT on the same episodes")
    print("seen / unseen wording: success on test tasks phrased with training templates / with held-out templates")
    print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    t0 = time.time()
    seconds = run_stages(args)
    t_eval = time.time()
    results = evaluate_both(args)
    seconds["eval"] = round(time.time() - t_eval, 1)
    seconds["total"] = round(time.time() - t0, 1)
    summary = {**results, "seconds": seconds}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print_table(results, seconds)
    return summary


if __name__ == "__main__":
    main()
