"""`rlagent sweep`: hyper-parameter search over any stage's config keys, on Optuna.

    rlagent sweep --config configs/sweep/reward.yaml [--trials N] [--storage URL] [--workers K] [key=value ...]

The sweep file names a stage (or a `command` that follows the same contract), its config file, a search space over
any of its keys (float / log-float / int / categorical), the objective (a key of the stage's summary.json) and its
direction. Each trial is an ordinary run of the stage as a subprocess, in OUTPUT_DIR/trials/trial-NNN, with the
sampled values as `key=value` overrides after the sweep file's `overrides` and the command line's (which apply to
every trial). While a trial runs, its metrics.jsonl is read as it grows: each logged value of `pruner.metric`
is reported to Optuna, and the median pruner stops (terminates) a trial that is worse than the median of earlier
trials at the same step. TPE by default; `sampler: random` or `grid`.

The study lives in `--storage` (default sqlite:///OUTPUT_DIR/study.db): running the same command again after an
interruption keeps every finished trial and runs the rest (`trials` counts finished trials: complete or pruned);
`--workers K` starts K-1 more processes on the same study, and processes on other machines join with the same
`--storage` URL of a shared database. At the end: OUTPUT_DIR/trials.csv (and the table printed), best.yaml (the
stage config with the best values, ready to run), history.png and importance.png (Optuna's plots), summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import yaml

from rlagent.common.config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    TrainingError,
    arg_type,
    check_output_dir,
    doc,
    exit_with,
    load_config,
)

STAGE_CONFIGS = {  # stage -> (module, config class): the search space is checked against it before any trial
    "sft": ("rlagent.train_sft", "SFTConfig"),
    "reward": ("rlagent.train_reward", "RewardConfig"),
    "ppo": ("rlagent.training.ppo_config", "PPOConfig"),
    "distill": ("rlagent.train_distill", "DistillConfig"),
}
FAILED_IN_A_ROW = 3  # stop the sweep after this many failed trials in a row: the stage itself is broken
# Set by SIGTERM: the trial loop stops its stage and exits. A handler that raised would do so wherever the main thread
# happens to be, a __del__ included, where Python ignores the exception.
TERMINATED = threading.Event()


@dataclass
class ParamSpace:
    """One searched key: a float range (log scale if `log`), an int range (with `step`), or a list of choices."""

    type: Literal["float", "int", "categorical"] = doc("float, int or categorical.", "float")
    low: float | None = doc("Lowest value (float, int).", None)
    high: float | None = doc("Highest value (float, int).", None)
    log: bool = doc("Sample on a log scale (float, int).", False)
    step: float | None = doc(
        "Spacing of the values (int: default 1; float: default continuous).", None, range=POSITIVE
    )
    choices: list[str] = doc("The values of a categorical key, as YAML scalars (2, 0.5, true, cosine).", factory=list)


@dataclass
class ObjectiveConfig:
    """What a trial is judged by."""

    key: str = doc("A key of the stage's summary.json, e.g. eval/accuracy (reward) or eval/loss (sft).", "eval/loss")
    direction: Literal["minimize", "maximize"] = doc("Whether lower or higher is better.", "minimize")


@dataclass
class PrunerConfig:
    """Median pruning on a metric the stage logs to metrics.jsonl while it runs."""

    enabled: bool = doc("Stop trials worse than the median of earlier trials at the same step.", True)
    metric: str | None = doc(
        "metrics.jsonl key reported at each logged step, better in the objective's direction (null = the "
        "objective's key).",
        None,
    )
    startup_trials: int = doc("Finished trials before any pruning.", 5)
    warmup_steps: int = doc("Steps of a trial before it can be pruned.", 0)


@dataclass
class SweepConfig:
    """A hyper-parameter search: a stage, a search space over its config keys, an objective from its summary."""

    output_dir: str = doc("Where the study, the trials' run folders and the report go.", "runs/sweep")
    stage: Literal["sft", "reward", "ppo", "distill"] = doc("The stage each trial runs (rlagent STAGE).", "reward")
    config: str | None = doc("The stage's config file (null = the stage's defaults).", None)
    command: list[str] = doc(
        "A program to run instead of `rlagent STAGE` (same contract: --config FILE key=value ..., writes "
        "OUTPUT_DIR/metrics.jsonl and summary.json); empty = rlagent STAGE.",
        factory=list,
    )
    overrides: list[str] = doc("key=value overrides of the stage config for every trial.", factory=list)
    space: dict[str, ParamSpace] = doc("Searched keys (dotted stage-config keys) and their ranges.", factory=dict)
    objective: ObjectiveConfig = doc("The summary.json key to optimise.", factory=ObjectiveConfig)
    pruner: PrunerConfig = doc("Median pruning.", factory=PrunerConfig)
    sampler: Literal["tpe", "random", "grid"] = doc("TPE (Bayesian), random, or every grid point.", "tpe")
    trials: int = doc("Finished (complete or pruned) trials the study should have.", 20, range=AT_LEAST_ONE)
    seed: int = doc("Sampler seed.", 0)
    study_name: str = doc("Study name in the storage.", "sweep")
    storage: str | None = doc("Optuna storage URL (null = sqlite:///OUTPUT_DIR/study.db).", None)
    poll_seconds: float = doc("How often a running trial's metrics.jsonl is read.", 1.0, range=POSITIVE)
    heartbeat_seconds: int = doc(
        "A trial whose process sent no heartbeat for twice this long (a killed worker) is failed and retried once.",
        60,
        range=AT_LEAST_ONE,
    )
    trial_timeout: float = doc("Terminate a trial after this many seconds (0 = no limit).", 0.0, range=NON_NEGATIVE)


# ---------------------------------------------------------------------------------------------------------------------
# The search space


def check_space(cfg: SweepConfig, overrides: list[str]) -> None:
    """Every range is well-formed, and (for rlagent's stages) every searched key, set to a value of its range, is a
    valid stage config: a typo costs a second here, not a trial."""
    if not cfg.space:
        raise ConfigError(f"{cfg.config or 'sweep'}: 'space' names no key to search")
    for key, space in cfg.space.items():
        if space.type == "categorical" and not space.choices:
            raise ConfigError(f"space.{key}: a categorical key needs 'choices'")
        if space.type != "categorical" and (space.low is None or space.high is None or space.low > space.high):
            raise ConfigError(f"space.{key}: needs low <= high, got low={space.low}, high={space.high}")
        if space.log and space.type != "categorical" and space.low <= 0:
            raise ConfigError(f"space.{key}: a log scale needs low > 0, got {space.low}")
    if cfg.command:
        return
    module, name = STAGE_CONFIGS[cfg.stage]
    config_class = getattr(__import__(module, fromlist=[name]), name)
    for pick in (0, -1):
        values = [f"{key}={json.dumps(edge_values(space)[pick])}" for key, space in cfg.space.items()]
        load_config(config_class, cfg.config, [*overrides, *values])


def edge_values(space: ParamSpace) -> list:
    """The first and last value of a key's range (its choices, or low and high)."""
    if space.type == "categorical":
        return [yaml.safe_load(choice) for choice in space.choices]
    cast = int if space.type == "int" else float
    return [cast(space.low), cast(space.high)]


def grid_values(key: str, space: ParamSpace) -> list:
    """The values a grid search tries: the choices, every int step, or every float step from low to high."""
    if space.type == "categorical":
        return [yaml.safe_load(choice) for choice in space.choices]
    if space.type == "int":
        return list(range(int(space.low), int(space.high) + 1, int(space.step or 1)))
    if space.step is None:
        if space.low == space.high:
            return [space.low]
        raise ConfigError(f"space.{key}: a float key needs 'step' (or choices) for sampler: grid")
    count = int(round((space.high - space.low) / space.step)) + 1
    return [space.low + i * space.step for i in range(count)]


def suggest(trial, cfg: SweepConfig) -> dict:
    """The trial's value of every searched key."""
    values = {}
    for key, space in cfg.space.items():
        if space.type == "categorical":
            values[key] = trial.suggest_categorical(key, [yaml.safe_load(choice) for choice in space.choices])
        elif space.type == "int":
            values[key] = trial.suggest_int(key, int(space.low), int(space.high), step=int(space.step or 1),
                                            log=space.log)  # fmt: skip
        else:
            values[key] = trial.suggest_float(key, space.low, space.high, step=space.step, log=space.log)
    return values


# ---------------------------------------------------------------------------------------------------------------------
# One trial: the stage as a subprocess, its metrics.jsonl read as it grows


class MetricsFollower:
    """The (step, value) pairs of one metric that a growing metrics.jsonl gained since the last call; a line still
    being written (no newline yet) waits for the next call."""

    def __init__(self, path: str, metric: str):
        self.path, self.metric, self.offset = path, metric, 0

    def new_values(self) -> list[tuple[int, float]]:
        if not os.path.isfile(self.path):
            return []
        with open(self.path, encoding="utf-8") as handle:
            handle.seek(self.offset)
            text = handle.read()
        complete = text[: text.rfind("\n") + 1]
        self.offset += len(complete.encode("utf-8"))
        out = []
        for line in complete.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            value = row.get(self.metric)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                out.append((int(row.get("step", 0)), float(value)))
        return out


class TrialFailed(RuntimeError):
    """The stage exited with an error (its log is in the trial folder)."""


def stage_command(cfg: SweepConfig, trial_dir: str, overrides: list[str]) -> list[str]:
    """The trial's command line: rlagent STAGE (or `command`) --config FILE output_dir=... overrides ..."""
    program = list(cfg.command) or [sys.executable, "-m", "rlagent.cli", cfg.stage]
    config = ["--config", cfg.config] if cfg.config else []
    quiet = [] if cfg.command else ["progress=false"]
    return [*program, *config, *quiet, *overrides, f"output_dir={trial_dir}"]  # the trial's folder wins


def run_trial(trial, command: list[str], trial_dir: str, cfg: SweepConfig) -> None:
    """Run one trial's stage to the end, reporting its pruning metric as it is logged; raises optuna.TrialPruned
    (after terminating the stage) when the pruner says so, TrialFailed when the stage fails."""
    import optuna

    os.makedirs(trial_dir, exist_ok=True)
    follower = MetricsFollower(os.path.join(trial_dir, "metrics.jsonl"), cfg.pruner.metric or cfg.objective.key)
    started = time.time()
    with open(os.path.join(trial_dir, "stage.log"), "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                finished = process.poll() is not None  # read once more after the end: the last rows count too
                for step, value in follower.new_values():
                    trial.report(value, step)
                    if cfg.pruner.enabled and not finished and trial.should_prune():
                        raise optuna.TrialPruned(f"{follower.metric}={value:.4g} at step {step}")
                if finished:
                    break
                if TERMINATED.is_set():  # as Ctrl-C: Optuna records the trial as failed
                    raise KeyboardInterrupt
                if cfg.trial_timeout and time.time() - started > cfg.trial_timeout:
                    raise TrialFailed(f"still running after trial_timeout={cfg.trial_timeout:g} s")
                time.sleep(cfg.poll_seconds)
        finally:
            stop(process)
    if process.returncode != 0:
        raise TrialFailed(f"exit {process.returncode}: {last_line(os.path.join(trial_dir, 'stage.log'))}")


def stop(process: subprocess.Popen) -> None:
    """Terminate a still-running stage (then kill it if it lingers)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def last_line(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    return lines[-1] if lines else "(no output)"


def objective_value(cfg: SweepConfig, trial_dir: str) -> float:
    """The objective key of the trial's summary.json; a key the stage does not write stops the sweep."""
    path = os.path.join(trial_dir, "summary.json")
    if not os.path.isfile(path):
        raise TrialFailed(f"{path} was not written")
    with open(path, encoding="utf-8") as handle:
        summary = json.load(handle)
    if cfg.objective.key not in summary:
        numeric = sorted(k for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool))
        raise ConfigError(f"objective.key '{cfg.objective.key}' is not in {path}; its numbers: {', '.join(numeric)}")
    value = summary[cfg.objective.key]
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise TrialFailed(f"objective {cfg.objective.key}={value!r} is not a finite number")
    return float(value)


def make_objective(cfg: SweepConfig, overrides: list[str]):
    """Optuna's objective: sample, run the stage in trials/trial-NNN, return its summary's objective key."""

    def objective(trial) -> float:
        values = suggest(trial, cfg)
        trial_dir = os.path.join(cfg.output_dir, "trials", f"trial-{trial.number:03d}")
        trial.set_user_attr("run_dir", trial_dir)
        sampled = [f"{key}={json.dumps(value)}" for key, value in values.items()]
        run_trial(trial, stage_command(cfg, trial_dir, [*cfg.overrides, *overrides, *sampled]), trial_dir, cfg)
        return objective_value(cfg, trial_dir)

    return objective


# ---------------------------------------------------------------------------------------------------------------------
# The study


def default_storage(cfg: SweepConfig) -> str:
    return cfg.storage or f"sqlite:///{os.path.abspath(os.path.join(cfg.output_dir, 'study.db'))}"


def open_study(cfg: SweepConfig, storage_url: str):
    """Create or load the study; RDB heartbeats let a killed worker's trial be failed and retried once."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours (trial_line)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = RDBStorage(
        storage_url,
        heartbeat_interval=cfg.heartbeat_seconds,
        grace_period=2 * cfg.heartbeat_seconds,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        engine_kwargs={"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else None,
    )
    if cfg.sampler == "grid":
        sampler = optuna.samplers.GridSampler({k: grid_values(k, s) for k, s in cfg.space.items()}, seed=cfg.seed)
    elif cfg.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=cfg.seed)
    pruner = optuna.pruners.MedianPruner(cfg.pruner.startup_trials, cfg.pruner.warmup_steps)
    try:
        return optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=cfg.study_name,
                                   direction=cfg.objective.direction, load_if_exists=True)  # fmt: skip
    except ValueError as err:  # e.g. the stored study optimises in the other direction
        raise ConfigError(f"study '{cfg.study_name}' in {storage_url}: {err}") from None


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def run_trials(cfg: SweepConfig, study, overrides: list[str]) -> None:
    """Run trials until the study has `cfg.trials` finished ones (other workers' count too)."""
    objective, failed_in_a_row = make_objective(cfg, overrides), 0
    while len(finished_trials(study)) < cfg.trials and not TERMINATED.is_set():
        if cfg.sampler == "grid" and study.sampler.is_exhausted(study):
            break
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        trial = study.get_trials(deepcopy=False)[-1]
        print(trial_line(trial, cfg), flush=True)
        failed_in_a_row = failed_in_a_row + 1 if trial.state.name == "FAIL" else 0
        if failed_in_a_row >= FAILED_IN_A_ROW:
            raise TrainingError(f"{failed_in_a_row} trials in a row failed; the last: {trial_failure(trial)}")


def trial_failure(trial) -> str:
    return trial.system_attrs.get("fail_reason", "see its stage.log").splitlines()[-1]


def trial_line(trial, cfg: SweepConfig) -> str:
    """One progress line per trial: number, state, objective, seconds, values."""
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    value = f"{cfg.objective.key}={trial.value:.4g}" if trial.value is not None else trial.state.name.lower()
    if trial.state.name == "PRUNED":
        last = max(trial.intermediate_values.items(), default=None)
        value = f"pruned at step {last[0]} ({last[1]:.4g})" if last else "pruned"
    elif trial.state.name == "FAIL":
        value = f"failed: {trial_failure(trial)}"
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    return f"rlagent sweep: trial {trial.number}: {value} ({seconds:.0f} s) {params}"


def start_workers(args: argparse.Namespace, cfg: SweepConfig, storage_url: str) -> list[subprocess.Popen]:
    """K-1 more processes on the same study (no report from them); their output goes to OUTPUT_DIR/worker-k.log."""
    command = [sys.executable, "-m", "rlagent.cli", "sweep", "--config", args.config, "--trials", str(cfg.trials),
               "--output-dir", cfg.output_dir, "--storage", storage_url, "--worker", *args.overrides]  # fmt: skip
    workers = []
    for k in range(1, args.workers):
        with open(os.path.join(cfg.output_dir, f"worker-{k}.log"), "w", encoding="utf-8") as log:
            workers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    return workers


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlagent sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="The sweep file (see configs/sweep/reward.yaml).")
    parser.add_argument("--trials", type=arg_type(int, AT_LEAST_ONE), help="Finished trials the study should have.")
    parser.add_argument("--output-dir", help="The sweep's output_dir (default: the sweep file's).")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUTPUT_DIR/study.db).")
    parser.add_argument(
        "--workers", type=arg_type(int, AT_LEAST_ONE), default=1, help="Processes working on the study at once."
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a started worker: no report
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the stage config, for every trial.")
    return parser.parse_args(argv)


def load_sweep(args: argparse.Namespace) -> SweepConfig:
    """The sweep file with --trials / --storage applied, its space checked against the stage's config."""
    cfg = load_config(SweepConfig, args.config)
    if args.trials:
        cfg.trials = args.trials
    if args.storage:
        cfg.storage = args.storage
    if args.output_dir:
        cfg.output_dir = args.output_dir
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"command line: '{item}' is not a key=value override of the stage config")
        if item.split("=", 1)[0].strip() in cfg.space:
            raise ConfigError(f"command line: '{item}' sets a key the sweep searches (space.{item.split('=')[0]})")
    check_space(cfg, [*cfg.overrides, *args.overrides])
    check_output_dir(cfg.output_dir)
    return cfg


def main(argv: list[str] | None = None) -> dict:
    from rlagent.cli.sweep_report import write_report

    args = parse(argv)
    # SIGTERM (a stopped worker, a job scheduler) unwinds like Ctrl-C, so the running trial's stage is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: TERMINATED.set())
    cfg = load_sweep(args)
    storage_url = default_storage(cfg)
    study = open_study(cfg, storage_url)
    who = "worker" if args.worker else f"{args.workers} worker(s)"
    print(f"rlagent sweep: study '{cfg.study_name}' in {storage_url}: {len(finished_trials(study))} finished "
          f"trial(s), running until {cfg.trials}; {who}", flush=True)  # fmt: skip
    workers = start_workers(args, cfg, storage_url) if args.workers > 1 and not args.worker else []
    try:
        run_trials(cfg, study, args.overrides)
    except BaseException as err:
        for worker in workers:
            stop(worker)
        if isinstance(err, KeyboardInterrupt):
            exit_with(f"rlagent sweep: stopped; the same command continues the study ({storage_url})", 130)
        raise
    for worker in workers:
        worker.wait()
    if TERMINATED.is_set():
        exit_with(f"rlagent sweep: stopped; the same command continues the study ({storage_url})", 143)
    if args.worker:
        return {}
    return write_report(cfg, study, [*cfg.overrides, *args.overrides])
