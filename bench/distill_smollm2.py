"""Distillation on a real model: the SmolLM2-135M-Instruct SFT policy (teacher) into a 12-layer SmolLM2 student.

    .venv/bin/python bench/distill_smollm2.py                   # teacher runs/smollm2/sft/final, 200 episodes per env
    .venv/bin/python bench/distill_smollm2.py --work /tmp/d27   # keep the runs; a second call continues
    .venv/bin/python bench/distill_smollm2.py --quick           # smoke sizes (2-layer teacher and student, 4 episodes)

Does on-policy distillation move a small student further than supervised fine-tuning on the expert demonstrations
for the same compute? One student, two arms from the same start, the same held-out episodes:
1. student: SmolLM2-135M-Instruct keeping decoder layers --keep (default 0-5 and 24-29: 12 of 30 layers, 71 M of
   135 M parameters; of the 12-layer subsets tried, first 12, every other one, 0-9 + 28-29, this one starts with the
   lowest loss on the demonstrations, though every subset starts far above the full model), fully fine-tuned by
   `rlagent sft` for --sft-steps on expert demonstrations of Calculator-v0 and KBSearch-v0: the warm start;
2. arm "distill": `rlagent distill` (on_policy) from that student for --distill-steps iterations: the student plays,
   the teacher (--teacher, default runs/smollm2/sft/final, built by configs/smollm2/sft.yaml when absent) grades
   each sampled token by reverse KL;
3. arm "sft": `rlagent sft` from the same student for as many seconds as arm "distill" spent in its iterations
   (rollout + update: max_seconds), on demonstrations drawn with another seed;
4. `rlagent eval --compare` of the warm start, both arms and (unless --no-teacher) the teacher on the same --episodes
   held-out test episodes per environment, greedy: success with Wilson intervals, Fisher and paired McNemar p-values
   against the warm start, and arm "distill" against arm "sft" (the same episodes, compared without re-running).
Every step's output folder under --work is reused when it holds final/, so an interrupted run continues. Prints one
RESULT line for bench/run_all.py. Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path[:0] = [REPO_DIR, BENCH_DIR]

from report import RESULT_PREFIX, banner  # noqa: E402

ENVS = ("rlagent/Calculator-v0", "rlagent/KBSearch-v0")
DEFAULT_TEACHER = os.path.join(REPO_DIR, "runs", "smollm2", "sft", "final")
SMOLLM2 = "smollm2-135m-instruct"
ENV_LIST = f"data.env_ids=[{','.join(ENVS)}]"
# Both SFT runs of the student (warm start, SFT arm): full fine-tuning on the two environments' demonstrations.
STUDENT_SFT = ("sft", "--config", "configs/smollm2/sft.yaml", "model.lora.enabled=false",
               "model.gradient_checkpointing=false", ENV_LIST)  # fmt: skip


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", help="teacher policy folder (default runs/smollm2/sft/final; built if absent)")
    parser.add_argument("--keep", default="0-5,24-29", help="student's decoder layers of SmolLM2 (ranges, 0-based)")
    parser.add_argument("--sft-steps", type=int, default=300, help="warm-start SFT steps of the student (batch 8)")
    parser.add_argument("--distill-steps", type=int, default=20, help="on-policy distillation iterations")
    parser.add_argument("--distill-episodes", type=int, default=16, help="student episodes per iteration")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of both arms (constant)")
    parser.add_argument("--episodes", type=int, default=200, help="held-out episodes per environment")
    parser.add_argument("--no-teacher", action="store_true", help="leave the teacher out of the evaluation")
    parser.add_argument("--work", help="where the runs go (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="smoke: 2-layer teacher and student, a few steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.keep, args.sft_steps, args.distill_steps, args.distill_episodes, args.episodes = "0-1", 4, 2, 4, 4
    return args


def layer_list(spec: str) -> list[int]:
    """'0-7,28-29' -> [0, 1, ..., 7, 28, 29]."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def rlagent(*argv: str, log: str) -> None:
    """One `rlagent` subcommand in its own process (output to `log`); raises with the log's tail on failure."""
    quiet = [] if argv[0] == "eval" else ["progress=false"]  # eval takes flags, not key=value overrides
    cmd = [sys.executable, "-m", "rlagent.cli", *argv, *quiet]
    print(f"   $ rlagent {' '.join(argv)}", flush=True)
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.run(cmd, cwd=REPO_DIR, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log, encoding="utf-8") as handle:
            raise RuntimeError(f"rlagent {argv[0]} failed ({proc.returncode}); {log}:\n{handle.read()[-3000:]}")


def done(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "final"))


def build_teacher(args: argparse.Namespace, work: str) -> str:
    """--teacher, runs/smollm2/sft/final, or (--quick) a 2-layer SmolLM2 copy trained for a few SFT steps."""
    if args.teacher:
        return args.teacher
    if args.quick:
        from fixtures import sft_policy

        return sft_policy(max_steps=4, model="smollm2", layers=2)
    if not done(os.path.dirname(DEFAULT_TEACHER)):
        rlagent("sft", "--config", "configs/smollm2/sft.yaml", log=os.path.join(work, "teacher_sft.log"))
    return DEFAULT_TEACHER


def build_student(args: argparse.Namespace, work: str) -> str:
    """Step 1: the layer subset of SmolLM2, then its brief SFT warm start; returns the warm start's final/."""
    from rlagent.common.model_sources import layer_subset_copy, resolve_model_path

    base, out = os.path.join(work, "student_base"), os.path.join(work, "student_sft")
    if not os.path.isdir(base):
        layer_subset_copy(resolve_model_path(SMOLLM2), layer_list(args.keep), base)
    if not done(out):
        rlagent(*STUDENT_SFT, f"output_dir={out}", f"model.name_or_path={base}", "optim.lr=3e-4",
                "optim.warmup_ratio=0.05", f"max_steps={args.sft_steps}", "data.episodes=1200", "save_every=50",
                "eval_every=100", "log_every=5", log=out + ".log")  # fmt: skip
    return os.path.join(out, "final")


def distill_arm(args: argparse.Namespace, work: str, student: str, teacher: str) -> tuple[str, float]:
    """Step 2: on-policy distillation; returns (final/, seconds spent in its iterations)."""
    out = os.path.join(work, "distill")
    batch = min(8, args.distill_episodes)  # episodes per optimizer step
    if not done(out):
        rlagent("distill", "--config", "configs/distill/tiny.yaml", f"output_dir={out}",
                f"model.name_or_path={student}", f"teacher.name_or_path={teacher}", f"max_steps={args.distill_steps}",
                f"env.ids=[{','.join(ENVS)}]", f"env.episodes={args.distill_episodes}", f"optim.lr={args.lr}",
                f"optim.batch_size={batch}", f"optim.micro_batch_size={max(1, batch // 2)}", "distill.eval_episodes=0",
                "model.dtype=auto", "teacher.dtype=auto", "rollout.dtype=auto", "log_every=1", "save_every=4",
                "eval_every=0",
                log=out + ".log")  # fmt: skip
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    seconds = sum(row.get("timing/rollout_s", 0.0) + row.get("timing/train_s", 0.0) for row in rows)
    return os.path.join(out, "final"), seconds


def sft_arm(args: argparse.Namespace, work: str, student: str, seconds: float) -> tuple[str, int]:
    """Step 3: more SFT from the same student for the same seconds; returns (final/, steps it took)."""
    out = os.path.join(work, "sft_more")
    if not done(out):
        rlagent(*STUDENT_SFT, f"output_dir={out}", f"model.name_or_path={student}", f"optim.lr={args.lr}",
                "optim.schedule=constant", "optim.warmup_ratio=0", "max_steps=100000", f"max_seconds={seconds:.1f}",
                "data.episodes=600", "seed=1", "save_every=0", "eval_every=0", "log_every=5",
                log=out + ".log")  # fmt: skip
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        return os.path.join(out, "final"), int(json.load(handle)["steps"])


KEYS = (
    "success_rate",
    "success_ci95",
    "successes",
    "episodes",
    "invalid_tool_call_rate",
    "difference",
    "p_value",
    "p_value_mcnemar",
    "discordant",
)


def evaluate(args: argparse.Namespace, work: str, policies: dict[str, str]) -> tuple[dict, dict]:
    """Step 4: `rlagent eval --compare` of `policies` (the first is the baseline) on both environments; returns
    ({name: {env: result}}, {env: arm "distill" against arm "sft"}), both tests on the same episodes."""
    from rlagent.cli.evaluate import compare

    out, names = os.path.join(work, "eval.json"), list(policies)
    if not os.path.isfile(out):
        env_args = [arg for env in ENVS for arg in ("--env", env)]
        rlagent("eval", "--compare", *policies.values(), *env_args, "--episodes", str(args.episodes), "--seed", "0",
                "--out", out, log=os.path.join(work, "eval.log"))  # fmt: skip
    with open(out, encoding="utf-8") as handle:
        data = json.load(handle)
    table, head_to_head = {}, {}
    for env in data["envs"]:
        results = dict(zip(names, env["results"]))
        for name, result in results.items():
            table.setdefault(name, {})[env["env"]] = {key: result.get(key) for key in KEYS}
        head_to_head[env["env"]] = compare(results["sft"], results["distill"])
    return table, head_to_head


def main() -> None:
    args = parse()
    banner("distillation: SmolLM2 SFT teacher -> 12-layer SmolLM2 student, on-policy vs SFT for the same seconds")
    work = args.work or tempfile.mkdtemp(prefix="rlagent-distill-bench-")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")
    started = time.time()
    teacher = build_teacher(args, work)
    student = build_student(args, work)
    distilled, seconds = distill_arm(args, work, student, teacher)
    sft_more, sft_steps = sft_arm(args, work, student, seconds)
    policies = {"warm_start": student, "distill": distilled, "sft": sft_more}
    if not args.no_teacher:
        policies["teacher"] = teacher
    vs_warm, distill_vs_sft = evaluate(args, work, policies)
    layers = len(layer_list(args.keep))
    print(f"   arms: {args.distill_steps} distillation iterations x {args.distill_episodes} episodes = "
          f"{seconds:.0f} s; SFT for the same seconds = {sft_steps} steps of 8 conversations", flush=True)  # fmt: skip
    for name, per_env in vs_warm.items():
        cells = " | ".join(f"{env.split('/')[1]} {r['success_rate']:.1%} ({r['successes']}/{r['episodes']})"
                           + (f" p {r['p_value_mcnemar']:.2g}" if r.get("p_value_mcnemar") is not None else "")
                           for env, r in per_env.items())  # fmt: skip
        print(f"   {name:<11} {cells}", flush=True)
    for env, test in distill_vs_sft.items():
        print(
            f"   distill - sft on {env.split('/')[1]}: {test['difference']:+.1%}, Fisher p {test['p_value']:.2g}, "
            f"McNemar p {test.get('p_value_mcnemar', float('nan')):.2g} {test.get('discordant')}",
            flush=True,
        )
    result = {"benchmark": "distill_smollm2", "teacher": teacher, "student_layers": layers, "keep": args.keep,
              "sft_steps": args.sft_steps, "distill_steps": args.distill_steps,
              "distill_episodes": args.distill_episodes, "lr": args.lr, "arm_seconds": round(seconds, 1),
              "sft_arm_steps": sft_steps, "episodes": args.episodes, "vs_warm_start": vs_warm,
              "distill_vs_sft": distill_vs_sft, "seconds": round(time.time() - started, 1)}  # fmt: skip
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
