"""Runs that would lose work stop instead: non-finite weights are never stepped into or written, a damaged
checkpoint is skipped on resume (with a message) or refused when named, every checkpoint carries a manifest, and
the README's two-process launch derives its batch shape instead of failing."""

import hashlib
import json
import os
import shutil

import pytest
import torch

from rlagent.common.config import TrainingError
from rlagent.training.checkpoints import checkpoint_problem
from rlagent.training.guards import StepGuard, assert_finite
from tests.conftest import SMALL_MODEL, launch_two_processes, run_cli


def sft(output_dir, data_path, *extra, check=True):
    return run_cli(
        "rlagent", "sft", f"output_dir={output_dir}", "data.source=file", f"data.path={data_path}", "progress=false",
        "log_every=1", *SMALL_MODEL, *extra, check=check,
    )  # fmt: skip


def error_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("rlagent ")]


def test_a_learning_rate_that_blows_the_model_up_stops_the_run_without_a_final(tmp_path, demo_jsonl):
    # lr 1e30: the first step makes the weights ~1e30, every later loss overflows and its step is skipped; the second
    # skip in a row stops the run (exit 1, one line) and final/ is never written.
    proc = sft(tmp_path, demo_jsonl, "optim.lr=1e30", "max_steps=6", "optim.max_skipped_steps=2", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [line for line in error_lines(proc) if ": error:" in line]
    assert "2 optimizer steps in a row skipped" in line and "optim.lr" in line
    assert not (tmp_path / "final").exists()


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, demo_jsonl):
    """An SFT run of 2 steps with both checkpoints kept (tests copy it before damaging anything)."""
    folder = tmp_path_factory.mktemp("checkpointed")
    sft(folder, demo_jsonl, "max_steps=2", "save_every=1", "keep_checkpoints=3")
    return folder


def test_every_checkpoint_has_a_manifest_of_its_files(checkpointed_run):
    folder = checkpointed_run / "checkpoints" / "step-2"
    files = json.loads((folder / "MANIFEST.json").read_text())["files"]
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"MANIFEST.json", "COMPLETE"}
    assert set(files) == on_disk and "training_state.pt" in files and "model/model.safetensors" in files
    for name, entry in files.items():
        data = (folder / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert checkpoint_problem(str(folder)) is None


@pytest.mark.parametrize("damaged", ["model/model.safetensors", "training_state.pt", "rng_rank0.pt"])
def test_a_damaged_file_is_named_by_the_manifest_check(checkpointed_run, tmp_path, damaged):
    latest = tmp_path / "step-2"
    shutil.copytree(checkpointed_run / "checkpoints" / "step-2", latest)
    data = bytearray((latest / damaged).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: only the checksum can tell
    (latest / damaged).write_bytes(bytes(data))
    assert checkpoint_problem(str(latest)) == f"{damaged} does not match its checksum"
    (latest / damaged).write_bytes(bytes(data[:100]))
    assert checkpoint_problem(str(latest)).startswith(f"{damaged} has 100 bytes, the manifest says ")
    (latest / damaged).unlink()
    assert checkpoint_problem(str(latest)) == f"{damaged} is missing"


def test_a_truncated_latest_checkpoint_is_skipped_on_auto_resume_and_refused_by_name(
    checkpointed_run, tmp_path, demo_jsonl
):
    shutil.copytree(checkpointed_run, tmp_path, dirs_exist_ok=True)
    latest = tmp_path / "checkpoints" / "step-2"
    damaged = latest / "model" / "model.safetensors"
    with open(damaged, "r+b") as handle:  # disk full / a bad copy: the file lost its tail
        handle.truncate(os.path.getsize(damaged) // 2)

    named = sft(tmp_path, demo_jsonl, "max_steps=3", f"resume_from={latest}", check=False)
    assert named.returncode == 2 and "Traceback" not in named.stderr
    assert [f"resume_from='{latest}': model/model.safetensors has" in line for line in error_lines(named)] == [True]

    auto = sft(tmp_path, demo_jsonl, "max_steps=3", "resume_from=auto")
    assert f"skipping checkpoint {latest}: model/model.safetensors has" in auto.stderr
    assert f"resume={tmp_path / 'checkpoints' / 'step-1'}" in auto.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3 and (tmp_path / "final").is_dir()


def test_the_readme_two_process_sft_command_derives_its_batch_shape(tmp_path):
    # A micro-batch as large as the whole batch (16; configs/quickstart/sft.yaml itself takes 4): 8 per process, so
    # the micro-batch is lowered to 8 and the run says so (it used to stop: "must divide by processes x
    # micro_batch_size").
    proc = launch_two_processes(
        "rlagent/train_sft.py", "--config", "configs/quickstart/sft.yaml", f"output_dir={tmp_path}", "max_steps=2",
        "data.episodes=20", "progress=false", "eval_every=0", "save_every=0", "optim.micro_batch_size=16",
    )  # fmt: skip
    assert "optim.batch_size=16 sequences = 2 process(es) x 8, in 1 micro-batch(es) of <= 8" in proc.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2


def linear(weight: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(layer.weight, weight)
    return layer


def test_step_guard_stops_after_max_skipped_steps_in_a_row():
    guard = StepGuard(max_skipped=3)
    guard.after_step(False, {"m": linear(1.0)}, 1)
    guard.after_step(False, {"m": linear(1.0)}, 2)
    guard.after_step(True, {"m": linear(1.0)}, 3)  # an applied step resets the streak
    guard.after_step(False, {"m": linear(1.0)}, 4)
    guard.after_step(False, {"m": linear(1.0)}, 5)
    with pytest.raises(TrainingError, match="step 6: 3 optimizer steps in a row skipped"):
        guard.after_step(False, {"m": linear(1.0)}, 6)
    assert guard.updates == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_step_guard_and_writers_refuse_non_finite_weights(bad):
    with pytest.raises(TrainingError, match="non-finite"):
        StepGuard(max_skipped=3).after_step(True, {"policy": linear(bad)}, 7)
    with pytest.raises(TrainingError, match="not writing final/: policy has non-finite weights"):
        assert_finite({"policy": linear(bad)}, "final/")
    frozen = linear(bad).requires_grad_(False)  # only trainable weights can change in a step: frozen ones are skipped
    StepGuard(max_skipped=3).after_step(True, {"policy": frozen}, 1)


def test_a_run_without_an_applied_step_writes_no_final():
    with pytest.raises(TrainingError, match="no optimizer step was applied"):
        StepGuard(max_skipped=3).require_an_update("final/")
    StepGuard(max_skipped=3, updates=2).require_an_update("final/")  # a resumed run counts its earlier updates
