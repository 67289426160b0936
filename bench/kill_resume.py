"""Kill -9 and resume: every stage, SIGKILLed at random moments and while a checkpoint is being written, must end
with the same weights and metrics as an uninterrupted run of the same seed.

    python bench/kill_resume.py [--kills 10] [--stages sft,reward,ppo] [--seed 0] [--steps N] [--workdir DIR]

For each stage, on a tiny config that checkpoints every step (STAGES below):
1. Reference: one uninterrupted run (keep_checkpoints large, so every step's checkpoint can be compared).
2. Killed run, in a fresh output dir: start `rlagent <stage> ... resume_from=auto` as its own process group and
   SIGKILL the group, alternating two kinds of moment:
   - checkpoint: poll (2 ms) for a NEW `checkpoints/step-N.tmp` (or `final.tmp`) folder, wait 0-3 more of them,
     then at once or after a random 0-50 ms, and kill — inside the write, the rename or the pruning that follows;
   - random: a uniform delay over the next slice of the run (start-up included, so some kills land while the
     previous checkpoint is being loaded or metrics.jsonl is being trimmed), cut short if the run starts its
     last checkpoint or final/ first (so every kill lands before the run can finish).
   After `--kills` kills the run is allowed to finish.
3. After every kill: every `checkpoints/step-N` holding COMPLETE must load (training_state.pt, rng files, every
   safetensors file); a folder without COMPLETE is counted as partial (resume ignores it); the latest complete step
   must never go back (a lost checkpoint). A kill "landed in a checkpoint write" when a fresh *.tmp folder is left.
4. Every launch's own metrics rows (steps after the checkpoint it resumed from) and every checkpoint it wrote are
   compared with the reference's; a resume "continued exactly" when all of them match.
5. At the end: final/ tensors (max |diff| per tensor), metrics.jsonl (after a resume the tracker drops the rows
   logged after the checkpoint, so duplicate steps are counted as a defect; if any exist, the LAST row per step is
   compared), samples.jsonl and summary.json. Timing keys (TIMING_KEYS) are excluded; everything else must be equal
   within --tol (CPU runs are bitwise reproducible, so the measured differences are 0).

Prints one `RESULT {json}` line per stage (bench/report.py format). Numbers only: nothing here asserts; the slow test
tests/rlagent/test_kill_resume.py asserts on them with a small number of kills.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SMALL_MODEL = [
    "model.name_or_path=tiny",
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=128",
]
# Tiny runs that checkpoint every step: a kill anywhere is at most one step from a checkpoint write.
STAGES = {
    "sft": [
        *SMALL_MODEL,
        "data.source=expert",
        "data.episodes=60",
        "max_steps=30",
        "log_every=1",
        "eval_every=4",
        "optim.batch_size=8",
        "optim.micro_batch_size=8",
        "max_length=256",
    ],
    "reward": [
        *SMALL_MODEL,
        "data.source=expert",
        "data.pairs=40",
        "max_steps=30",
        "log_every=1",
        "eval_every=4",
        "optim.batch_size=8",
        "optim.micro_batch_size=8",
        "max_length=256",
        "normalize.reference_samples=32",
    ],
    "ppo": [
        *SMALL_MODEL,
        "reward.model_path=null",
        "reward.rm_weight=0",
        "env.episodes=8",
        "optim.batch_size=4",
        "optim.micro_batch_size=4",
        "rollout.max_new_tokens=16",
        "rollout.max_total_tokens=256",
        "max_steps=10",
        "log_samples_every=2",
    ],
}
COMMON = ["progress=false", "save_every=1"]
TIMING_KEYS = ("timing/", "perf/", "train/tokens_per_s", "train/pairs_per_s", "seconds")
STEP_DIR = re.compile(r"^step-(\d+)$")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs per stage (at least).")
    parser.add_argument("--stages", default="sft,reward,ppo", help="Comma-separated stages to test.")
    parser.add_argument("--seed", type=int, default=0, help="Training seed, and the seed of the kill moments.")
    parser.add_argument("--workdir", default="/tmp/rlagent_kill_resume", help="Scratch folder (emptied first).")
    parser.add_argument("--steps", type=int, help="Override every stage's max_steps (default: STAGES).")
    parser.add_argument("--tol", type=float, default=0.0, help="Largest |difference| accepted in weights/metrics.")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------------------------------
# Launching and killing


RUNNING: list[subprocess.Popen] = []  # launched runs, killed if this script is stopped (they are not its group)


def stage_steps(stage: str, args) -> int:
    return args.steps or int(next(a for a in STAGES[stage] if a.startswith("max_steps=")).split("=")[1])


def launch(stage: str, output_dir: str, args, extra: list[str], log) -> subprocess.Popen:
    """`python -m rlagent.cli STAGE` as the leader of its own process group (tool workers die with it)."""
    cmd = [sys.executable, "-m", "rlagent.cli", stage, f"output_dir={output_dir}", f"seed={args.seed}"]
    cmd += [*STAGES[stage], *COMMON, f"max_steps={stage_steps(stage, args)}", *extra]
    env = {**os.environ, "PYTHONPATH": REPO, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env["TRANSFORMERS_VERBOSITY"] = "error"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    RUNNING.append(proc)
    return proc


def kill_group(proc: subprocess.Popen) -> bool:
    """SIGKILL the whole process group; True if the run was still alive (the kill counts)."""
    alive = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return alive


def tmp_folders(output_dir: str) -> set[tuple[str, int, int]]:
    """(name, inode, ctime) of every temporary checkpoint/final folder: a re-created folder counts as new."""
    found = set()
    for folder in (os.path.join(output_dir, "checkpoints"), output_dir):
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.endswith(".tmp") and entry.is_dir(follow_symlinks=False):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.add((entry.name, st.st_ino, st.st_ctime_ns))
    return found


def wait_for_checkpoint_write(proc, output_dir: str, skip: int, stale: set, deadline: float) -> None:
    """Return once the (skip+1)-th new temporary folder appears (or the run ends / the deadline passes)."""
    seen: set = set()
    while proc.poll() is None and time.time() < deadline:
        new = tmp_folders(output_dir) - stale - seen
        if new:
            seen |= new
            if len(seen) > skip:
                return
        time.sleep(0.002)


# ---------------------------------------------------------------------------------------------------------------------
# Checking checkpoints, metrics and weights


def load_tensors(folder: str) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    return tensors


def checkpoint_loads(path: str) -> str | None:
    """None if every file of a COMPLETE checkpoint loads and its MANIFEST.json verifies (sizes, SHA-256: a kill
    must never leave a COMPLETE checkpoint whose manifest disagrees), else the reason."""
    import torch

    from rlagent.training.checkpoints import MANIFEST, checkpoint_problem

    if not os.path.isfile(os.path.join(path, MANIFEST)):
        return f"no {MANIFEST}"
    problem = checkpoint_problem(path)
    if problem is not None:
        return f"manifest: {problem}"
    try:
        torch.load(os.path.join(path, "training_state.pt"), weights_only=False)
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if name.startswith("rng_rank"):
                torch.load(full, weights_only=False)
            elif os.path.isdir(full) and not load_tensors(full):
                return f"{name}/ holds no tensors"
    except Exception as err:  # any failure to read is what we are looking for
        return f"{type(err).__name__}: {err}"
    return None


def scan_checkpoints(output_dir: str) -> dict:
    """{step: None (loads) | 'partial' (no COMPLETE, ignored by resume) | reason it does not load}."""
    folder = os.path.join(output_dir, "checkpoints")
    out = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        match = STEP_DIR.match(name)
        if not match:
            continue
        path = os.path.join(folder, name)
        complete = os.path.isfile(os.path.join(path, "COMPLETE"))
        out[int(match.group(1))] = checkpoint_loads(path) if complete else "partial"
    return out


def read_rows(path: str) -> list[dict]:
    """JSONL rows; a torn last line (a kill inside a write) is reported as a row {'torn': text}."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append({"torn": line})
    return rows


def value_diff(a, b) -> float:
    """|a - b| for numbers (NaN == NaN), 0/inf for anything else (equal / different)."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(float(a) - float(b))
    return 0.0 if a == b else math.inf


def row_diff(a: dict, b: dict) -> float:
    """Largest difference over the deterministic keys of two metric rows (inf if the key sets differ)."""
    keys_a = {k for k in a if not k.startswith(TIMING_KEYS)}
    keys_b = {k for k in b if not k.startswith(TIMING_KEYS)}
    if keys_a != keys_b:
        return math.inf
    return max((value_diff(a[k], b[k]) for k in keys_a), default=0.0)


def weights_diff(a_folder: str, b_folder: str) -> float:
    """Largest |difference| over every tensor of two safetensors folders (inf if the tensor names differ)."""
    a, b = load_tensors(a_folder), load_tensors(b_folder)
    if not a or a.keys() != b.keys():
        return math.inf
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def checkpoint_diff(ref_dir: str, run_dir: str, step: int) -> float:
    """Largest weight difference between the run's and the reference's checkpoint of `step`."""
    ref = os.path.join(ref_dir, "checkpoints", f"step-{step}")
    run = os.path.join(run_dir, "checkpoints", f"step-{step}")
    models = [name for name in os.listdir(run) if os.path.isdir(os.path.join(run, name))]
    return max((weights_diff(os.path.join(ref, m), os.path.join(run, m)) for m in models), default=math.inf)


# ---------------------------------------------------------------------------------------------------------------------
# One stage


def reference_run(stage: str, ref_dir: str, args, log) -> dict:
    """The uninterrupted run; returns its timings (start-up = time to the first checkpoint)."""
    t0, first = time.time(), None
    proc = launch(stage, ref_dir, args, ["keep_checkpoints=1000"], log)
    while proc.poll() is None:
        if first is None and scan_checkpoints(ref_dir):
            first = time.time() - t0
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"kill_resume: the reference {stage} run failed (exit {proc.returncode}); see {log.name}")
    total = time.time() - t0
    return {"seconds": total, "startup": first or total / 2, "train": max(total - (first or total / 2), 0.1)}


def kill_once(proc, run_dir: str, mode: str, rng: random.Random, timing: dict, kills: int, latest: int, steps: int):
    """Wait for the chosen moment, then SIGKILL; returns whether the kill landed on a live run."""
    if mode == "checkpoint":
        stale = tmp_folders(run_dir)
        deadline = time.time() + timing["seconds"] * 2
        # Skip up to 3 writes, never more than are left (steps to go + final/), so the kill still lands.
        skip = rng.randint(0, min(3, max(0, steps - latest - 1)))
        wait_for_checkpoint_write(proc, run_dir, skip, stale, deadline)
        # A tiny model's checkpoint takes tens of ms to write: half the kills go at once, half a little later
        # (into the rename and the pruning that follow).
        time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.05)]))
    else:
        remaining = timing["startup"] + timing["train"] * (steps - latest) / steps
        span = min(timing["startup"] + 2 * timing["train"] / kills, 0.9 * remaining)
        end, stale = time.time() + rng.uniform(0.0, span), tmp_folders(run_dir)
        last = {f"step-{steps}.tmp", "final.tmp"}
        # The timing estimate comes from another run on a shared machine: if the run reaches its last writes
        # first, kill there, so the kill still lands before the run can finish.
        while proc.poll() is None and time.time() < end:
            if any(name in last for name, *_ in tmp_folders(run_dir) - stale):
                break
            time.sleep(0.01)
    return kill_group(proc)


def latest_complete(scan: dict) -> int:
    return max((step for step, problem in scan.items() if problem is None), default=0)


def launch_report(ref_dir: str, run_dir: str, resumed_from: int, ref_rows: dict, tol: float) -> dict:
    """Did this launch continue exactly? Its metrics rows (steps > resumed_from) and the checkpoints it wrote."""
    rows = [r for r in read_rows(os.path.join(run_dir, "metrics.jsonl")) if r.get("step", 0) > resumed_from]
    diff = max((row_diff(r, ref_rows.get(r.get("step"), {})) for r in rows), default=0.0)
    scan = scan_checkpoints(run_dir)
    written = [s for s, problem in scan.items() if problem is None and s > resumed_from]
    diff = max([diff] + [checkpoint_diff(ref_dir, run_dir, s) for s in written])
    return {"rows": len(rows), "checkpoints": len(written), "max_diff": diff, "exact": diff <= tol}


def killed_run(stage: str, ref_dir: str, run_dir: str, args, timing: dict, rng: random.Random, log) -> dict:
    """Kill, check, resume — `args.kills` times — then let the run finish. Returns the counts."""
    steps = stage_steps(stage, args)
    ref_rows = {r["step"]: r for r in read_rows(os.path.join(ref_dir, "metrics.jsonl"))}
    counts = {"kills": 0, "kills_in_checkpoint_write": 0, "resumes": 0, "resumes_exact": 0, "resumes_no_progress": 0}
    counts.update({"lost_checkpoints": 0, "corrupt_checkpoints": 0, "partial_checkpoints": 0, "crashes": 0})
    problems, best, launches = [], 0, 0
    while True:
        resumed_from = latest_complete(scan_checkpoints(run_dir))
        proc = launch(stage, run_dir, args, ["resume_from=auto"], log)
        launches += 1
        if counts["kills"] < args.kills:
            mode = "checkpoint" if counts["kills"] % 2 == 0 else "random"
            stale = tmp_folders(run_dir)
            landed = kill_once(proc, run_dir, mode, rng, timing, args.kills, resumed_from, steps)
            counts["kills"] += landed
            counts["kills_in_checkpoint_write"] += landed and bool(tmp_folders(run_dir) - stale)
        else:
            proc.wait()
        if proc.returncode not in (0, -signal.SIGKILL):
            counts["crashes"] += 1
            problems.append(f"launch {launches} exited {proc.returncode} (see {log.name})")
            break
        scan = scan_checkpoints(run_dir)
        counts["partial_checkpoints"] += sum(problem == "partial" for problem in scan.values())
        corrupt = {s: p for s, p in scan.items() if p not in (None, "partial")}
        counts["corrupt_checkpoints"] += len(corrupt)
        problems += [f"launch {launches}: step-{s} does not load: {p}" for s, p in corrupt.items()]
        latest = latest_complete(scan)
        if latest < best:
            counts["lost_checkpoints"] += 1
            problems.append(f"launch {launches}: latest complete checkpoint went back from {best} to {latest}")
        best = max(best, latest)
        if launches > 1:
            report = launch_report(ref_dir, run_dir, resumed_from, ref_rows, args.tol)
            counts["resumes"] += 1
            counts["resumes_exact"] += report["exact"]
            counts["resumes_no_progress"] += report["rows"] == 0 and report["checkpoints"] == 0
            if not report["exact"]:
                problems.append(f"launch {launches} (resumed from step {resumed_from}): differs by {report}")
        if proc.returncode == 0:
            break
    return {**counts, "launches": launches, "problems": problems}


def compare_final(ref_dir: str, run_dir: str) -> dict:
    """Final weights, metrics, sample tables and summary of the killed run against the reference."""
    ref_rows, run_rows = (
        read_rows(os.path.join(ref_dir, "metrics.jsonl")),
        read_rows(os.path.join(run_dir, "metrics.jsonl")),
    )
    last = {}
    for row in run_rows:
        last[row.get("step")] = row  # the LAST row per step counts
    ref_by_step = {r["step"]: r for r in ref_rows}
    metric_diff = max((row_diff(ref_by_step[s], last.get(s, {})) for s in ref_by_step), default=math.inf)
    summary_ref = json.load(open(os.path.join(ref_dir, "summary.json"), encoding="utf-8"))
    summary_run = json.load(open(os.path.join(run_dir, "summary.json"), encoding="utf-8"))
    summary_keys = sorted(
        k
        for k in set(summary_ref) | set(summary_run)
        if not k.startswith(TIMING_KEYS) and value_diff(summary_ref.get(k), summary_run.get(k)) != 0.0
    )
    samples_ref = read_rows(os.path.join(ref_dir, "samples.jsonl"))
    samples_run = read_rows(os.path.join(run_dir, "samples.jsonl"))
    return {
        "final_weights_max_diff": weights_diff(os.path.join(ref_dir, "final"), os.path.join(run_dir, "final")),
        "metrics_max_diff": metric_diff if set(last) == set(ref_by_step) else math.inf,
        "metrics_duplicate_rows": len(run_rows) - len(last),
        "metrics_torn_rows": sum("torn" in r for r in run_rows),
        "samples_equal": samples_ref == samples_run,
        "samples_rows": [len(samples_ref), len(samples_run)],
        "summary_mismatched_keys": summary_keys,
        "summary_mismatch": {k: [summary_ref.get(k), summary_run.get(k)] for k in summary_keys},
    }


def run_stage(stage: str, args, rng: random.Random) -> dict:
    root = os.path.join(args.workdir, stage)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    ref_dir, run_dir = os.path.join(root, "reference"), os.path.join(root, "killed")
    t0 = time.time()
    with open(os.path.join(root, "log.txt"), "w", encoding="utf-8") as log:
        timing = reference_run(stage, ref_dir, args, log)
        counts = killed_run(stage, ref_dir, run_dir, args, timing, rng, log)
    final = compare_final(ref_dir, run_dir) if not counts["crashes"] else {}
    scan = scan_checkpoints(run_dir)
    return {
        "name": "kill_resume",
        "stage": stage,
        "seed": args.seed,
        "reference_s": round(timing["seconds"], 1),
        **counts,
        **final,
        "checkpoints_at_end": sorted(scan),
        "seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    from report import RESULT_PREFIX, machine, uptime

    args = parse()
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"kill_resume: unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    print(f"-- {uptime()}\n-- {machine()}", flush=True)
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` below still runs
    try:
        for stage in stages:
            result = run_stage(stage, args, rng)
            print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    finally:
        for proc in RUNNING:
            if proc.poll() is None:
                kill_group(proc)
    print(f"-- {uptime()}", flush=True)


if __name__ == "__main__":
    main()
