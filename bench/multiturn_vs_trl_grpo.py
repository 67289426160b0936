"""Multi-turn tool use: our PPO (critic + GAE) and our GRPO mode against TRL's GRPOTrainer(environment_factory=...).

    .venv/bin/python bench/multiturn_vs_trl_grpo.py                 # ~10 min: 180 s of training per side
    .venv/bin/python bench/multiturn_vs_trl_grpo.py --budget 600    # the longer run reported in bench/RESULTS.md
    .venv/bin/python bench/multiturn_vs_trl_grpo.py --quick         # ~1-2 min smoke run (20-step SFT, 20 s per side)
    .venv/bin/python bench/multiturn_vs_trl_grpo.py --model smollm2 --layers 2   # SmolLM2's shape (SFT built once)

All three start from the same SFT policy: the quickstart's stage 1 (`rlagent sft --config
configs/quickstart/sft.yaml`, built once into bench/.cache; or --sft FOLDER), and play
Calculator-v0 train-split episodes: 32 episodes per iteration (GRPO: 8 tasks x 4 samples), temperature 1.0, at most
96 tokens per assistant turn, at most 4 assistant turns (TRL: 3 tool-calling rounds), the same learning rate. TRL's
side plays the environment through `environment_factory`: `CalculatorToolEnv` below wraps the same gymnasium env,
its `calculator` method is the tool, and the reward function feeds the final answer to the env, so episodes are
graded and rewarded by the env's own rules (1 correct, 0 wrong, -0.5 turn limit, -0.1 invalid call). The tiny
tokenizer's chat template (and the ChatML + Hermes template rlagent gives SmolLM2) writes Qwen-style tool calls, so
TRL parses them with its Qwen3 response template.

The sides run in lock step (bench/lockstep.py): one iteration at a time, alternating, so load from other jobs falls
on each side in turn; each side's clock counts only its own iterations. A side stops when its success (mean over
the last --window iterations, i.e. 96 train episodes) reaches --target, or when its clock passes --budget.
Reported per side: success against training time, time to --target, episodes/s; and ours / TRL time to target.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from lockstep import Gate, Lockstep, WorkerFailed, round_order
from report import banner, emit, fmt, uptime

BENCH = "multiturn_vs_trl_grpo"
SIDES = ("ppo", "grpo", "trl_grpo")
CALCULATOR = "rlagent/Calculator-v0"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 episodes per iteration, 20 s per side")
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds per side")
    parser.add_argument("--target", type=float, default=0.9, help="success rate to reach")
    parser.add_argument("--window", type=int, default=3, help="iterations averaged for the success curve")
    parser.add_argument("--episodes", type=int, default=32, help="episodes per iteration")
    parser.add_argument("--group", type=int, default=4, help="GRPO samples per task")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-new-tokens", type=int, default=96, help="longest assistant turn")
    parser.add_argument("--sft", help="SFT policy folder (default: the quickstart's SFT, built once and cached)")
    parser.add_argument("--sft-steps", type=int, help="override the quickstart SFT's max_steps when building it")
    parser.add_argument(
        "--model", choices=["tiny", "smollm2"], default="tiny",
        help="smollm2: the SFT policy is SmolLM2-135M-Instruct truncated to --layers (real vocabulary and template)",
    )  # fmt: skip
    parser.add_argument("--layers", type=int, default=2, help="decoder layers kept with --model smollm2")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES))
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.group, args.micro_batch, args.budget = 8, 4, 8, 20.0
        args.sft_steps = args.sft_steps or 20
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Our sides: the real `rlagent ppo`, stopped at the gate after every iteration


def run_ours(args, estimator: str) -> None:
    from rlagent import train_ppo

    gate = Gate()

    class Gated(train_ppo.Callback):
        """Stop at the lock-step gate right before the first iteration and after each logged one."""

        def on_train_begin(self, trainer):
            gate.ready(side=estimator)

        def on_iteration(self, trainer, step, metrics):
            gate.done(
                step=step,
                success=metrics["env/success_rate"],
                episodes=args.episodes,
                turns=metrics["env/turns"],
                response_tokens=metrics["response_length"],
            )

    grpo = estimator == "grpo"
    train_ppo.main(
        [
            f"output_dir={args.out}",
            "seed=0",
            "max_steps=100000",
            f"model.name_or_path={args.sft}",
            "model.dtype=float32",
            f"env.ids=[{CALCULATOR}]",
            f"env.episodes={args.episodes}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            "rollout.temperature=1.0",
            "rollout.max_total_tokens=1024",
            f"optim.batch_size={args.episodes}",
            f"optim.micro_batch_size={args.micro_batch}",
            f"optim.lr={args.lr}",
            "optim.schedule=constant",
            "optim.warmup_ratio=0.0",
            f"algo.estimator={estimator}",
            f"algo.group_size={args.group}",
            # GRPO mirrors TRL's defaults (one pass per batch, no KL); PPO keeps rlagent's quickstart settings.
            f"algo.ppo_epochs={1 if grpo else 2}",
            f"algo.kl_coef={0.0 if grpo else 0.02}",
            "save_every=0",
            "log_samples_every=0",
            "progress=false",
        ],
        callbacks=[Gated()],
    )


# ---------------------------------------------------------------------------------------------------------------------
# TRL's side: GRPOTrainer with environment_factory


class CalculatorToolEnv:
    """Calculator-v0 behind TRL's environment protocol: `reset(**row)`, and every public method is a tool.

    Tool calls and the final answer are fed to the wrapped gymnasium env as the same assistant text our rollout
    engine would send, so grading, turn limit and rewards are the env's own.
    """

    successes: list[float] = []  # one entry per finished episode, read by the gate callback

    def __init__(self):
        import gymnasium as gym

        import envs  # noqa: F401

        self._env = gym.make(CALCULATOR, split="train")
        self._done, self._reward, self._success = True, 0.0, False

    def reset(self, seed: int, **_) -> None:
        self._env.reset(seed=int(seed))
        self._done, self._reward, self._success = False, 0.0, False

    def calculator(self, expression: str) -> str:
        """Evaluate an arithmetic expression with numbers, + - * / **, and parentheses.

        Args:
            expression: The arithmetic expression to evaluate, for example "23*(4+5)" or "7/2".

        Returns:
            The result as a number, or a message that starts with "Error:".
        """
        from envs.parsing import format_tool_call

        return self._step(format_tool_call("calculator", {"expression": expression}))

    def _step(self, text: str) -> str:
        if self._done:
            return "Error: the episode is over"
        observation, reward, terminated, truncated, info = self._env.step(text)
        self._reward += float(reward)
        self._done, self._success = terminated or truncated, bool(info.get("success", False))
        return observation

    def _finish(self, message: dict) -> float:
        """Play the last assistant message (a final answer, or calls TRL stopped before running) and score it."""
        from envs.parsing import format_tool_call

        calls = message.get("tool_calls") or []
        text = (message.get("content") or "") + "".join(
            format_tool_call(c["function"]["name"], c["function"]["arguments"]) for c in calls
        )
        while not self._done:
            self._step(text)  # past the turn limit the env truncates the episode
        CalculatorToolEnv.successes.append(float(self._success))
        return self._reward


def calculator_reward(completions, environments, **_) -> list[float]:
    """The env's episode reward for each rollout."""
    return [env._finish(completion[-1]) for completion, env in zip(completions, environments)]


def run_trl_grpo(args) -> None:
    import torch
    import trl
    from datasets import Dataset
    from fixtures import calculator_messages
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen3_template

    gate = Gate()

    class GateCallback(TrainerCallback):
        def on_train_begin(self, *_, **__):
            gate.ready(side="trl_grpo", trl_version=trl.__version__)

        def on_step_end(self, _args, state, *_, **__):
            done, CalculatorToolEnv.successes = CalculatorToolEnv.successes, []
            gate.done(step=state.global_step, success=sum(done) / max(len(done), 1), episodes=len(done))

    tokenizer = AutoTokenizer.from_pretrained(args.sft)
    tokenizer.response_template = qwen3_template  # the tiny template writes Qwen-style <tool_call> JSON
    model = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.float32)
    tasks = 4096
    dataset = Dataset.from_dict({"prompt": calculator_messages(tasks), "seed": list(range(tasks))})
    config = GRPOConfig(
        output_dir=args.out,
        seed=0,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=100000,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.episodes // args.micro_batch,
        num_generations=args.group,
        num_iterations=1,
        beta=0.0,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        max_completion_length=1024 - 160,
        generation_kwargs={"max_new_tokens": args.max_new_tokens},
        max_tool_calling_iterations=3,
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=calculator_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        environment_factory=CalculatorToolEnv,
        callbacks=[GateCallback()],
    )
    trainer.train()


# ---------------------------------------------------------------------------------------------------------------------
# Coordinator


def worker_command(args, side: str, out: str) -> list[str]:
    flags = [
        f"--episodes={args.episodes}",
        f"--group={args.group}",
        f"--micro-batch={args.micro_batch}",
        f"--lr={args.lr}",
        f"--max-new-tokens={args.max_new_tokens}",
        f"--sft={args.sft}",
    ]
    return [sys.executable, os.path.abspath(__file__), f"--worker={side}", f"--out={out}", *flags]


class Curve:
    """One side's success against its own training clock."""

    def __init__(self, window: int) -> None:
        self.window, self.points, self.clock, self.episodes = window, [], 0.0, 0

    def add(self, report: dict) -> float:
        self.clock += report["seconds"]
        self.episodes += report["episodes"]
        recent = (
            [p["success"] for p in self.points[-(self.window - 1) :]] + [report["success"]]
            if self.window > 1
            else [report["success"]]
        )
        rolling = sum(recent) / len(recent)
        self.points.append(
            {"t": self.clock, "success": report["success"], "rolling": rolling, "episodes": self.episodes}
        )
        return rolling

    def time_to(self, target: float) -> float | None:
        full = [p for i, p in enumerate(self.points) if i + 1 >= self.window and p["rolling"] >= target]
        return full[0]["t"] if full else None

    def summary(self, target: float) -> dict:
        rolled = [p["rolling"] for i, p in enumerate(self.points) if i + 1 >= self.window] or [None]
        return {
            "iterations": len(self.points),
            "seconds": self.clock,
            "episodes": self.episodes,
            "episodes_per_s": self.episodes / self.clock if self.clock else None,
            "first_success": self.points[0]["success"] if self.points else None,
            "best_rolling_success": max((r for r in rolled if r is not None), default=None),
            "final_rolling_success": rolled[-1],
            "time_to_target_s": self.time_to(target),
            "curve": [(round(p["t"], 1), round(p["success"], 3)) for p in self.points],
        }


def interleave(args, sides: list[str], folder: str) -> dict[str, Curve]:
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    curves = {side: Curve(args.window) for side in sides}
    active = list(sides)
    with Lockstep() as run:
        for side in sides:
            cmd = worker_command(args, side, os.path.join(folder, side))
            ready = run.start(side, cmd, env, os.path.join(folder, f"{side}.log"))
            print(f"   {side}: ready after {ready['setup_seconds']:.1f} s set-up", flush=True)
        round_index = 0
        while active:
            for side in round_order(active, round_index):
                report = run.step(side)
                rolling = curves[side].add(report)
                curve = curves[side]
                print(
                    f"   {side:>8} it {len(curve.points):3d}: {report['seconds']:6.1f} s wall "
                    f"({report['cpu_seconds']:6.1f} s CPU; clock {curve.clock:6.1f} s), "
                    f"success {report['success']:.2f}, rolling {rolling:.2f}",
                    flush=True,
                )
                if curve.time_to(args.target) is not None or curve.clock >= args.budget:
                    active.remove(side)
                    run.stop(side)
            print(f"   uptime: {uptime()}", flush=True)
            round_index += 1
    return curves


def summarise(args, curves: dict[str, Curve], sft: str) -> None:
    summaries = {side: curve.summary(args.target) for side, curve in curves.items()}
    print(
        f"\n   {'side':<10}{'iters':>6}{'train s':>9}{'episodes/s':>12}{'first':>7}{'best':>7}"
        f"{'t to ' + format(args.target, '.0%'):>14}"
    )
    for side, s in summaries.items():
        print(
            f"   {side:<10}{s['iterations']:>6}{s['seconds']:>9.0f}{fmt(s['episodes_per_s']):>12}"
            f"{fmt(s['first_success']):>7}{fmt(s['best_rolling_success']):>7}"
            f"{fmt(s['time_to_target_s'], 0) + ' s' if s['time_to_target_s'] else 'not reached':>14}"
        )
    ratios = {}
    trl = summaries.get("trl_grpo")
    for side in ("ppo", "grpo"):
        if side in summaries and trl and summaries[side]["time_to_target_s"] is not None:
            ours_t = summaries[side]["time_to_target_s"]
            # If TRL never reached the target, its time is only known to exceed its clock: the ratio is a bound.
            trl_t = trl["time_to_target_s"] or trl["seconds"]
            ratios[side] = {"ratio": ours_t / trl_t, "is_upper_bound": trl["time_to_target_s"] is None}
            bound = "<= " if ratios[side]["is_upper_bound"] else ""
            print(f"   {side} time to target / TRL's: {bound}{ratios[side]['ratio']:.2f}")
    emit(
        BENCH,
        sides=summaries,
        ratios=ratios,
        target=args.target,
        window=args.window,
        budget_s=args.budget,
        episodes_per_iteration=args.episodes,
        group=args.group,
        lr=args.lr,
        sft=sft,
        model=args.model,
        layers=args.layers if args.model != "tiny" else None,
        uptime=uptime(),
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        {
            "ppo": lambda: run_ours(args, "gae"),
            "grpo": lambda: run_ours(args, "grpo"),
            "trl_grpo": lambda: run_trl_grpo(args),
        }[args.worker]()
        return
    sides = [s for s in args.sides.split(",") if s]
    banner(
        f"{BENCH}: {', '.join(sides)} on {CALCULATOR}, {args.episodes} episodes/iteration, budget "
        f"{args.budget:.0f} s per side, target {args.target:.0%} over {args.window} iterations"
    )
    t0 = time.time()
    if not args.sft:
        from fixtures import sft_policy

        args.sft = sft_policy(args.sft_steps, model=args.model, layers=args.layers)
    print(f"   SFT policy: {args.sft}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_multiturn_") as folder:
        try:
            curves = interleave(args, sides, folder)
        except WorkerFailed as err:
            print(f"   FAILED: {err}", flush=True)
            emit(BENCH, error=str(err).splitlines()[0])
            raise SystemExit(1) from None
    summarise(args, curves, args.sft)
    print(f"   total {time.time() - t0:.0f} s; uptime: {uptime()}", flush=True)


if __name__ == "__main__":
    main()
