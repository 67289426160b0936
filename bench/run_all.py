"""Run every benchmark in bench/ as a subprocess and collect the numbers it printed (`make bench`).

    .venv/bin/python bench/run_all.py                      # all benchmarks, default sizes; prints, writes nothing
    .venv/bin/python bench/run_all.py --write              # ... and records the results in bench/RESULTS.md
    .venv/bin/python bench/run_all.py --quick              # ~1-minute smoke run of each
    .venv/bin/python bench/run_all.py --only ppo_vs_trl_ppo --write --wait-idle 600
    .venv/bin/python bench/run_all.py --only rollout_throughput --write -- --policy runs/quickstart/sft/final
    .venv/bin/python bench/run_all.py --only kill_resume --write   # opt-in (OPT_IN): minutes of kill -9 / resume

With --write, each benchmark's result lines are appended to bench/results.jsonl with the date, machine (nproc,
platform, CPU), package versions, load averages before and after, and the exact command; bench/RESULTS.md's
generated section is then re-rendered from that file (the latest runs of each benchmark). Text outside the
generated section (the notes on what limits each number) is kept. Benchmarks print measured numbers only; nothing
here asserts a speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

from report import load_1min, machine, parse_results, uptime, versions

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
RESULTS_JSONL = os.path.join(BENCH_DIR, "results.jsonl")
RESULTS_MD = os.path.join(BENCH_DIR, "RESULTS.md")
BEGIN, END = "<!-- run_all: generated, do not edit by hand -->", "<!-- run_all: end -->"

# name -> extra arguments for a --quick run (rollout_throughput.py, written separately, has no --quick flag).
BENCHMARKS = {
    "rollout_throughput": ["--episodes", "8", "--sft-steps", "20", "--repeats", "1"],
    "generation_backends": ["--quick"],
    "ppo_vs_trl_ppo": ["--quick"],
    "ppo_vs_trl_ppo_smollm2": ["--quick"],
    "ppo_vs_trl_ppo_smollm2_bf16": ["--quick"],
    "multiturn_vs_trl_grpo": ["--quick"],
    "multiturn_vs_trl_grpo_smollm2": ["--quick"],
    "memory_lora_vs_full": ["--quick"],
    "memory_sharded": ["--quick"],
    "sft_real_shape": ["--quick"],
    "memory_phases": ["--quick"],
    "ppo_learning": ["--quick"],
    "ppo_precision_ab": ["--quick"],
    "bf16_autocast_ab": [],
    "kill_resume": ["--kills", "2"],
    "quickstart_spread": ["--quick"],
    "serving": ["--quick"],
    "distill_smollm2": ["--quick"],
}
# Names that run another script with fixed arguments: name -> (script, arguments of every run).
VARIANTS = {
    "ppo_vs_trl_ppo_smollm2": ("ppo_vs_trl_ppo", ["--model", "smollm2", "--layers", "2"]),
    "ppo_vs_trl_ppo_smollm2_bf16": ("ppo_vs_trl_ppo", ["--model", "smollm2", "--layers", "2", "--precision", "bf16"]),
    "multiturn_vs_trl_grpo_smollm2": ("multiturn_vs_trl_grpo", ["--model", "smollm2", "--layers", "2"]),
}
# Run only when named with --only: robustness checks, not speeds (minutes of kill/resume cycles; quickstart_spread
# trains the quickstart's SFT stage 9 times, about an hour on an idle 2-core machine; distill_smollm2 trains and
# evaluates three SmolLM2 students, over an hour).
OPT_IN = {"kill_resume", "quickstart_spread", "distill_smollm2"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute each)")
    parser.add_argument("--write", action="store_true", help="record results in results.jsonl and RESULTS.md")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all present)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each benchmark, wait up to this long for the 1-min load to drop below nproc/2",
    )
    parser.add_argument("--render", action="store_true", help="only re-render RESULTS.md from results.jsonl")
    parser.add_argument("extra", nargs="*", help="after --: arguments passed to the ONE benchmark named by --only")
    args = parser.parse_args(argv)
    if args.extra and len([n for n in args.only.split(",") if n]) != 1:
        parser.error("arguments after -- need exactly one benchmark in --only")
    return args


def wait_for_idle(limit_s: float) -> None:
    """Poll the load average until it drops below half the CPUs or `limit_s` passes (the machine is shared)."""
    threshold, t0 = (os.cpu_count() or 1) / 2, time.time()
    while load_1min() >= threshold and time.time() - t0 < limit_s:
        time.sleep(15)
    print(f"-- load {load_1min():.2f} (threshold {threshold:.1f}) after waiting {time.time() - t0:.0f} s", flush=True)


def run_benchmark(name: str, quick: bool, extra: list[str] | None = None) -> dict:
    """Run bench/NAME.py, streaming its output; returns its result lines plus context for the record."""
    script, fixed = VARIANTS.get(name, (name, []))
    cmd = [sys.executable, os.path.join("bench", f"{script}.py"), *fixed, *(BENCHMARKS[name] if quick else [])]
    cmd += extra or []
    record = {
        "name": name,
        "command": " ".join(shlex.quote(c) for c in cmd),
        "quick": quick,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "uptime_before": uptime(),
    }
    print(f"\n-- {record['command']}\n-- {record['uptime_before']}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip("\n"))
    record.update(returncode=proc.wait(), seconds=round(time.time() - t0, 1), uptime_after=uptime())
    record["results"] = parse_results("\n".join(lines))
    if not record["results"]:
        # A benchmark without result lines (rollout_throughput.py prints plain text): keep its last lines verbatim.
        record["output_tail"] = [line for line in lines if line.strip() and "Writing model shards" not in line][-7:]
    return record


def append_records(records: list[dict]) -> None:
    context = {"machine": machine(), "versions": versions()}
    with open(RESULTS_JSONL, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps({**record, **context}) + "\n")


def read_records() -> list[dict]:
    if not os.path.isfile(RESULTS_JSONL):
        return []
    with open(RESULTS_JSONL, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ---------------------------------------------------------------------------------------------------------------------
# Rendering: one section per benchmark, its full-size runs (newest last), quick runs only if there is nothing else


def num(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_ppo(result: dict) -> list[str]:
    if "error" in result:
        return [f"| failed: {result['error']} |"]
    rows = [
        "| side | s / iteration (median) | CPU s / iteration | generation s / iteration | response tokens / "
        "iteration | response tokens / s |",
        "|---|---|---|---|---|---|",
    ]
    for side, label in (("ours", "rlagent"), ("trl", f"TRL {result['trl_version']} PPOTrainer")):
        s = result[side]
        rows.append(
            f"| {label} | {num(s['s_per_iter'])} | {num(s['cpu_s_per_iter'])} | "
            f"{num(s['generation_s_per_iter'])} | {s['response_tokens_per_iter']:.0f} | {num(s['tokens_per_s'], 1)} |"
        )
    rows += [
        "",
        f"**Speed-up (TRL s/iteration ÷ ours): {num(result['speedup'])}x wall** (median of per-round ratios "
        f"{num(result['speedup_paired_median'])}x; CPU time {num(result['speedup_cpu'])}x). Setup: batch "
        f"{result['batch']}, {result['response_length']} response tokens, {result['epochs']} PPO epochs, "
        f"micro-batch {result['micro_batch']}, {result['iterations']} measured iterations per side, "
        f"model {result.get('tiny', result.get('hidden'))}.",
    ]
    return rows


def render_multiturn(result: dict) -> list[str]:
    if "error" in result:
        return [f"| failed: {result['error']} |"]
    rows = [
        f"| side | iterations | training s | episodes / s | first-iteration success | best success "
        f"(mean of {result['window']} iterations) | time to {result['target']:.0%} |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"ppo": "rlagent PPO (GAE)", "grpo": "rlagent GRPO", "trl_grpo": "TRL GRPOTrainer(environment_factory)"}
    for side, s in result["sides"].items():
        reached = f"{s['time_to_target_s']:.0f} s" if s["time_to_target_s"] is not None else "not reached"
        rows.append(
            f"| {names.get(side, side)} | {s['iterations']} | {s['seconds']:.0f} | {num(s['episodes_per_s'])} | "
            f"{num(s['first_success'])} | {num(s['best_rolling_success'])} | {reached} |"
        )
    for side, r in result.get("ratios", {}).items():
        bound = "≤ " if r["is_upper_bound"] else ""
        rows.append(
            f"\n{names[side]} time to {result['target']:.0%} ÷ TRL's: **{bound}{r['ratio']:.2f}**"
            + (
                " (TRL did not reach the target; its budget is used, so this is an upper bound)"
                if r["is_upper_bound"]
                else ""
            )
        )
    rows.append(
        f"\nBudget {result['budget_s']:.0f} s of training per side, {result['episodes_per_iteration']} episodes "
        f"per iteration (GRPO groups of {result['group']}), lr {result['lr']}. Success vs training seconds:"
    )
    for side, s in result["sides"].items():
        curve = ", ".join(f"{t:.0f}s:{v:.2f}" for t, v in s["curve"])
        rows.append(f"- {side}: {curve}")
    return rows


def render_memory_sharded(result: dict) -> list[str]:
    rows = ["| fine-tuning | 1 process (MiB) | FSDP2, 2 processes: rank 0 / rank 1 (MiB) |", "|---|---|---|"]
    for kind in ("full", "lora"):
        ranks = " / ".join(f"{peak:.0f}" for peak in result[f"fsdp2_{kind}"])
        rows.append(f"| {kind} | {result[f'one_{kind}']:.0f} | {ranks} |")
    rows.append(f"\n{result['model']}, {result['steps']} SFT steps of {result['batch']} conversations, fp32.")
    return rows


def render_memory(result: dict) -> list[str]:
    rows = [
        "| variant | trainable / total parameters | peak RSS (MiB) | added by training (MiB) | tokens / s |",
        "|---|---|---|---|---|",
    ]
    for variant in ("baseline", "full", "lora"):
        r = result[variant]
        added = num(r.get("training_mib"), 0) if variant != "baseline" else "—"
        rows.append(
            f"| {variant} | {r['trainable']:,} / {r['total']:,} | {r['peak_rss_mib']:.0f} | {added} | "
            f"{num(r.get('tokens_per_s'), 0)} |"
        )
    rows.append(
        f"\nFull fine-tuning adds **{num(result['training_ratio'], 1)}x** the memory LoRA (r={result['lora_r']}) "
        f"adds. Tiny Llama hidden {result['hidden']}, {result['layers']} layers, {result['steps']} SFT steps of "
        f"{result['batch']} conversations."
    )
    if "grad_and_adam_mib" in result["full"]:
        rows.append(
            f"For reference (computed, not measured): fp32 gradients + AdamW moments of the trainable parameters "
            f"take {result['full']['grad_and_adam_mib']:.0f} MiB (full) and "
            f"{result['lora']['grad_and_adam_mib']:.0f} MiB (LoRA)."
        )
    return rows


def render_sft_real_shape(result: dict) -> list[str]:
    rows = ["| side | tokens / s | vs plain HF | peak RSS (MiB) | after set-up (MiB) |", "|---|---|---|---|---|"]
    order = ("hf", "rlagent", "rlagent-lora", "lora-full", "lora-ckpt", "trl-sft")
    sides = [side for side in order if side in result]
    for side in sides:
        r = result[side]
        ratio = r["tokens_per_s"] / result["hf"]["tokens_per_s"] if "hf" in result else None
        rows.append(
            f"| {side} | {num(r['tokens_per_s'], 1)} | {num(ratio, 2) + 'x' if ratio else 'n/a'} | "
            f"{r['peak_rss_mib']:.0f} | "
            f"{r['setup_rss_mib']:.0f} |"
        )
    fraction = result[sides[0]]["target_fraction"]
    rows.append(
        f"\n{result['shape']}; optimizer steps of {result['batch']} conversations in micro-batches of "
        f"{result['micro']} x {result['width']} tokens, {result['steps']} measured step(s) per side after warm-up; "
        f"the loss is on {100 * fraction:.0f} % of the real tokens."
    )
    return rows


def render_memory_phases(result: dict) -> list[str]:
    rows = ["| stage | phase (when it ends) | RSS (MiB) | peak so far (MiB) | peak rise (MiB) |"]
    rows.append("|---|---|---|---|---|")
    for stage in ("sft", "ppo"):
        for p in result[stage]:
            rows.append(
                f"| {stage} | {p['phase']} | {p['rss_mib']:.0f} | {p['peak_mib']:.0f} | {p['peak_rise_mib']:.0f} |"
            )
    overrides = ", ".join(result.get("overrides") or []) or "none"
    rows.append(f"\nSmolLM2-135M-Instruct, {result['layers']} decoder layers, {result['steps']} step(s) per stage; "
                f"overrides: {overrides}.")  # fmt: skip
    return rows


def render_generation_backends(r: dict) -> list[str]:
    rows = [f"{r['env']}, {r['episodes']} episodes, shared prefix {r['prefix_tokens']} tokens:", ""]
    rows += ["| run | generated tokens/s | CPU s per 1k tokens |", "|---|---|---|"]
    labels = {"old_engine": "engine, fp32, no prefix cache (old)", "raw_fp32": "raw generate, fp32",
              "new_engine": "engine, bf16 + prefix cache (new)", "raw_bf16": "raw generate, bf16"}  # fmt: skip
    for name, label in labels.items():
        rows.append(f"| {label} | {r[name + '_tokens_per_s']} | {r[name + '_cpu_s_per_1k_tokens']} |")
    rows.append(f"\nnew / old engine = {r['new_vs_old']}x; new engine / raw bf16 = {r['new_vs_raw_bf16']}x; "
                f"old engine / raw fp32 = {r['old_vs_raw_fp32']}x.\n")  # fmt: skip
    return rows


def render_kill_resume(r: dict) -> list[str]:
    return [
        f"- {r['stage']}: {r['kills']} kills ({r['kills_in_checkpoint_write']} inside a checkpoint write), "
        f"{r['resumes_exact']}/{r['resumes']} resumes continued exactly, lost / corrupt / partial checkpoints "
        f"{r['lost_checkpoints']} / {r['corrupt_checkpoints']} / {r['partial_checkpoints']}, crashes {r['crashes']}; "
        f"final weights max |diff| {r.get('final_weights_max_diff')}, metrics max |diff| {r.get('metrics_max_diff')}; "
        f"summary.json keys that differ: {', '.join(r.get('summary_mismatched_keys', [])) or 'none'} "
        f"({r['seconds']:.0f} s)"
    ]


def render_quickstart_spread(r: dict) -> list[str]:
    rows = [
        f"Settings {', '.join(r['settings'])} x seeds {', '.join(map(str, r['seeds']))}; SFT steps {r['sft_steps']}, "
        f"{r['episodes']} held-out episodes per environment{' (full quickstart)' if r['full'] else ''}.",
        "",
        "| number | mean | min | max | runs |",
        "|---|---|---|---|---|",
    ]
    for key, s in r["spread"].items():
        rows.append(f"| {key} | {s['mean']:.4f} | {s['min']:.4f} | {s['max']:.4f} | {s['n']} |")
    return rows


def render_serving(r: dict) -> list[str]:
    rows = [f"Policy {r['policy']}; {r['episodes']} held-out episodes per environment, {r['prompts']} prompts for "
            f"tokens/s, {r['requests']} server requests per concurrency level, max_new_tokens {r['max_new_tokens']}.",
            "", "| variant | tokens/s c1 | tokens/s c16 | peak RSS MiB | disk MiB | Calculator | KBSearch | "
            "p50/p99 s c1 | c4 | c16 |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, v in r["variants"].items():
        success = [f"{v['held_out'][env]['success_rate']:.1%}" for env in sorted(v["held_out"])]
        latency = [f"{v['latency'][c]['p50_s']} / {v['latency'][c]['p99_s']}" for c in ("c1", "c4", "c16")]
        rows.append(f"| {name} | {v['c1']['tokens_per_s']} | {v['c16']['tokens_per_s']} | {v['peak_rss_mib']} | "
                    f"{v['size_bytes'] / 2**20:.1f} | {' | '.join(success)} | {' | '.join(latency)} |")  # fmt: skip
    if r.get("summary"):
        rows.append("\n" + ", ".join(f"{key} = {value}" for key, value in r["summary"].items()) + "\n")
    return rows


def render_distill(r: dict) -> list[str]:
    rows = [f"Teacher {r['teacher']}; student: SmolLM2 layers {r['keep']} ({r['student_layers']} layers), warm start "
            f"{r['sft_steps']} SFT steps; arms: {r['distill_steps']} on-policy iterations x {r['distill_episodes']} "
            f"episodes = {r['arm_seconds']} s vs SFT for the same seconds ({r['sft_arm_steps']} steps), lr {r['lr']}; "
            f"{r['episodes']} held-out episodes per environment (greedy).",
            "", "| student | Calculator-v0 | KBSearch-v0 |", "|---|---|---|"]  # fmt: skip
    for name, per_env in r["vs_warm_start"].items():
        cells = [f"{v['success_rate']:.1%} ({v['successes']}/{v['episodes']})"
                 + (f", McNemar p {v['p_value_mcnemar']:.2g} vs warm start" if v.get("p_value_mcnemar") is not None
                    else "") for v in per_env.values()]  # fmt: skip
        rows.append(f"| {name} | {' | '.join(cells)} |")
    tests = [f"{env.split('/')[1]} {t['difference']:+.1%} (McNemar p {t.get('p_value_mcnemar', float('nan')):.2g})"
             for env, t in r["distill_vs_sft"].items()]  # fmt: skip
    rows.append(f"\ndistill - sft: {', '.join(tests)}\n")
    return rows


RENDERERS = {
    "quickstart_spread": render_quickstart_spread,
    "kill_resume": render_kill_resume,
    "ppo_vs_trl_ppo": render_ppo,
    "ppo_vs_trl_ppo_smollm2": render_ppo,
    "multiturn_vs_trl_grpo": render_multiturn,
    "multiturn_vs_trl_grpo_smollm2": render_multiturn,
    "memory_lora_vs_full": render_memory,
    "memory_sharded": render_memory_sharded,
    "sft_real_shape": render_sft_real_shape,
    "memory_phases": render_memory_phases,
    "generation_backends": render_generation_backends,
    "serving": render_serving,
    "distill_smollm2": render_distill,
}
TITLES = {
    "rollout_throughput": "Rollout throughput",
    "generation_backends": "Rollout generation on SmolLM2-135M: fp32 engine vs bf16 + shared prefix vs raw generate",
    "ppo_vs_trl_ppo": "Single-turn PPO: rlagent vs TRL 1.12 PPOTrainer",
    "ppo_vs_trl_ppo_smollm2": "Single-turn PPO at SmolLM2's shape (vocabulary 49,152, 2 decoder layers) vs TRL 1.12",
    "multiturn_vs_trl_grpo": "Multi-turn Calculator-v0: rlagent PPO / GRPO vs TRL GRPOTrainer",
    "multiturn_vs_trl_grpo_smollm2": "Multi-turn Calculator-v0 at SmolLM2's shape (2 layers) vs TRL GRPOTrainer",
    "memory_lora_vs_full": "Peak memory: full fine-tuning vs LoRA",
    "memory_sharded": "Peak memory per process: one process vs FSDP full shard on two (CPU, gloo)",
    "sft_real_shape": "SFT at a real vocabulary (SmolLM2-135M): rlagent step vs plain HF step, speed and peak RSS",
    "memory_phases": "Peak memory by phase of rlagent sft / ppo on SmolLM2-135M-Instruct (LoRA)",
    "ppo_learning": "PPO learning from a weak SFT policy (Calculator-v0, environment reward)",
    "kill_resume": "SIGKILL and resume_from=auto vs an uninterrupted run",
    "quickstart_spread": "Tiny quickstart under CPU kernel settings x seeds (SFT eval loss, held-out greedy success)",
    "serving": "Shipping: torch fp32 / bf16 vs ONNX Runtime fp32 / INT8 (SmolLM2 SFT policy): speed, memory, success",
    "distill_smollm2": "Distillation: SmolLM2 SFT teacher into a 12-layer SmolLM2 student, on-policy vs SFT",
}


def render_record(record: dict) -> list[str]:
    m, v = record["machine"], record["versions"]
    lines = [
        f"#### {record['started']} — `{record['command']}` (exit {record['returncode']}, {record['seconds']:.0f} s)",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['platform']}, Python {m['python']}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + ". Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + ".",
        f"Load before: `{record['uptime_before']}`; after: `{record['uptime_after']}`.",
        "",
    ]
    renderer = RENDERERS.get(record["name"])
    if renderer and record["results"]:
        for result in record["results"]:
            lines += renderer(result)
    elif record.get("output_tail"):
        lines += ["```", *record["output_tail"], "```"]
    else:
        lines.append("(no results printed)")
    return lines + [""]


def render(records: list[dict], keep: int = 3) -> str:
    out = [BEGIN, "", "## Measured results (rendered by `bench/run_all.py --write` from `bench/results.jsonl`)", ""]
    for name in BENCHMARKS:
        mine = [r for r in records if r["name"] == name]
        full = [r for r in mine if not r["quick"]]
        shown = (full or mine)[-keep:]
        if not shown:
            continue
        out += [f"### {TITLES[name]}", ""]
        for record in shown:
            out += render_record(record)
    return "\n".join(out + [END]) + "\n"


def write_markdown(records: list[dict]) -> None:
    text = open(RESULTS_MD, encoding="utf-8").read() if os.path.isfile(RESULTS_MD) else "# Benchmark results\n\n"
    block = render(records)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(RESULTS_MD, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"-- wrote {RESULTS_MD}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render:
        write_markdown(read_records())
        return
    present = [n for n in BENCHMARKS if os.path.isfile(os.path.join(BENCH_DIR, f"{VARIANTS.get(n, (n,))[0]}.py"))]
    names = [n for n in args.only.split(",") if n] or [n for n in present if n not in OPT_IN]
    unknown = set(names) - set(present)
    if unknown:
        raise SystemExit(f"run_all: unknown or missing benchmark(s): {sorted(unknown)}; present: {present}")
    records = []
    for name in names:
        if args.wait_idle:
            wait_for_idle(args.wait_idle)
        records.append(run_benchmark(name, args.quick, args.extra))
    print("\n-- summary")
    for record in records:
        status = "ok" if record["returncode"] == 0 else f"FAILED (exit {record['returncode']})"
        print(
            f"   {record['name']:<24} {status:<16} {record['seconds']:7.0f} s  {len(record['results'])} result line(s)"
        )
    if args.write:
        append_records(records)
        write_markdown(read_records())
    if any(record["returncode"] != 0 for record in records):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
