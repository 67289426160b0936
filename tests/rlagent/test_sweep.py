"""`rlagent sweep` through the real CLI: pruning on a rigged metric, a killed sweep that resumes with its trials, the
report files, bad input, and one end-to-end sweep of the reward-model stage on the tiny default."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from tests.conftest import ROOT, SMALL_MODEL, run_cli

RIGGED = os.path.join(ROOT, "tests", "rlagent", "rigged_stage.py")


def sweep_file(tmp_path, **changes) -> str:
    """A sweep of the rigged stage: `score` = x at every step, so which trials are worse is known in advance."""
    spec = {
        "output_dir": str(tmp_path / "sweep"),
        "command": [sys.executable, RIGGED],
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "objective": {"key": "score", "direction": "maximize"},
        "pruner": {"startup_trials": 2},
        "sampler": "random",
        "trials": 6,
        "poll_seconds": 0.05,
        "overrides": ["steps=30", "delay=0.05"],
        **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def load_study(output_dir) -> optuna.Study:
    return optuna.load_study(study_name="sweep", storage=f"sqlite:///{output_dir}/study.db")


def rows_logged(trial) -> int:
    with open(os.path.join(trial.user_attrs["run_dir"], "metrics.jsonl")) as handle:
        return sum(1 for line in handle if line.strip())


def test_pruning_stops_the_trials_worse_than_the_median(tmp_path):
    run_cli("rlagent", "sweep", "--config", sweep_file(tmp_path))
    trials = load_study(tmp_path / "sweep").trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert len(trials) == 6 and pruned, [(t.state.name, t.params) for t in trials]
    for trial in pruned:
        # Median pruning: worse than the median of the earlier complete trials at the same step (score = x always)
        earlier = sorted(t.params["x"] for t in trials[: trial.number] if t.state.name == "COMPLETE")
        median = (earlier[(len(earlier) - 1) // 2] + earlier[len(earlier) // 2]) / 2
        assert len(earlier) >= 2 and trial.params["x"] < median
        assert rows_logged(trial) < 30  # its stage was stopped, not left to finish
    for trial in trials[:2]:  # startup trials are never pruned
        assert trial.state.name == "COMPLETE" and rows_logged(trial) == 30


def test_without_pruning_every_trial_completes(tmp_path):
    run_cli("rlagent", "sweep", "--config", sweep_file(tmp_path, pruner={"enabled": False}), "--trials", "4")
    assert [t.state.name for t in load_study(tmp_path / "sweep").trials] == ["COMPLETE"] * 4


def test_report_files(tmp_path):
    proc = run_cli("rlagent", "sweep", "--config", sweep_file(tmp_path, pruner={"enabled": False}), "--trials", "3")
    out = tmp_path / "sweep"
    study = load_study(out)
    best = max(study.trials, key=lambda t: t.value)
    best_yaml = yaml.safe_load((out / "best.yaml").read_text())
    assert best_yaml["x"] == best.params["x"] and best_yaml["steps"] == 30  # the sweep's overrides are kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_trial"] == best.number and summary["trials/complete"] == 3
    assert sorted(summary["plots"]) == ["history.png", "importance.png"]
    assert (out / "history.png").stat().st_size > 1000 and (out / "importance.png").stat().st_size > 1000
    csv_lines = (out / "trials.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("trial,state,score")
    assert "best score=" in proc.stdout


def test_a_killed_sweep_resumes_and_keeps_its_trials(tmp_path):
    """SIGKILL the whole sweep (trial process included) during its third trial; the same command finishes the
    study: the two trials done before the kill stay as they were, and the study reaches its trial count."""
    config = sweep_file(tmp_path, pruner={"enabled": False}, trials=4, overrides=["steps=20", "delay=0.1"])
    command = [sys.executable, "-m", "rlagent.cli", "sweep", "--config", config]
    env = {**os.environ, "PYTHONPATH": ROOT}
    sweep = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    out = tmp_path / "sweep"
    deadline = time.time() + 120
    while not (out / "trials" / "trial-002" / "metrics.jsonl").exists():
        assert time.time() < deadline and sweep.poll() is None, "the third trial never started"
        time.sleep(0.1)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    before = {t.number: (t.params, t.value) for t in load_study(out).trials if t.state.name == "COMPLETE"}
    assert sorted(before) == [0, 1]

    run_cli("rlagent", "sweep", "--config", config)
    trials = load_study(out).trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4
    assert {t.number: (t.params, t.value) for t in trials if t.number in before} == before
    assert trials[2].state.name == "RUNNING"  # killed mid-run: failed (and retried) once its heartbeat is stale


def test_two_workers_share_the_study(tmp_path):
    config = sweep_file(tmp_path, pruner={"enabled": False}, trials=4, overrides=["steps=10", "delay=0.05"])
    run_cli("rlagent", "sweep", "--config", config, "--workers", "2")
    trials = load_study(tmp_path / "sweep").trials
    # each worker checks the shared count before a trial, so together they overshoot by at most one
    assert 4 <= sum(t.state.name == "COMPLETE" for t in trials) <= 5
    # the second process joined the same study (whether it got a trial depends on how fast it started)
    assert f"study 'sweep' in sqlite:///{tmp_path}/sweep/study.db" in (tmp_path / "sweep" / "worker-1.log").read_text()


@pytest.mark.parametrize(
    "changes, args, message",
    [
        ({"sampler": "bayes"}, [], "'sampler' must be"),
        ({"space": {"x": {"type": "float", "low": 1.0, "high": 0.0}}}, [], "space.x: needs low <= high"),
        ({"space": {"x": {"type": "categorical"}}}, [], "space.x: a categorical key needs 'choices'"),
        ({"sampler": "grid"}, [], "space.x: a float key needs 'step'"),
        ({}, ["x=0.5"], "sets a key the sweep searches"),
        ({"objective": {"key": "nope", "direction": "maximize"}}, [], "objective.key 'nope' is not in"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, changes, args, message):
    proc = run_cli("rlagent", "sweep", "--config", sweep_file(tmp_path, **changes), "--trials", "1", *args,
                   check=False)  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_misspelt_stage_key_fails_before_any_trial(tmp_path):
    spec = {"stage": "reward", "output_dir": str(tmp_path / "s"), "space": {"optim.lrr": {"low": 0.1, "high": 1}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    proc = run_cli("rlagent", "sweep", "--config", str(tmp_path / "s.yaml"), check=False)
    assert proc.returncode == 2 and "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in proc.stderr, proc.stderr
    assert not (tmp_path / "s" / "trials").exists()


def test_end_to_end_reward_sweep_on_the_tiny_default(tmp_path):
    """Two trials of the real reward-model stage on a tiny budget; the best config is a valid stage config."""
    spec = {
        "stage": "reward",
        "output_dir": str(tmp_path / "sweep"),
        "overrides": [*SMALL_MODEL, "max_steps=4", "data.pairs=24", "eval_every=2", "save_every=0",
                      "normalize.reference_samples=16", "optim.batch_size=4", "optim.micro_batch_size=4"],
        "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "objective": {"key": "eval/accuracy", "direction": "maximize"},
        "sampler": "random",
        "trials": 2,
    }  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    run_cli("rlagent", "sweep", "--config", str(tmp_path / "s.yaml"), env={"OMP_NUM_THREADS": "1"})
    trials = load_study(tmp_path / "sweep").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        summary = json.loads(open(os.path.join(trial.user_attrs["run_dir"], "summary.json")).read())
        assert summary["eval/accuracy"] == trial.value and summary["steps"] == 4
        assert sorted(trial.intermediate_values) == [2, 4] and trial.intermediate_values[4] == trial.value
    best = yaml.safe_load((tmp_path / "sweep" / "best.yaml").read_text())
    assert best["optim"]["lr"] == max(trials, key=lambda t: t.value).params["optim.lr"]
