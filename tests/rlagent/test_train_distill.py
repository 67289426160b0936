"""`rlagent distill`: the on-policy loss against full-logit arithmetic (masks, alignment), and both modes end to end
through the real CLI on the tiny default (teacher: an untrained tiny model saved as a folder)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlagent.algorithms.ppo_core import reverse_kl
from rlagent.common.config import TinyModelConfig
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
from rlagent.train_distill import token_reverse_kl
from tests.conftest import SMALL_MODEL, assert_metrics_documented, read_metrics, run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
# A short run: 8 episodes per iteration in minibatches of 4, turns of at most 24 tokens, 2 held-out episodes per env.
FAST = ["env.episodes=8", "optim.batch_size=4", "optim.micro_batch_size=2", "rollout.max_new_tokens=24",
        "distill.eval_episodes=2", "progress=false", "log_every=1"]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny model folder with the tiny tokenizer: what a stage's final/ holds."""
    folder = tmp_path_factory.mktemp("teacher")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(SMALL, tokenizer, seed=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def distill(output_dir, teacher, *extra, check=True):
    args = [f"output_dir={output_dir}", f"teacher.name_or_path={teacher}", *SMALL_MODEL, *FAST, *extra]
    return run_cli("rlagent", "distill", "--config", "configs/distill/tiny.yaml", *args, check=check, env=ONE_THREAD)


def test_token_reverse_kl_is_the_full_logit_kl_on_policy_tokens_only():
    """Per-token KL at position t uses both models' logits at t-1 (which predict token t), only where the policy
    mask is set: checked against reverse_kl of full forward logits, position by position."""
    tokenizer = build_tiny_tokenizer()
    student = build_tiny_model(SMALL, tokenizer, seed=0).double()
    teacher = build_tiny_model(SMALL, tokenizer, seed=1).double()
    ids = torch.randint(3, 200, (2, 7))
    attention = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    # prompt, policy, environment, policy tokens; padding in row 1
    mask = torch.tensor([[0, 0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0, 0]])
    got = token_reverse_kl(student, teacher, ids, attention, mask, temperature=2.0)
    with torch.no_grad():
        s_logits = student(input_ids=ids, attention_mask=attention).logits
        t_logits = teacher(input_ids=ids, attention_mask=attention).logits
    expected = torch.zeros(2, 7, dtype=torch.float64)
    for b, t in mask.nonzero().tolist():
        expected[b, t] = reverse_kl(s_logits[b, t - 1], t_logits[b, t - 1], temperature=2.0)
    torch.testing.assert_close(got.detach(), expected, rtol=0, atol=1e-10)
    assert bool((got[mask.bool()] > 0).all())
    got.sum().backward()  # gradients reach the student, never the teacher
    assert student.model.embed_tokens.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_on_policy_end_to_end_and_resume(tmp_path, teacher_dir):
    out = tmp_path / "run"
    distill(out, teacher_dir, "max_steps=2", "save_every=1")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "on_policy" and summary["steps"] == 2
    assert summary["distill/reverse_kl"] > 0 and 0 <= summary["eval/success_rate"] <= 1
    assert summary["train/minibatch_updates"] == 2  # 8 episodes in minibatches of 4
    assert [row["step"] for row in read_metrics(out)] == [1, 2]
    assert_metrics_documented(out)
    AutoModelForCausalLM.from_pretrained(out / "final")
    # resume_from=auto continues at iteration 3 from checkpoints/step-2
    proc = distill(out, teacher_dir, "max_steps=3", "resume_from=auto")
    assert "resume=" in proc.stdout and "step-2" in proc.stdout
    assert [row["step"] for row in read_metrics(out)] == [1, 2, 3]


def test_on_policy_max_seconds_stops_after_the_iteration_that_spends_it(tmp_path, teacher_dir):
    """max_seconds (the time budget the quickstart control and equal-compute comparisons use) ends on-policy
    distillation after the first iteration past it, which is then evaluated, checkpointed and saved as a last one."""
    out = tmp_path / "run"
    distill(out, teacher_dir, "max_steps=50", "max_seconds=0.001", "save_every=0")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["stopped_on_time"] is True
    assert 0 <= summary["eval/success_rate"] <= 1
    assert [row["step"] for row in read_metrics(out)] == [1]
    assert (out / "checkpoints" / "step-1").is_dir() and (out / "final").is_dir()


def test_sequence_end_to_end(tmp_path, teacher_dir):
    """An untrained teacher solves nothing, so every episode is kept (only_successful=false) to have data."""
    out = tmp_path / "run"
    distill(out, teacher_dir, "distill.mode=sequence", "distill.only_successful=false", "distill.teacher_episodes=8",
            "max_steps=2", "distill.eval_fraction=0.1")  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "sequence" and summary["data/teacher_kept"] == 16 and summary["steps"] == 2
    rows = [json.loads(line) for line in (out / "teacher_episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(row["messages"][-1]["role"] in ("assistant", "tool", "user") for row in rows)
    assert "eval/success_rate" in summary and (out / "final" / "config.json").exists()
    assert_metrics_documented(out)


def test_sequence_with_no_successful_teacher_episode_is_a_one_line_error(tmp_path, teacher_dir):
    proc = distill(tmp_path, teacher_dir, "distill.mode=sequence", "distill.teacher_episodes=4", check=False)
    assert proc.returncode == 2 and "solved none of its episodes" in proc.stderr, proc.stderr


def test_on_policy_needs_a_shared_tokenizer(tmp_path, teacher_dir):
    other = tmp_path / "other"
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<extra_token>"])
    build_tiny_model(SMALL, tokenizer, seed=1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    proc = distill(tmp_path / "run", str(other), check=False)
    assert proc.returncode == 2 and "needs one tokenizer for both models" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_teacher_is_a_config_error(tmp_path):
    proc = distill(tmp_path, "", check=False)
    assert proc.returncode == 2 and "teacher.name_or_path must be set" in proc.stderr, proc.stderr
