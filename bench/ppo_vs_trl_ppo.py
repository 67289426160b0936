"""Our PPO against TRL 1.12's `trl.experimental.ppo.PPOTrainer` on one identical single-turn setup.

    .venv/bin/python bench/ppo_vs_trl_ppo.py            # ~5 min: batch 32, 64 response tokens, 2 epochs, 6 iterations
    .venv/bin/python bench/ppo_vs_trl_ppo.py --quick    # ~1 min smoke run
    .venv/bin/python bench/ppo_vs_trl_ppo.py --model smollm2 --layers 2   # SmolLM2's shape, 2 decoder layers

TRL removed the PPO trainer after 1.12, so this script installs TRL 1.12 into bench/.trl112 (`pip install --target
bench/.trl112 --no-deps trl==1.12.*`) and runs the TRL side in its own process with PYTHONPATH=bench/.trl112: it
imports that trl with the venv's transformers, accelerate and datasets.

Identical on both sides: the tiny policy (randomly initialised), reward model and value model (the same saved
folders; with --model smollm2, SmolLM2-135M-Instruct truncated to --layers decoder layers with its real vocabulary,
embeddings, head and rlagent-prepared template, the reward and value models its backbone with a random / zero
head), Calculator-v0 prompts through the chat template, rollout batch, response length (sampling stops at end-of-turn
or after --response-length tokens; a random policy rarely stops early, and each side counts the response tokens it
actually generated), PPO epochs, minibatch and micro-batch sizes, learning rate, KL coefficient, value
coefficient and clip ranges, temperature 1, fp32 (or, with --precision bf16, bf16 autocast over fp32 weights on both
sides), no gradient checkpointing. Our side plays one-turn Calculator
episodes (tool-call tags are stripped, so a chance "<tool_call>" cannot start a second turn), env reward weighted 0:
the score is the reward model's, as in TRL.

Our side is the real `rlagent ppo` (rlagent.train_ppo.main); TRL's side is `PPOTrainer.train()`. The two run in
lock step (bench/lockstep.py): one iteration of one side at a time, alternating, each timed from "go" to the end of
its iteration. Reported: seconds per iteration and response tokens/s per side (median over the measured iterations,
after warm-up), and ours/TRL speed-up = TRL s/iteration / our s/iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from lockstep import Gate, Lockstep, WorkerFailed, round_order
from report import banner, emit, fmt, uptime

BENCH = "ppo_vs_trl_ppo"
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
TRL_TARGET = os.path.join(BENCH_DIR, ".trl112")
TRL_SPEC = "trl==1.12.*"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1-minute smoke run (batch 8, 32 tokens, 2 iterations)")
    parser.add_argument("--batch", type=int, default=32, help="episodes (prompts) per iteration")
    parser.add_argument("--response-length", type=int, default=64, help="response tokens per episode")
    parser.add_argument("--epochs", type=int, default=2, help="PPO epochs per iteration")
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences per forward/backward pass")
    parser.add_argument("--iterations", type=int, default=6, help="measured iterations per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up iterations per side")
    parser.add_argument("--hidden", type=int, help="tiny model width (default: TinyModelConfig's)")
    parser.add_argument(
        "--model", choices=["tiny", "smollm2"], default="tiny",
        help="smollm2: SmolLM2-135M-Instruct's shape (vocabulary 49,152, hidden 576, its template), --layers deep",
    )  # fmt: skip
    parser.add_argument("--layers", type=int, default=2, help="decoder layers kept with --model smollm2 (0 = all 30)")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32",
        help="bf16: bf16 autocast over fp32 weights on both sides (ours model.dtype=auto, TRL bf16=True)",
    )  # fmt: skip
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.response_length, args.micro_batch, args.iterations = 8, 32, 8, 2
    if args.batch % args.micro_batch:
        parser.error("--batch must be a multiple of --micro-batch")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Workers (each runs in its own process, stopping at the lock-step gate before and after every iteration)


def run_ours(args, setup: dict) -> None:
    """`rlagent ppo` on one-turn Calculator episodes, scored by the reward model only."""
    from fixtures import register_one_turn_calculator

    from rlagent import train_ppo

    gate = Gate()
    env_id = register_one_turn_calculator()

    class Gated(train_ppo.Callback):
        """Stop at the lock-step gate right before the first iteration and after each logged one."""

        def on_train_begin(self, trainer):
            gate.ready(side="ours")

        def on_iteration(self, trainer, step, metrics):
            gate.done(
                step=step,
                response_tokens=metrics["response_length"] * args.batch,
                rollout_s=metrics["timing/rollout_s"],
                train_s=metrics["timing/train_s"],
                score=metrics["objective/scores"],
            )

    train_ppo.main(
        [
            f"output_dir={setup['dir']}/ours",
            "seed=0",
            f"max_steps={args.warmup + args.iterations}",
            f"model.name_or_path={setup['policy']}",
            "model.dtype=float32" if args.precision == "fp32" else "model.dtype=auto",
            f"env.ids=[{env_id}]",
            f"env.episodes={args.batch}",
            f"rollout.max_new_tokens={args.response_length}",
            "rollout.temperature=1.0",
            "rollout.max_total_tokens=1024",
            f"reward.model_path={setup['reward']}",
            "reward.env_weight=0.0",
            "reward.rm_weight=1.0",
            "reward.missing_eos=none",
            f"optim.batch_size={args.batch}",
            f"optim.micro_batch_size={args.micro_batch}",
            f"optim.lr={args.lr}",
            "optim.schedule=constant",
            "optim.warmup_ratio=0.0",
            "value.init=policy",
            f"value.lr={args.lr}",
            f"algo.ppo_epochs={args.epochs}",
            "algo.kl_coef=0.05",
            "algo.kl_estimator=k1",
            "algo.clip_eps=0.2",
            "algo.value_clip_eps=0.2",
            "algo.vf_coef=0.1",
            "algo.gamma=1.0",
            "algo.lam=0.95",
            "save_every=0",
            "log_samples_every=0",
            "progress=false",
        ],
        callbacks=[Gated()],
    )


def run_trl(args, setup: dict) -> None:
    """TRL 1.12 PPOTrainer with the same folders and shapes; counts the response tokens it actually generates."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    gate = Gate()
    generated = {"tokens": 0, "seconds": 0.0}
    original_batch_generation = trl_ppo.batch_generation

    def counting_batch_generation(model, queries, forward_batch, pad_token_id, generation_config):
        t0 = time.perf_counter()
        query_responses, logits = original_batch_generation(
            model, queries, forward_batch, pad_token_id, generation_config
        )
        generated["seconds"] += time.perf_counter() - t0
        generated["tokens"] += int((query_responses[:, queries.shape[1] :] != pad_token_id).sum())
        return query_responses, logits

    trl_ppo.batch_generation = counting_batch_generation

    class GateCallback(TrainerCallback):
        last_logs: dict = {}

        def on_train_begin(self, *_, **__):
            gate.ready(side="trl", trl_version=trl.__version__)

        def on_log(self, _args, _state, _control, logs=None, **__):
            self.last_logs = dict(logs or {})

        def on_step_end(self, _args, state, *_, **__):
            tokens, rollout_s = generated["tokens"], generated["seconds"]
            generated.update(tokens=0, seconds=0.0)
            gate.done(
                step=state.global_step,
                response_tokens=tokens,
                rollout_s=rollout_s,
                score=self.last_logs.get("objective/scores"),
            )

    tokenizer = AutoTokenizer.from_pretrained(setup["policy"])
    policy = AutoModelForCausalLM.from_pretrained(setup["policy"], dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(setup["policy"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(setup["reward"], dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(setup["value"], dtype=torch.float32)
    with open(setup["prompts"], encoding="utf-8") as handle:
        prompts = json.load(handle)
    config = PPOConfig(
        output_dir=f"{setup['dir']}/trl",
        seed=0,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        bf16=args.precision == "bf16",  # accelerate's autocast over fp32 weights, as ours under model.dtype=auto
        use_cpu=not torch.cuda.is_available(),  # else transformers refuses bf16 without a GPU
        fp16=False,
        gradient_checkpointing=False,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.batch // args.micro_batch,
        num_mini_batches=1,
        total_episodes=args.batch * (args.warmup + args.iterations),
        num_ppo_epochs=args.epochs,
        response_length=args.response_length,
        temperature=1.0,
        stop_token="eos",
        missing_eos_penalty=None,
        local_rollout_forward_batch_size=args.batch,
        num_sample_generations=0,
        kl_coef=0.05,
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        whiten_rewards=False,
    )
    dataset = Dataset.from_dict({"input_ids": prompts})
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=reference,
        reward_model=reward,
        value_model=value,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(args.batch)),
        callbacks=[GateCallback()],
    )
    trainer.train()


# ---------------------------------------------------------------------------------------------------------------------
# Coordinator


def ensure_trl112() -> str:
    """TRL 1.12 in bench/.trl112 (installed once, without dependencies); returns its version."""
    probe = [sys.executable, "-c", "import trl; print(trl.__version__)"]
    env = {**os.environ, "PYTHONPATH": TRL_TARGET}
    found = subprocess.run(probe, capture_output=True, text=True, env=env)
    if found.returncode == 0 and found.stdout.strip().startswith("1.12"):
        return found.stdout.strip()
    print(f"   installing {TRL_SPEC} into {TRL_TARGET}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", TRL_TARGET, "--no-deps", "--upgrade", TRL_SPEC],
        check=True,
    )
    return subprocess.run(probe, capture_output=True, text=True, env=env, check=True).stdout.strip()


def prepare(args, folder: str) -> dict:
    """Save the three models (tiny, or SmolLM2's shape) and the prompt set; returns the paths both workers read."""
    from fixtures import calculator_prompts, real_model_folder, save_single_turn_models, save_single_turn_models_from
    from transformers import AutoConfig, AutoTokenizer

    from rlagent.common.config import TinyModelConfig

    models = os.path.join(folder, "models")
    if args.model == "smollm2":
        policy = real_model_folder(os.path.join(models, "policy"), layers=args.layers)
        setup = {"dir": folder, **save_single_turn_models_from(policy, models)}
    else:
        tiny = TinyModelConfig()
        if args.hidden:
            tiny = TinyModelConfig(hidden_size=args.hidden, num_heads=max(1, args.hidden // 32))
        setup = {"dir": folder, **save_single_turn_models(models, tiny)}
    config = AutoConfig.from_pretrained(setup["policy"])
    args.tiny = {  # the policy's shape (the result key predates --model)
        "model": args.model, "vocab": config.vocab_size, "hidden": config.hidden_size,
        "layers": config.num_hidden_layers, "heads": config.num_attention_heads,
    }  # fmt: skip
    setup["prompts"] = os.path.join(folder, "prompts.json")
    with open(setup["prompts"], "w", encoding="utf-8") as handle:
        json.dump(calculator_prompts(AutoTokenizer.from_pretrained(setup["policy"]), 256), handle)
    return setup


def worker_command(args, side: str, setup_path: str) -> list[str]:
    flags = [
        f"--batch={args.batch}",
        f"--response-length={args.response_length}",
        f"--epochs={args.epochs}",
        f"--micro-batch={args.micro_batch}",
        f"--iterations={args.iterations}",
        f"--warmup={args.warmup}",
        *([f"--hidden={args.hidden}"] if args.hidden else []),
        f"--model={args.model}",
        f"--layers={args.layers}",
        f"--lr={args.lr}",
        f"--precision={args.precision}",
    ]
    return [sys.executable, os.path.abspath(__file__), f"--worker={side}", f"--setup={setup_path}", *flags]


def interleave(args, setup: dict, setup_path: str) -> dict[str, list[dict]]:
    """Warm-up and measured iterations of both sides, one at a time, alternating; returns the measured reports."""
    trl_env = {
        **os.environ,
        "PYTHONPATH": TRL_TARGET + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    measured: dict[str, list[dict]] = {"ours": [], "trl": []}
    with Lockstep() as run:
        for side, env in (("ours", None), ("trl", trl_env)):
            ready = run.start(
                side, worker_command(args, side, setup_path), env, os.path.join(setup["dir"], f"{side}.log")
            )
            print(f"   {side}: ready after {ready['setup_seconds']:.1f} s set-up", flush=True)
        for round_index in range(args.warmup + args.iterations):
            for side in round_order(["ours", "trl"], round_index):
                report = run.step(side)
                if round_index >= args.warmup:
                    measured[side].append(report)
                print(
                    f"   round {round_index + 1} {side:>4}: {report['seconds']:6.2f} s wall "
                    f"({report['cpu_seconds']:6.2f} s CPU, generation {report['rollout_s']:6.2f} s"
                    + (f", PPO epochs {report['train_s']:6.2f} s" if "train_s" in report else "")
                    + "), "
                    f"{report['response_tokens']:.0f} response tokens, score {fmt(report.get('score'))}",
                    flush=True,
                )
            print(f"   uptime: {uptime()}", flush=True)
        run.stop_all()
    return measured


def side_summary(reports: list[dict]) -> dict:
    """Medians over the measured iterations of one side."""
    seconds = [r["seconds"] for r in reports]
    tokens = [r["response_tokens"] for r in reports]
    return {
        "s_per_iter": statistics.median(seconds),
        "s_per_iter_min": min(seconds),
        "cpu_s_per_iter": statistics.median(r["cpu_seconds"] for r in reports),
        "generation_s_per_iter": statistics.median(r["rollout_s"] for r in reports),
        "response_tokens_per_iter": statistics.median(tokens),
        "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, seconds)),
    }


def summarise(args, measured: dict[str, list[dict]], trl_version: str) -> None:
    """Medians per side, the speed-up (wall and CPU), and the result line."""
    sides = {side: side_summary(reports) for side, reports in measured.items()}
    paired = statistics.median(t["seconds"] / o["seconds"] for o, t in zip(measured["ours"], measured["trl"]))
    speedup = sides["trl"]["s_per_iter"] / sides["ours"]["s_per_iter"]
    cpu_speedup = sides["trl"]["cpu_s_per_iter"] / sides["ours"]["cpu_s_per_iter"]
    print(
        f"\n   {'side':<6}{'s/iter':>9}{'CPU s/iter':>12}{'gen. s/iter':>13}{'resp. tok/iter':>16}{'resp. tok/s':>13}"
    )
    for side, s in sides.items():
        print(
            f"   {side:<6}{s['s_per_iter']:>9.2f}{s['cpu_s_per_iter']:>12.2f}{s['generation_s_per_iter']:>13.2f}"
            f"{s['response_tokens_per_iter']:>16.0f}{s['tokens_per_s']:>13.1f}"
        )
    print(
        f"   speed-up ours vs TRL {trl_version}: {speedup:.2f}x wall (median per-round ratio {paired:.2f}x), "
        f"{cpu_speedup:.2f}x CPU time"
    )
    emit(
        BENCH,
        ours=sides["ours"],
        trl=sides["trl"],
        speedup=speedup,
        speedup_paired_median=paired,
        speedup_cpu=cpu_speedup,
        trl_version=trl_version,
        batch=args.batch,
        response_length=args.response_length,
        epochs=args.epochs,
        micro_batch=args.micro_batch,
        iterations=args.iterations,
        tiny=args.tiny,
        precision=args.precision,
        uptime=uptime(),
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        with open(args.setup, encoding="utf-8") as handle:
            setup = json.load(handle)
        (run_ours if args.worker == "ours" else run_trl)(args, setup)
        return
    banner(
        f"{BENCH}: batch {args.batch}, {args.response_length} response tokens, {args.epochs} epochs, "
        f"micro-batch {args.micro_batch}, {args.iterations} measured iterations per side"
    )
    t0 = time.time()
    trl_version = ensure_trl112()
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as folder:
        setup = prepare(args, folder)
        setup_path = os.path.join(folder, "setup.json")
        with open(setup_path, "w", encoding="utf-8") as handle:
            json.dump(setup, handle)
        try:
            measured = interleave(args, setup, setup_path)
        except WorkerFailed as err:
            print(f"   FAILED: {err}", flush=True)
            emit(BENCH, error=str(err).splitlines()[0], trl_version=trl_version)
            raise SystemExit(1) from None
    summarise(args, measured, trl_version)
    print(f"   total {time.time() - t0:.0f} s; uptime: {uptime()}", flush=True)


if __name__ == "__main__":
    main()
