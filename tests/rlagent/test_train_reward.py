"""Stage 2 end to end, through the real CLI as subprocesses."""

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import reward_models
from reward_models.pairs import pair_conversations, read_pairs
from tests.conftest import SMALL_MODEL, assert_metrics_documented, launch_two_processes, read_metrics, run_cli
from tests.reward_models.pair_data import addition_pairs, write_pairs

# Tiny models gain nothing from a second thread, and on a busy 2-core machine two spinning threads per process
# make a run 5-10x slower; results are the same either way.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def reward(output_dir, data_path, *extra, check: bool = True):
    return run_cli(
        "rlagent",
        "reward",
        f"output_dir={output_dir}",
        "data.source=file",
        f"data.path={data_path}",
        "progress=false",
        "log_every=1",
        *extra,
        check=check,
        env=ONE_THREAD,
    )


LEARN_ARGS = [*SMALL_MODEL, "max_steps=40", "optim.lr=3e-3", "save_every=0", "eval_every=20", "data.eval_fraction=0.2",
              "normalize.reference_samples=100000"]  # fmt: skip


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory) -> str:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", addition_pairs(300))


def test_a_few_hundred_pairs_export_a_plain_normalised_model(tmp_path, pairs_jsonl):
    """300 pairs, small model: held-out evaluation at steps 20 and 40 on 60 pairs; final/ is a plain HF reward model,
    normalised on export. How accurate it gets is the slow test's business."""
    out = tmp_path / "run"
    reward(out, pairs_jsonl, *LEARN_ARGS, "--pairs-out", str(tmp_path / "used.jsonl"))
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["eval/accuracy"] <= 1 and math.isfinite(summary["eval/margin"]), summary
    assert summary["data/eval"] == 60 and summary["data/rule_pairs"] > 0
    assert [row["step"] for row in read_metrics(out) if "eval/accuracy" in row] == [20, 40]
    assert_metrics_documented(out)

    # Plain transformers gives the raw scores of our API.
    used = read_pairs(str(tmp_path / "used.jsonl"))  # --pairs-out: eval pairs, train pairs, rule-built pairs
    rm = reward_models.load(str(out / "final"))
    model = AutoModelForSequenceClassification.from_pretrained(out / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    chosen, _ = pair_conversations(used[0])
    text = tokenizer.apply_chat_template(chosen, tools=used[0]["tools"], tokenize=False).rstrip("\n")
    with torch.no_grad():
        plain = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0]
    torch.testing.assert_close(rm.score_raw([chosen], used[0]["tools"])[0], plain, rtol=0, atol=1e-5)

    # The reference sample (every exported conversation) has normalised mean 0 and std 1.
    conversations = [conv for pair in used for conv in pair_conversations(pair)]
    scores = rm.score(conversations, [pair["tools"] for pair in used for _ in (0, 1)])
    assert abs(scores.mean().item()) <= 0.05 and abs(scores.std().item() - 1) <= 0.05


@pytest.mark.slow
def test_learns_from_a_few_hundred_pairs(tmp_path, pairs_jsonl):
    """The fast test's run ranks held-out pairs: accuracy >= 0.7 on 60 pairs with a positive margin.
    Measured with these settings on the 2-core AMD EPYC machine (2026-11-29), seeds 0-5: 86.7 / 83.3 / 78.3 / 90.0 /
    83.3 / 81.7 % (the old 80 % bound failed seed 2). 70 % is 5 pairs below the worst seed and 3 standard errors
    (6.5 points on 60 pairs) above chance."""
    reward(tmp_path, pairs_jsonl, *LEARN_ARGS)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval/accuracy"] >= 0.7 and summary["eval/margin"] > 0, summary


def test_resume_auto_continues_exactly(tmp_path, pairs_jsonl):
    args = [
        "max_steps=6",
        "save_every=3",
        "eval_every=3",
        "optim.batch_size=8",
        "optim.micro_batch_size=4",
        *SMALL_MODEL,
    ]
    reward(tmp_path / "a", pairs_jsonl, *args)
    reward(tmp_path / "b", pairs_jsonl, *args)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-6")  # as if killed after the step-3 checkpoint
    shutil.rmtree(tmp_path / "b" / "final")
    proc = reward(tmp_path / "b", pairs_jsonl, *args, "resume_from=auto")
    assert "resume=" + str(tmp_path / "b" / "checkpoints" / "step-3") in proc.stdout
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [row["step"] for row in b] == list(range(1, 7))
    assert a[-1]["train/loss"] == pytest.approx(b[-1]["train/loss"], abs=1e-6)
    assert a[-1]["eval/accuracy"] == b[-1]["eval/accuracy"]
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert {"eval/accuracy", "eval/margin"} <= summary.keys() and summary["steps"] == 6


def test_early_stopping_after_patience_evals_without_improvement(tmp_path, pairs_jsonl):
    """lr=0 keeps the eval loss flat: best at the first eval (step 2), no gain at 4 and 6: stop at 6, checkpointed."""
    out = tmp_path / "run"
    reward(out, pairs_jsonl, *SMALL_MODEL, "max_steps=20", "optim.lr=0", "eval_every=2", "early_stopping_patience=2",
           "save_every=0")  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["steps"] == 6, summary
    assert [row["step"] for row in read_metrics(out) if "eval/loss" in row] == [2, 4, 6]
    assert (out / "final" / "config.json").is_file() and (out / "checkpoints" / "step-6" / "COMPLETE").is_file()


def test_bad_pairs_file_names_the_line_without_traceback(tmp_path, pairs_jsonl):
    """Through the CLI; every kind of bad line is covered in tests/reward_models/test_pairs.py."""
    pairs = [json.loads(line) for line in open(pairs_jsonl).read().splitlines()[:3]]
    pairs[2]["rejected"] = pairs[2]["chosen"]
    bad = write_pairs(tmp_path / "bad.jsonl", pairs)
    proc = reward(tmp_path / "o", bad, check=False)
    assert proc.returncode != 0
    assert f"rlagent reward: error: {bad}:3: 'chosen' and 'rejected' are identical" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_expert_pairs_with_lora_give_a_merged_final(tmp_path):
    """data.source=expert wiring and LoRA: final/ holds merged weights that plain transformers loads."""
    out = tmp_path / "lora"
    run_cli("rlagent", "reward", f"output_dir={out}", "data.source=expert", "data.pairs=12",
            "data.env_ids=rlagent/Calculator-v0,rlagent/KBSearch-v0", "max_steps=3", "save_every=0",
            "progress=false", "optim.batch_size=8", "optim.micro_batch_size=4", "model.lora.enabled=true",
            "data.rule_kinds=[no_tool_call,malformed_call]", *SMALL_MODEL, "--pairs-out", str(tmp_path / "used.jsonl"),
            env=ONE_THREAD)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data/pairs"] == 24 and summary["steps"] == 3
    assert summary["parameters/trainable"] < summary["parameters/total"]
    assert not (out / "final" / "adapter_config.json").exists()
    AutoModelForSequenceClassification.from_pretrained(out / "final")
    kinds = {pair["kind"] for pair in read_pairs(str(tmp_path / "used.jsonl"))}
    assert {"expert:rlagent/Calculator-v0", "expert:rlagent/KBSearch-v0", "rule:no_tool_call"} <= kinds
    assert {kind for kind in kinds if kind.startswith("rule:")} <= {"rule:no_tool_call", "rule:malformed_call"}


def test_unknown_rule_kind_is_named(tmp_path):
    proc = run_cli("rlagent", "reward", f"output_dir={tmp_path}", "data.rule_kinds=[no_tool_call,typo]", check=False)
    assert proc.returncode != 0 and "data.rule_kinds: unknown rule(s) ['typo']" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, pairs_jsonl):
    """Global batch 8 pairs as 1 process x (2 micro x 4 accumulation) and as 2 gloo processes x (4 x 1)."""
    args = ["max_steps=4", "save_every=0", "optim.batch_size=8", *SMALL_MODEL]
    reward(tmp_path / "one", pairs_jsonl, *args, "optim.micro_batch_size=2")
    launch_two_processes(
        "rlagent/train_reward.py", f"output_dir={tmp_path / 'two'}", "data.source=file", f"data.path={pairs_jsonl}",
        "progress=false", "log_every=1", *args, "optim.micro_batch_size=4", env=ONE_THREAD,
    )  # fmt: skip
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["train/loss"] for r in one] == pytest.approx([r["train/loss"] for r in two], rel=1e-5)
    assert [r["train/accuracy"] for r in one] == [r["train/accuracy"] for r in two]
    a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "one" / "final")
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "two" / "final")
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_quickstart_config_reaches_95_percent(tmp_path):
    """configs/quickstart/reward.yaml on expert pairs: >= 92 % held-out pairwise accuracy (about 3 minutes).
    The config's seeds 0/1/2 measured 97.2 / 95.0 / 96.0 % on its 400 held-out pairs (2-core AMD EPYC, 2026-11-29);
    one standard error there is ~1 point, so 92 % leaves 3 points (3 SE) below the worst seed."""
    out = tmp_path / "quickstart"
    run_cli("rlagent", "reward", "--config", "configs/quickstart/reward.yaml", f"output_dir={out}", "progress=false")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval/accuracy"] >= 0.92, summary
    scores = reward_models.load(str(out / "final")).score([[{"role": "user", "content": "hi"}]])
    assert torch.isfinite(scores).all()
