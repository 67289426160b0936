"""GPU check of the real-model track: SmolLM2-135M-Instruct through SFT -> reward model -> PPO (LoRA, bf16 on a GPU),
with seconds, tokens/s and peak GPU memory per stage and held-out success of the PPO policy; then one PPO iteration
under each accelerate launcher config (DDP, FSDP, DeepSpeed ZeRO-2) with --num_processes 1 (one SFT step under FSDP,
where PPO is a config error), reporting which worked;
last, GSM8K with the calculator (envs/gsm8k.py): SFT of the model on expert replays of GSM8K annotations, then its
held-out success. --gsm8k PATH names GSM8K-format data (a file, a folder with train/test files; the GPU machine is
offline, so no Hub id there); the default is $RLAGENT_GSM8K, else the 12-problem test fixture (a check that the path
works, not a GSM8K score). --gsm8k none skips it.

    bash bench/gpu_check.sh                # on one GPU: the useful size, <= 8 minutes
    bash bench/gpu_check.sh --size smoke   # the same steps at minutes-scale on a CPU (numbers mean nothing)
    bash bench/gpu_check.sh --gsm8k data/gsm8k   # GSM8K's train.jsonl/test.jsonl for the GSM8K stage

Prints one JSON line per measurement and writes them all to OUTPUT_DIR/gpu_check.json. Stages run in this process
(as `rlagent quickstart` runs them) so that torch.cuda.max_memory_allocated is per stage after a reset.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
MODEL = "smollm2-135m-instruct"
LAUNCHERS = ("ddp", "fsdp", "zero2")
GSM8K_FIXTURE = os.path.join(ROOT, "tests", "envs", "data", "gsm8k_sample.jsonl")
GSM8K_ENV = "envs.gsm8k:make_env"

# Stage overrides per size. "gpu": a few minutes of one H100/H200-class GPU in bf16; "smoke": CPU minutes.
SIZES = {
    "gpu": {
        "sft": ["max_steps=150", "data.episodes=400", "optim.batch_size=16", "optim.micro_batch_size=16"],
        "reward": ["max_steps=100", "data.pairs=400", "optim.batch_size=16", "optim.micro_batch_size=16"],
        "ppo": ["max_steps=10", "env.episodes=64", "optim.batch_size=64", "optim.micro_batch_size=16"],
        "eval_episodes": 100,
        # GSM8K demonstrations are longer (up to ~9 calculator turns): a longer max_length, fewer steps.
        "gsm8k": [
            "max_steps=40",
            "data.episodes=640",
            "optim.batch_size=16",
            "optim.micro_batch_size=16",
            "max_length=1024",
        ],  # fmt: skip
        "gsm8k_eval_episodes": 50,
    },
    "smoke": {
        "sft": ["max_steps=2", "data.episodes=6", "optim.batch_size=2", "optim.micro_batch_size=2", "max_length=512"],
        "reward": [
            "max_steps=2",
            "data.pairs=4",
            "optim.batch_size=2",
            "optim.micro_batch_size=2",
            "max_length=512",
            "normalize.reference_samples=4",
        ],  # fmt: skip
        "ppo": [
            "max_steps=1",
            "env.episodes=4",
            "optim.batch_size=4",
            "optim.micro_batch_size=4",
            "rollout.max_new_tokens=24",
        ],  # fmt: skip
        "eval_episodes": 2,
        "gsm8k": [
            "max_steps=2",
            "data.episodes=4",
            "optim.batch_size=2",
            "optim.micro_batch_size=2",
            "max_length=768",
        ],
        "gsm8k_eval_episodes": 2,
    },
}


def emit(results: list, record: dict) -> None:
    results.append(record)
    print(json.dumps(record), flush=True)


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def stage_argv(stage: str, out: str, size: dict, extra: list[str]) -> list[str]:
    config = os.path.join(CONFIGS, "smollm2", f"{stage}.yaml")
    return ["--config", config, f"output_dir={out}/{stage}", "progress=false", "save_every=0", *size[stage], *extra]


def tokens_processed(stage: str, summary: dict, argv: list[str]) -> float | None:
    """Tokens through forward+backward: SFT steps x batch x mean conversation length; PPO: tokens generated (from
    metrics); None where the stage's summary does not say."""
    settings = dict(arg.split("=", 1) for arg in argv if "=" in arg and not arg.startswith("--"))
    if stage == "sft" and summary.get("data/mean_tokens"):
        return float(settings["max_steps"]) * float(settings["optim.batch_size"]) * summary["data/mean_tokens"]
    return None


def run_stages(out: str, size: dict, results: list) -> None:
    from rlagent import train_ppo, train_reward, train_sft

    for stage, module, extra in (
        ("sft", train_sft, [f"model.name_or_path={MODEL}"]),
        ("reward", train_reward, [f"model.name_or_path={MODEL}"]),
        ("ppo", train_ppo, [f"model.name_or_path={out}/sft/final", f"reward.model_path={out}/reward/final"]),
    ):
        argv = stage_argv(stage, out, size, extra)
        reset_peak()
        t0 = time.time()
        summary = module.main(argv) or {}
        seconds = time.time() - t0
        tokens = tokens_processed(stage, summary, argv)
        emit(results, {"stage": stage, "seconds": round(seconds, 1), "peak_gpu_gib": peak_gib(),
                       "tokens_per_s": round(tokens / seconds, 1) if tokens else None})  # fmt: skip


def held_out(out: str, episodes: int, results: list) -> None:
    from rlagent.cli.evaluate import evaluate_policy
    from rlagent.cli.quickstart import ENV_IDS
    from rlagent.rollout.policies import load_eval_model

    for name, spec in (("zero_shot", MODEL), ("sft", f"{out}/sft/final"), ("ppo", f"{out}/ppo/final")):
        model, tokenizer = load_eval_model(spec)
        for env_id in ENV_IDS:
            reset_peak()
            r = evaluate_policy(model, tokenizer, env_id, episodes, seed=10_000, greedy=True)
            emit(results, {"eval": name, "env": env_id, "success_rate": r["success_rate"], "episodes": episodes,
                           "success_ci95": r["success_ci95"], "peak_gpu_gib": peak_gib()})  # fmt: skip
        del model


def launcher_checks(out: str, size: dict, results: list) -> None:
    """One PPO iteration under the DDP and ZeRO-2 configs and one SFT step under FSDP (PPO refuses FSDP: sharded
    generation deadlocks), one process each; a failure is reported, never raised."""
    if not torch.cuda.is_available():
        emit(results, {"launchers": "skipped: no GPU (the accelerate configs are GPU configs)"})
        return
    for name in LAUNCHERS:
        if name == "zero2" and importlib.util.find_spec("deepspeed") is None:
            pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "deepspeed"], capture_output=True)
            if pip.returncode != 0:
                emit(results, {"launcher": name, "ok": False, "why": "pip install deepspeed failed (offline?)"})
                continue
        stage = "sft" if name == "fsdp" else "ppo"
        inputs = [f"model.name_or_path={out}/sft/final", f"reward.model_path={out}/reward/final"]
        inputs = [f"model.name_or_path={MODEL}"] if stage == "sft" else inputs
        argv = stage_argv(stage, f"{out}/launch-{name}", {stage: size[stage] + ["max_steps=1"]}, inputs)
        cmd = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
               os.path.join(CONFIGS, "accelerate", f"{name}.yaml"), "--num_processes", "1",
               os.path.join(ROOT, "rlagent", f"train_{stage}.py"), *argv]  # fmt: skip
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        last = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        why = None if proc.returncode == 0 else last
        emit(results, {"launcher": name, "stage": stage, "ok": proc.returncode == 0,
                       "seconds": round(time.time() - t0, 1), "why": why})  # fmt: skip


def gsm8k_check(out: str, size: dict, source: str, results: list) -> None:
    """SFT on GSM8K expert replays (the environment reads `source` through $RLAGENT_GSM8K), then held-out success."""
    from rlagent import train_sft
    from rlagent.cli.evaluate import evaluate_policy
    from rlagent.cli.quickstart import load_for_eval

    os.environ["RLAGENT_GSM8K"] = source
    extra = [f"model.name_or_path={MODEL}", f"data.env_ids=[{GSM8K_ENV}]"]
    argv = stage_argv("sft", f"{out}/gsm8k", {"sft": size["gsm8k"]}, extra)
    reset_peak()
    t0 = time.time()
    summary = train_sft.main(argv) or {}
    emit(results, {"stage": "gsm8k_sft", "source": source, "seconds": round(time.time() - t0, 1),
                   "peak_gpu_gib": peak_gib(), "conversations": summary.get("data/conversations")})  # fmt: skip
    model, tokenizer = load_for_eval(f"{out}/gsm8k/sft/final")
    reset_peak()
    r = evaluate_policy(model, tokenizer, GSM8K_ENV, size["gsm8k_eval_episodes"], seed=10_000, greedy=True,
                        max_new_tokens=64, max_total_tokens=2048)  # fmt: skip
    emit(
        results,
        {
            "eval": "gsm8k_sft",
            "env": GSM8K_ENV,
            "source": source,
            "success_rate": r["success_rate"],
            "episodes": r["episodes"],
            "success_ci95": r["success_ci95"],
            "peak_gpu_gib": peak_gib(),
        },
    )


def write(out: str, results: list) -> None:
    with open(os.path.join(out, "gpu_check.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpu" if torch.cuda.is_available() else "smoke")
    parser.add_argument("--output-dir", default="runs/gpu_check")
    parser.add_argument("--gsm8k", default=os.environ.get("RLAGENT_GSM8K") or GSM8K_FIXTURE,
                        help="GSM8K-format data for the GSM8K stage, or 'none' (default: $RLAGENT_GSM8K, else the "
                        "test fixture)")  # fmt: skip
    parser.add_argument("--only-gsm8k", action="store_true", help="Run the GSM8K stage alone.")
    args = parser.parse_args(argv)
    size, results = SIZES[args.size], []
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    emit(results, {"device": device, "size": args.size, "model": MODEL})
    if not args.only_gsm8k:
        run_stages(args.output_dir, size, results)
        held_out(args.output_dir, size["eval_episodes"], results)
        launcher_checks(args.output_dir, size, results)
        write(args.output_dir, results)  # before GSM8K: a time-out there keeps everything above
    if args.gsm8k != "none":
        gsm8k_check(args.output_dir, size, args.gsm8k, results)
    os.makedirs(args.output_dir, exist_ok=True)
    write(args.output_dir, results)
    return results


if __name__ == "__main__":
    main()
