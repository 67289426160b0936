"""Stage 1 end to end, through the real CLI as subprocesses."""

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import SMALL_MODEL, assert_metrics_documented, launch_two_processes, read_metrics, run_cli


def sft(output_dir, data_path, *extra):
    return run_cli(
        "rlagent",
        "sft",
        f"output_dir={output_dir}",
        "data.source=file",
        f"data.path={data_path}",
        "progress=false",
        "log_every=1",
        *extra,
    )


def losses(output_dir) -> list[float]:
    return [row["train/loss"] for row in read_metrics(output_dir)]


def test_sft_run_writes_a_loadable_final(tmp_path, demo_jsonl):
    """12 steps on the small model: finite losses logged every step, the summary agrees with metrics.jsonl, and
    final/ loads with plain transformers and generates. What the model learns is the slow test's business."""
    sft(tmp_path, demo_jsonl, "max_steps=12", "optim.lr=2e-3", "save_every=0", *SMALL_MODEL)
    summary = json.loads((tmp_path / "summary.json").read_text())
    curve = losses(tmp_path)
    assert summary["data/truncated"] == 0 and summary["steps"] == 12 and len(curve) == 12
    assert all(math.isfinite(loss) and loss > 0 for loss in curve)
    assert summary["first/train_loss"] == curve[0] and summary["final/train_loss"] == curve[-1]
    assert_metrics_documented(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    prompt = [{"role": "user", "content": "What is 12 plus 30?"}]
    batch = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 5) and (out < len(tokenizer)).all()
    assert (tmp_path / "config.yaml").is_file()


@pytest.mark.slow
def test_sft_halves_the_loss(tmp_path, demo_jsonl):
    """50 steps on the default tiny model at least halve the train loss. Measured with these settings on the 2-core
    AMD EPYC machine (2026-11-29), seeds 0/1/2: final/first ratio 0.092 / 0.086 / 0.095, so the 0.5 bound has a
    ~5x margin. Not asserted: that the greedy reply opens with <tool_call>. The same three runs did so on 10 / 1 / 4
    of 10 addition prompts, so after 50 steps the format is there for some seeds only."""
    sft(tmp_path, demo_jsonl, "max_steps=50", "optim.lr=2e-3", "save_every=0")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final/train_loss"] <= 0.5 * summary["first/train_loss"], summary


def test_same_seed_same_curve_and_exact_resume(tmp_path, demo_jsonl):
    args = ["max_steps=12", "save_every=6", *SMALL_MODEL]
    sft(tmp_path / "a", demo_jsonl, *args)
    sft(tmp_path / "b", demo_jsonl, *args)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    # Simulate a kill after the step-6 checkpoint: drop everything later, then resume.
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-12")
    shutil.rmtree(tmp_path / "b" / "final")
    proc = sft(tmp_path / "b", demo_jsonl, *args, "resume_from=auto")
    assert "resume=" + str(tmp_path / "b" / "checkpoints" / "step-6") in proc.stdout
    resumed = losses(tmp_path / "b")
    assert [row["step"] for row in read_metrics(tmp_path / "b")] == list(range(1, 13))  # no duplicated rows
    assert abs(resumed[-1] - losses(tmp_path / "a")[-1]) <= 1e-6


def test_two_processes_match_one(tmp_path, demo_jsonl):
    """Global batch 8 as 1 process x (2 micro x 4 accumulation) and as 2 gloo processes x (4 x 1)."""
    args = ["max_steps=5", "save_every=0", "optim.batch_size=8", *SMALL_MODEL]
    sft(tmp_path / "one", demo_jsonl, *args, "optim.micro_batch_size=2")
    launch_two_processes(
        "rlagent/train_sft.py",
        f"output_dir={tmp_path / 'two'}",
        "data.source=file",
        f"data.path={demo_jsonl}",
        "progress=false",
        "log_every=1",
        *args,
        "optim.micro_batch_size=4",
    )
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 5
    # Same global batch, same update: only float summation order differs (measured ~1e-7 relative).
    assert one == pytest.approx(two, rel=1e-5)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final")
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_malformed_jsonl_names_file_and_line(tmp_path, demo_jsonl):
    bad = tmp_path / "bad.jsonl"
    lines = open(demo_jsonl).read().splitlines()[:3] + ['{"messages": [oops'] + ["{}"]
    bad.write_text("\n".join(lines) + "\n")
    proc = run_cli("rlagent", "sft", f"output_dir={tmp_path}/o", "data.source=file", f"data.path={bad}", check=False)
    assert proc.returncode != 0
    assert f"rlagent sft: error: {bad}:4: malformed JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_key_from_cli(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: x\nmax_step: 3\n")
    proc = run_cli("rlagent", "sft", "--config", str(cfg), check=False)
    assert proc.returncode != 0
    assert f"{cfg}:2: unknown key 'max_step'; did you mean 'max_steps'?" in proc.stderr


def test_wandb_offline_and_tensorboard(tmp_path, demo_jsonl):
    """report_to=[jsonl,wandb,tensorboard] works with no network (WANDB_MODE=offline) and writes all three."""
    sft(tmp_path, demo_jsonl, "max_steps=3", "save_every=0", "report_to=[jsonl,wandb,tensorboard]", *SMALL_MODEL)
    assert len(read_metrics(tmp_path)) == 3
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_max_seconds_stops_on_time_then_evaluates_and_saves(tmp_path, demo_jsonl):
    """A time budget (what the quickstart's SFT control uses): max_steps far out of reach, so only the clock stops
    it; the run still ends like one that reached max_steps (held-out eval logged, final/ saved)."""
    sft(tmp_path, demo_jsonl, "max_steps=100000", "max_seconds=2", "optim.schedule=constant",
        "optim.warmup_ratio=0", "eval_every=0", "save_every=0", *SMALL_MODEL)  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = read_metrics(tmp_path)
    assert summary["stopped_on_time"] is True and not summary["stopped_early"]
    assert 1 <= summary["steps"] < 100000 and rows[-1]["step"] == summary["steps"]
    assert "eval/loss" in rows[-1] and (tmp_path / "final" / "config.json").is_file()


@pytest.mark.slow
def test_max_seconds_under_two_processes_stops_both_at_one_step(tmp_path, demo_jsonl):
    """Each process has its own clock; they take the slower one's (a max-reduce), so both stop after the same step
    (a mismatch would hang the next collective) and the run ends normally."""
    args = ["max_steps=100000", "max_seconds=3", "optim.schedule=constant", "optim.warmup_ratio=0", "eval_every=0",
            "save_every=0", "optim.batch_size=8", "optim.micro_batch_size=4", *SMALL_MODEL]  # fmt: skip
    launch_two_processes("rlagent/train_sft.py", f"output_dir={tmp_path}", "data.source=file",
                         f"data.path={demo_jsonl}", "progress=false", "log_every=1", *args)  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_on_time"] is True and 1 <= summary["steps"] < 100000
    assert (tmp_path / "final" / "config.json").is_file()


def test_sft_task_sorts_micro_batches_and_eval_by_length_without_changing_the_eval_loss():
    """The task groups similar lengths (less padding to compute): its sort key is the conversation's token count, and
    its eval pass over the length-sorted rows gives the token-mean loss of the rows in their given order."""
    from types import SimpleNamespace

    from rlagent.common.config import TinyModelConfig
    from rlagent.common.data import TokenizedConversation
    from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
    from rlagent.train_sft import conversation_length, evaluate, sft_task

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tokenizer, 0
    )
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in (9, 3, 17, 5, 12, 4):  # lengths out of order
        ids = torch.randint(10, 200, (n,), generator=gen).tolist()
        rows.append(TokenizedConversation(ids, [0] + [1] * (n - 1), False))
    cfg = SimpleNamespace(
        model=SimpleNamespace(selective_head=True), optim=SimpleNamespace(micro_batch_size=2), max_length=64
    )
    stats = {"data/train": 0, "data/eval": len(rows), "data/truncated": 0}
    task = sft_task(cfg, [], rows, stats, tokenizer.pad_token_id, torch.device("cpu"))
    assert task.length is conversation_length and task.length(rows[2]) == 17
    unsorted = evaluate(model, rows, tokenizer.pad_token_id, 2, "cpu")["eval/loss"]
    assert task.evaluate(model)["eval/loss"] == pytest.approx(unsorted, rel=1e-5)
