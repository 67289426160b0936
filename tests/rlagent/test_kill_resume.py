"""Resume after kill -9: the slow end-to-end check (bench/kill_resume.py with a few kills) and fast tests of the
pieces a kill can interrupt (metrics trimming, checkpoint pruning)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from rlagent.training import checkpoints
from rlagent.training.tracking import Tracker
from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "bench", "kill_resume.py")


def write_rows(path, rows: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(rows)


def row(step: int) -> str:
    return json.dumps({"step": step, "train/loss": 1.0 / step}) + "\n"


def test_resume_trims_rows_after_the_checkpoint_and_a_torn_line(tmp_path):
    # Rows 1-4, then a line cut by a kill inside the write: resuming from step 2 keeps exactly rows 1-2.
    write_rows(tmp_path / "metrics.jsonl", [row(1), row(2), row(3), row(4), '{"step": 5, "train/lo'])
    write_rows(tmp_path / "samples.jsonl", [row(2), row(4)])
    tracker = Tracker(str(tmp_path), ["jsonl"], {}, "p", resume_step=2)
    tracker.log({"train/loss": 0.5}, step=3)
    tracker.finish({})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert (tmp_path / "samples.jsonl").read_text() == row(2)  # sample tables are trimmed too
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_a_kill_during_the_trim_loses_no_rows(tmp_path, monkeypatch):
    """The trimmed file replaces the old one in one rename; dying before it leaves the old file whole."""
    write_rows(tmp_path / "metrics.jsonl", [row(1), row(2), row(3)])

    def killed(*_):
        raise KeyboardInterrupt  # stands for the SIGKILL arriving just before the rename

    monkeypatch.setattr("rlagent.training.tracking.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        Tracker(str(tmp_path), ["jsonl"], {}, "p", resume_step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == row(1) + row(2) + row(3)


def test_a_kill_during_pruning_leaves_no_complete_but_broken_checkpoint(tmp_path, monkeypatch):
    """rmtree dies half-way through an old checkpoint: what is left must not say COMPLETE."""
    for step in (1, 2):
        folder = tmp_path / "checkpoints" / f"step-{step}"
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "model.safetensors").write_bytes(b"x")
        (folder / "training_state.pt").write_bytes(b"x")  # a pre-manifest checkpoint: trusted on its marker
        (folder / "COMPLETE").touch()

    def killed(path, ignore_errors=False):
        os.remove(os.path.join(path, "model", "model.safetensors"))  # the weights went first
        raise KeyboardInterrupt

    monkeypatch.setattr("rlagent.training.checkpoints.shutil.rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoints._prune_checkpoints(str(tmp_path), keep=1)
    assert not (tmp_path / "checkpoints" / "step-1" / "COMPLETE").exists()
    assert checkpoints.latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoints" / "step-2")
    monkeypatch.undo()
    checkpoints._prune_checkpoints(str(tmp_path), keep=1)  # the next prune finishes the job
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-2"]


@pytest.mark.slow
def test_sigkill_and_resume_match_an_uninterrupted_run(tmp_path):
    """SFT and PPO, each killed twice (one kill aimed at a checkpoint write, one at a random moment) and resumed
    with resume_from=auto: same final weights, same metrics for every step, every checkpoint loadable."""
    cmd = [sys.executable, SCRIPT, "--kills", "2", "--stages", "sft,ppo", "--steps", "6", "--workdir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stdout, _ = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the script kills the run it launched before exiting
        stdout, _ = proc.communicate()
        pytest.fail(f"bench/kill_resume.py did not finish in 1200 s:\n{stdout[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:]
    results = [json.loads(line[len("RESULT ") :]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert [r["stage"] for r in results] == ["sft", "ppo"]
    for r in results:
        assert r["kills"] == 2 and r["crashes"] == 0 and r["problems"] == [], r
        assert r["lost_checkpoints"] == r["corrupt_checkpoints"] == 0, r
        assert r["resumes_exact"] == r["resumes"] >= 2, r
        assert r["final_weights_max_diff"] == 0.0 and r["metrics_max_diff"] == 0.0, r
        assert r["metrics_duplicate_rows"] == r["metrics_torn_rows"] == 0 and r["samples_equal"], r
    mismatched = {r["stage"]: r["summary_mismatch"] for r in results if r["summary_mismatched_keys"]}
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert not mismatched, f"summary.json differs after resume: {mismatched}"


def test_a_kill_while_the_manifest_is_written_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """The manifest is written inside step-N.tmp before COMPLETE and the rename: dying there loses only step N."""
    import torch
    from accelerate import Accelerator

    class Tiny(torch.nn.Linear):
        def save_pretrained(self, folder, **kwargs):
            os.makedirs(folder, exist_ok=True)
            torch.save(self.state_dict(), os.path.join(folder, "weights.pt"))

    accelerator, model = Accelerator(cpu=True), Tiny(2, 2)
    checkpoints.save_checkpoint(accelerator, str(tmp_path), 1, {"model": model}, {"step": 1})

    def killed(folder):
        with open(os.path.join(folder, checkpoints.MANIFEST), "w") as handle:
            handle.write('{"files": {"rng')  # torn mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(accelerator, str(tmp_path), 2, {"model": model}, {"step": 2})
    assert os.path.isdir(tmp_path / "checkpoints" / "step-2.tmp")
    assert checkpoints.resolve_resume("auto", str(tmp_path)) == str(tmp_path / "checkpoints" / "step-1")
