"""`rlagent quickstart`: noisy expert demos -> SFT -> preference pairs -> reward model -> PPO -> held-out table.

Runs the three stage scripts in this process with configs/quickstart/*.yaml (output folders redirected under
--output-dir), then evaluates the SFT and PPO policies on the TEST split of each environment and prints success with
95 % Wilson intervals and the Fisher-exact p-value of the difference. Writes DIR/summary.json as
{"rlagent/Calculator-v0": {"sft": {...}, "ppo": {...}, "difference": ..., "p_value": ...}, ...} (greedy decoding),
plus the same for sampling at temperature 1: "sft_sampled", "ppo_sampled", "difference_sampled", "p_value_sampled"
(`--decodings`: the tiny default evaluates both, a real model greedy only unless asked).

`--model smollm2-135m-instruct` (or a .gguf file, or a Hugging Face folder with a ChatML-style template) runs the same
pipeline on that pretrained model with configs/smollm2/*.yaml (LoRA in every stage), and adds the untouched model as
a "zero_shot" row beside "sft" and "ppo" for each environment. Stage 2 (the reward model) is skipped when the PPO
config would not read it (reward.rm_weight 0 and no critic started from it), so no minutes go to an unused model.

Every policy plays the same test episodes (episode i reset with seed SEED+10000+i), so besides Fisher's test
("p_value", the contract) each comparison has the paired exact McNemar test on those episodes ("p_value_mcnemar",
from "discordant" = [episodes only SFT solved, episodes only PPO solved]). The environments evaluated are the PPO
config's env.ids (configs/smollm2 trains and evaluates on the hard levels).

`--control` adds an SFT control: SFT continued from the SFT policy on the same demonstration source for as many
seconds as the PPO stage took (train_sft with max_seconds; stage folder sft_control), evaluated on the same episodes
as row "sft_control"; "ppo_vs_control" (and "ppo_vs_control_sampled") holds PPO's difference from it with both
p-values. A PPO gain over SFT that the control matches is what more training of any kind buys, not RL.
"""

from __future__ import annotations

import argparse
import json
import os
import time

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
CONFIG_DIR = os.path.join(CONFIGS, "quickstart")
REAL_MODEL_CONFIG_DIR = os.path.join(CONFIGS, "smollm2")  # LoRA settings sized for SmolLM2-135M; any model fits them
ENV_IDS = ["rlagent/Calculator-v0", "rlagent/KBSearch-v0"]  # the tiny quickstart's (configs/quickstart/ppo.yaml)
POLICY_ORDER = ("zero_shot", "sft", "sft_control", "ppo")
# Decoding name -> (row-name suffix, greedy?, table label).
DECODINGS = {"greedy": ("", True, "greedy"), "sampled": ("_sampled", False, "T=1")}
POLICY_LABELS = {"zero_shot": "zero-shot", "sft": "SFT", "sft_control": "SFT control", "ppo": "PPO"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlagent quickstart", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", help="'tiny', a short name (smollm2-135m-instruct), a .gguf file or a HF folder."
    )
    parser.add_argument(
        "--output-dir", default=None, help="Where the three stages write (default runs/quickstart[-MODEL NAME])."
    )
    # 500: a 95 % interval of about +-4 points; 200 (+-7) could not resolve the ~9-point sampled gains measured so far.
    # A real model: 200 (its generation is ~100x slower), with McNemar's paired test to resolve what Fisher cannot.
    parser.add_argument(
        "--eval-episodes",
        type=int,
        default=None,
        help="Test-split episodes per environment and policy (default 500; 200 for --model).",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="Also run an SFT control: SFT continued from the SFT policy for as long as PPO ran; a row in the table.",
    )
    # Sampled rows double the evaluation; on a real model that is ~15 of the 60 CPU minutes, so greedy only there.
    parser.add_argument(
        "--decodings",
        default=None,
        help="Comma list of greedy,sampled: the evaluation's rows (default greedy,sampled; greedy for --model).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed for every stage and the evaluation.")
    parser.add_argument("--smoke", action="store_true", help="Minutes-scale settings for tests (numbers mean little).")
    parser.add_argument("--report-to", default="jsonl", help="Comma list: jsonl,wandb,tensorboard.")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="Override a key of one stage's config, e.g. sft.max_steps=5000 (stages: sft, reward, ppo); repeatable.",
    )
    args = parser.parse_args(argv)
    args.overrides = stage_overrides(args.set, parser)
    if args.output_dir is None:
        name = os.path.basename(os.path.normpath(args.model)).removesuffix(".gguf")
        args.output_dir = "runs/quickstart" if args.model == "tiny" else f"runs/quickstart-{name}"
    if args.eval_episodes is None:
        args.eval_episodes = 500 if args.model == "tiny" else 200
    if args.decodings is None:
        args.decodings = "greedy,sampled" if args.model == "tiny" else "greedy"
    args.decodings = [name for name in args.decodings.split(",") if name]
    if not args.decodings or set(args.decodings) - set(DECODINGS):
        parser.error(f"--decodings: expected a comma list of {', '.join(DECODINGS)}, got {args.decodings}")
    return args


STAGES = ("sft", "reward", "ppo")


def stage_overrides(items: list[str], parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """--set values -> {stage: ["key=value", ...]}; a value that names no stage or no key is a usage error."""
    out: dict[str, list[str]] = {stage: [] for stage in STAGES}
    for item in items:
        stage, _, override = item.partition(".")
        if stage not in STAGES or "=" not in override or not override.split("=", 1)[0]:
            parser.error(f"--set {item!r}: expected STAGE.KEY=VALUE with STAGE one of {', '.join(STAGES)}")
        out[stage].append(override)
    return out


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


# A real model in minutes: a handful of steps on short conversations (the numbers mean nothing).
REAL_MODEL_SMOKE = {
    "sft": ["max_steps=2", "data.episodes=6", "optim.batch_size=2", "optim.micro_batch_size=2", "save_every=0"],
    "reward": [
        "max_steps=2",
        "data.pairs=4",
        "optim.batch_size=2",
        "optim.micro_batch_size=2",
        "normalize.reference_samples=4",
    ],  # fmt: skip
    "ppo": [
        "max_steps=1",
        "env.episodes=4",
        "algo.group_size=2",  # 4 episodes over 2 environments: groups of 2 (configs/smollm2: RLOO, groups of 4)
        "optim.batch_size=4",
        "optim.micro_batch_size=4",
        "rollout.max_new_tokens=24",
        "log_samples_every=1",
    ],  # fmt: skip
}


def is_real_model(args: argparse.Namespace) -> bool:
    return args.model != "tiny"


def stage_args(stage: str, args: argparse.Namespace, extra: list[str], folder: str | None = None) -> list[str]:
    """The stage's argv: its config (configs/quickstart or configs/smollm2), outputs under --output-dir/FOLDER
    (default: the stage's name), the user's --set overrides of that stage, then `extra` (what the quickstart wires
    between stages, and the control's budget: these win), then the --smoke sizes."""
    out = os.path.join(args.output_dir, folder or stage)
    report = "[" + args.report_to + "]"
    real = is_real_model(args)
    argv = [
        "--config",
        os.path.join(REAL_MODEL_CONFIG_DIR if real else CONFIG_DIR, f"{stage}.yaml"),
        f"output_dir={out}",
        f"seed={args.seed}",
        f"report_to={report}",
        "progress=true",
        *args.overrides[stage],
        *extra,
    ]
    if not args.smoke:
        return argv
    return argv + (REAL_MODEL_SMOKE if real else SMOKE)[stage]


def run_stages(args: argparse.Namespace) -> dict[str, float]:
    """The three stages, each reading the previous stage's final/ folder. Returns seconds per stage."""
    from rlagent import train_ppo, train_reward, train_sft

    sft_final = os.path.join(args.output_dir, "sft", "final")
    rm_final = os.path.join(args.output_dir, "reward", "final")
    seconds = {}
    base = [f"model.name_or_path={args.model}"] if is_real_model(args) else []
    reads_rm = ppo_reads_reward_model(args)
    rm_path = rm_final if reads_rm else "null"  # no folder that was never written
    stages = [
        ("sft", train_sft, base),
        # Tiny: the reward model trains from its own fresh tiny backbone, as configs/quickstart/reward.yaml is
        # measured; a real model: from the pretrained model (not the SFT policy), as configs/smollm2/reward.yaml says.
        *([("reward", train_reward, base)] if reads_rm else []),
        ("ppo", train_ppo, [f"model.name_or_path={sft_final}", f"reward.model_path={rm_path}"]),
    ]
    if not reads_rm:
        print("\n=== rlagent quickstart: stage reward skipped (the PPO config neither weighs a reward model's score "
              "nor starts its critic from one) ===", flush=True)  # fmt: skip
    for stage, module, extra in stages:
        print(f"\n=== rlagent quickstart: stage {stage} ===", flush=True)
        t0 = time.time()
        module.main(stage_args(stage, args, extra))
        seconds[stage] = round(time.time() - t0, 1)
    if args.control:
        print(f"\n=== rlagent quickstart: SFT control ({seconds['ppo']} s, as long as PPO ran) ===", flush=True)
        t0 = time.time()
        train_sft.main(stage_args("sft", args, control_args(sft_final, seconds["ppo"]), folder="sft_control"))
        seconds["sft_control"] = round(time.time() - t0, 1)
    return seconds


def control_args(sft_final: str, ppo_seconds: float) -> list[str]:
    """The SFT control's overrides of the SFT config: start from the SFT policy, same demonstration source, stop
    when PPO's wall time is spent (max_steps out of reach; a constant learning rate, as no schedule length is known
    in advance). The budget counts training steps only: loading the model and building the data come on top, as
    PPO's own start-up is inside its time, so the control gets slightly less training time than PPO, never more."""
    return [f"model.name_or_path={sft_final}", f"max_seconds={ppo_seconds}", "max_steps=1000000",
            "optim.schedule=constant", "optim.warmup_ratio=0", "save_every=0", "eval_every=0"]  # fmt: skip


def evaluate_both(args: argparse.Namespace) -> dict:
    """Held-out success of the SFT and PPO policies (and, for a real model, the model itself; with --control, the
    SFT control) on every environment PPO trained on, with the significance of PPO's gain over SFT."""
    names = ("sft", "sft_control", "ppo") if args.control else ("sft", "ppo")
    policies = {name: os.path.join(args.output_dir, name, "final") for name in names}
    if is_real_model(args):
        policies = {"zero_shot": args.model, **policies}
    # The tiny default samples in fp32 like it trains (configs/quickstart pin float32: the same table on every CPU);
    # a real model in the dtype `auto` picks (bf16 where the hardware has it).
    dtype = "auto" if is_real_model(args) else "float32"
    return evaluate_sft_vs_ppo(
        policies, ppo_env_ids(args), args.eval_episodes, seed=args.seed + 10_000, dtype=dtype, decodings=args.decodings
    )


def ppo_config(args: argparse.Namespace):
    """The typed PPO config the quickstart runs (configs/quickstart or configs/smollm2 ppo.yaml, defaults filled)."""
    from rlagent.common.config import load_config
    from rlagent.training.ppo_config import PPOConfig

    folder = REAL_MODEL_CONFIG_DIR if is_real_model(args) else CONFIG_DIR
    return load_config(PPOConfig, os.path.join(folder, "ppo.yaml"), args.overrides["ppo"])


def ppo_env_ids(args: argparse.Namespace) -> list[str]:
    """The env.ids of the PPO config the quickstart ran (what the policy trained on, so what to evaluate)."""
    return list(ppo_config(args).env.ids)


def ppo_reads_reward_model(args: argparse.Namespace) -> bool:
    """Whether stage 3 would load stage 2's model; if not, training it is minutes for nothing."""
    from rlagent.algorithms.registry import get_adv_estimator
    from rlagent.training.ppo_models import reads_reward_model

    cfg = ppo_config(args)
    return reads_reward_model(cfg, get_adv_estimator(cfg.algo.estimator).needs_critic)


def evaluate_sft_vs_ppo(
    policies: dict[str, str],
    env_ids: list[str],
    episodes: int,
    seed: int,
    dtype: str = "auto",
    decodings: tuple[str, ...] = ("greedy", "sampled"),
) -> dict:
    """{env: row} for the model folders policies["sft"] and policies["ppo"] (and "zero_shot", "sft_control" when
    given) on the same test episodes.

    Greedy decoding is the headline ("sft", "ppo"); sampling at temperature 1 ("sft_sampled", "ppo_sampled") is the
    policy PPO actually optimises, so both are reported, each with its own p-values, Fisher and paired McNemar (PPO
    vs SFT: "p_value", "p_value_mcnemar"). Every other policy's result gets its own comparison with SFT
    (rlagent.cli.evaluate.compare) inside it; with a control, "ppo_vs_control" compares PPO with it. `decodings`
    picks which of the two (DECODINGS) are run.
    """
    from rlagent.cli.evaluate import compare, evaluate_policy
    from rlagent.rollout.policies import load_eval_model

    loaded = {name: load_eval_model(path) for name, path in policies.items()}
    results = {}
    for env_id in env_ids:
        row = {}
        for suffix, greedy, _ in (DECODINGS[name] for name in decodings):
            for name, (model, tok) in loaded.items():
                row[name + suffix] = evaluate_policy(
                    model, tok, env_id, episodes, seed=seed, greedy=greedy, dtype=dtype
                )
            sft = row["sft" + suffix]
            for name in loaded:
                if name != "sft":
                    row[name + suffix].update(baseline="sft", **compare(sft, row[name + suffix]))
            stats = compare(sft, row["ppo" + suffix])
            row.update({key + suffix: value for key, value in stats.items()})
            if "sft_control" in loaded:
                row["ppo_vs_control" + suffix] = compare(row["sft_control" + suffix], row["ppo" + suffix])
        results[env_id] = row
    return results


def print_table(results: dict, seconds: dict, title: str = "") -> None:
    from rich.console import Console

    from rlagent.rollout.transcripts import result_table

    lines = []
    for env_id, row in results.items():
        for suffix, _, decoding in DECODINGS.values():
            for name in [name for name in POLICY_ORDER if name + suffix in row]:
                lead = [env_id.removeprefix("rlagent/"), POLICY_LABELS[name], decoding]
                lines.append((lead, row[name + suffix], p_cells(row[name + suffix])))
    title = f"rlagent quickstart{title}: held-out (test split) results"
    tail = ("p vs SFT (Fisher)", "p (McNemar, a:b)")
    table = result_table(title, ("environment", "policy", "decoding"), tail, lines)
    Console(width=max(Console().width, 160)).print(table)  # a pipe or CI log must not squeeze the table
    print("p: two-sided tests against the SFT row on the same episodes: Fisher exact (unpaired) and exact McNemar")
    print("   (paired; a:b = episodes only SFT solved : episodes only this policy solved)")
    for env_id, row in results.items():
        for suffix, _, decoding in DECODINGS.values():
            if "ppo_vs_control" + suffix in row:
                c = row["ppo_vs_control" + suffix]
                print(f"PPO vs SFT control, {env_id.removeprefix('rlagent/')} {decoding}: {c['difference']:+.1%}, "
                      f"p Fisher {c['p_value']:.2g}, p McNemar {c['p_value_mcnemar']:.2g} "
                      f"({c['discordant'][0]}:{c['discordant'][1]})")  # fmt: skip
    print("seen / unseen wording: success on test tasks phrased with training templates / with held-out templates")
    print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))


def p_cells(r: dict) -> list[str]:
    """The p-value cells of one policy's row (empty for the SFT row itself)."""
    if "p_value_mcnemar" not in r:
        return ["", ""]
    return [f"{r['p_value']:.2g}", f"{r['p_value_mcnemar']:.2g} ({r['discordant'][0]}:{r['discordant'][1]})"]


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
    print_table(results, seconds, f" ({args.model})" if is_real_model(args) else "")
    return summary


if __name__ == "__main__":
    main()
