"""`rlagent eval` and `rlagent rollout`: interval and test arithmetic by hand; JSON and transcripts via the CLI."""

import json

import pytest
import torch

from envs.experts import ScriptedExpert
from rlagent.cli.evaluate import compare, discordant_pairs, evaluate_policy, mcnemar_exact, wilson_interval
from rlagent.common.config import TinyModelConfig
from rlagent.common.data import read_conversations, tokenize_conversation
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
from rlagent.rollout.policies import TextPolicy
from rlagent.rollout.transcripts import wording_breakdown, wording_cell
from tests.rlagent.scripted_models import CountdownScript, first_token_tiny, rigged_tiny

CALC, KB = "rlagent/Calculator-v0", "rlagent/KBSearch-v0"
SMALL = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
RESULT_KEYS = {
    "success_rate",
    "success_ci95",
    "mean_reward",
    "mean_turns",
    "tool_calls_per_episode",
    "invalid_tool_call_rate",
    "episodes",
    "env",
    "policy",
    "seed",
}
# One intra-op thread: subprocesses on a busy 2-core machine otherwise spend their time in OpenMP spin-waits.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def cli(*args):
    from tests.conftest import run_cli

    return run_cli("rlagent", *args, env=ONE_THREAD)


def test_wilson_interval_by_hand():
    # k=8, n=10, z=1.96: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10) = 0.99208 / 1.38416 = 0.716738,
    # half-width 1.96 * sqrt(0.8*0.2/10 + 1.96^2/400) / 1.38416 = 1.96 * 0.160012 / 1.38416 = 0.226581.
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # k=0: the interval is [0, z^2/n / (1 + z^2/n)] = [0, 0.38416 / 1.38416] = [0, 0.27754]; k=n mirrors it.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72246, 1.0), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_fisher_p_value_by_hand():
    """Table [[8, 2], [1, 5]]: hypergeometric over 16 episodes, 9 successes, C(16, 9) = 11440 tables.
    P(first row has x successes) = C(10, x) C(6, 9-x) / 11440: x=3..9 -> 120, 1260, 3780, 4200, 1800, 270, 10.
    Two-sided p sums the tables no more likely than the observed x=8 (270): (270 + 10 + 120) / 11440 = 0.0349650."""
    a = {"successes": 8, "episodes": 10, "success_rate": 0.8}
    b = {"successes": 1, "episodes": 6, "success_rate": 1 / 6}
    out = compare(a, b)
    assert out["p_value"] == pytest.approx(400 / 11440, abs=1e-9)
    assert out["difference"] == pytest.approx(1 / 6 - 0.8)
    assert "two-sided" in out["test"]
    assert compare(a, a)["p_value"] == pytest.approx(1.0)


def test_mcnemar_exact_by_hand():
    # 1 vs 5 discordant: n = 6, P(X <= 1) = (C(6,0) + C(6,1)) / 2^6 = 7/64; two-sided 14/64 = 0.21875.
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64, abs=1e-12)
    assert mcnemar_exact(5, 1) == mcnemar_exact(1, 5)
    # 0 vs 10: 2 * 1/1024 = 0.001953125.
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024, abs=1e-12)
    # 2 vs 12: n = 14, P(X <= 2) = (1 + 14 + 91) / 16384 = 106/16384; two-sided 212/16384 = 0.012939453125.
    assert mcnemar_exact(2, 12) == pytest.approx(212 / 16384, abs=1e-12)
    # 3 vs 3: P(X <= 3) = (1 + 6 + 15 + 20) / 64 = 42/64, doubled > 1, capped at 1; no discordant pair: 1.
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact(-1, 2)


def test_mcnemar_pairs_episodes_by_seed():
    """A: seeds 0-9 solved 0-7; B solved 2-9 (listed in another order): only A 0,1; only B 8,9; both 2-7."""
    a = {"episode_seeds": list(range(10)), "episode_successes": [1] * 8 + [0] * 2, "successes": 8, "episodes": 10,
         "success_rate": 0.8}  # fmt: skip
    b_seeds = list(range(9, -1, -1))
    b = {"episode_seeds": b_seeds, "episode_successes": [int(seed >= 2) for seed in b_seeds], "successes": 8,
         "episodes": 10, "success_rate": 0.8}  # fmt: skip
    assert discordant_pairs(a, b) == (2, 2)
    out = compare(a, b)
    # 2 vs 2: P(X <= 2) = (1 + 4 + 6) / 16 = 11/16, doubled > 1 -> 1.
    assert out["discordant"] == [2, 2] and out["p_value_mcnemar"] == 1.0 and "McNemar" in out["test_mcnemar"]
    with pytest.raises(ValueError, match="same episodes"):
        compare(a, {**b, "episode_seeds": list(range(1, 11))})
    assert "p_value_mcnemar" not in compare({"successes": 1, "episodes": 2, "success_rate": 0.5}, a)


def test_evaluate_policy_api_scripted_expert_is_perfect_at_noise_0():
    tok = build_tiny_tokenizer()
    expert = TextPolicy(lambda seed: ScriptedExpert(0.0, seed).act, tok, per_episode=True)
    result = evaluate_policy(expert, tok, KB, episodes=40, seed=3, batch_size=16)
    assert RESULT_KEYS <= set(result)
    assert result["success_rate"] == 1.0 and result["episodes"] == 40 and result["invalid_tool_call_rate"] == 0.0
    assert result["success_ci95"] == pytest.approx(list(wilson_interval(40, 40)))
    assert result["split"] == "test" and result["tool_calls_per_episode"] > 1  # multi-hop questions
    # the test split mixes training and held-out wordings; the expert solves both
    assert result["seen_wording_episodes"] + result["unseen_wording_episodes"] == 40
    assert result["unseen_wording_episodes"] > 0 and result["unseen_wording_success_rate"] == 1.0


def test_wording_breakdown_by_hand():
    def record(phrasing, success):
        return {"task": {"phrasing": phrasing} if phrasing else {}, "success": success}

    # seen: add/0 ok, mul/1 fail, two_ops/2 ok -> 2/3; unseen (trailing "*"): add/3* ok, div/4* fail -> 1/2;
    # a task without a phrasing counts in neither group.
    records = [record("add/0", True), record("mul/1", False), record("two_ops/2", True), record("add/3*", True),
               record("div/4*", False), record(None, True)]  # fmt: skip
    out = wording_breakdown(records)
    assert out == {
        "seen_wording_episodes": 3,
        "seen_wording_success_rate": pytest.approx(2 / 3),
        "unseen_wording_episodes": 2,
        "unseen_wording_success_rate": 0.5,
    }
    assert wording_cell(out) == "66.7% / 50.0%"
    assert wording_cell(wording_breakdown(records[:3])) == "66.7% / -"
    assert wording_breakdown([record(None, True)]) == {} and wording_cell({}) == ""


def test_evaluate_policy_api_model_is_batch_size_independent_when_greedy():
    """The same episodes in batches of 6 and of 4 give the same statistics. The rigged model's episodes differ in
    turns and cut-off turns by construction (an untrained model's greedy tokens could flip on float noise)."""
    tok = build_tiny_tokenizer()
    model = rigged_tiny(tok, CountdownScript(tok, longest=9, answer_every=3)).model
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = evaluate_policy(model, tok, CALC, episodes=6, seed=0, batch_size=6, max_new_tokens=8)
        b = evaluate_policy(model, tok, CALC, episodes=6, seed=0, batch_size=4, max_new_tokens=8)
    finally:
        torch.set_num_threads(before)
    assert {k: v for k, v in a.items() if "seconds" not in k and "per_s" not in k} == {
        k: v for k, v in b.items() if "seconds" not in k and "per_s" not in k
    }
    assert 0 < a["missing_eos_rate"] < 1 and a["mean_turns"] > 1  # the batches really differ in shape


def test_eval_cli_json(tmp_path):
    out = tmp_path / "eval.json"
    proc = cli("eval", "--policy", "scripted", "--env", CALC, "--episodes", "30", "--seed", "5", "--out", str(out))
    result = json.loads(out.read_text())
    assert RESULT_KEYS <= set(result)
    assert (result["env"], result["policy"], result["seed"], result["episodes"]) == (CALC, "scripted", 5, 30)
    assert result["success_rate"] == 1.0 and result["success_ci95"][1] == 1.0
    assert result["mean_turns"] == 2.0 and result["tool_calls_per_episode"] == 1.0
    assert "100.0% (30/30)" in proc.stdout


def test_eval_cli_model_folder_and_several_envs(tmp_path):
    tok = build_tiny_tokenizer()
    build_tiny_model(SMALL, tok, seed=0).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "eval.json"
    cli(
        "eval",
        "--policy",
        str(tmp_path / "model"),
        "--env",
        CALC,
        "--env",
        KB,
        "--episodes",
        "3",
        "--max-new-tokens",
        "8",
        "--out",
        str(out),
    )
    results = json.loads(out.read_text())["envs"]
    assert [r["env"] for r in results] == [CALC, KB]
    assert all(RESULT_KEYS <= set(r) and r["greedy"] and r["episodes"] == 3 for r in results)


def test_eval_cli_compare(tmp_path):
    out = tmp_path / "compare.json"
    cli("eval", "--compare", "scripted", "random", "--env", CALC, "--episodes", "20", "--seed", "0", "--out", str(out))
    block = json.loads(out.read_text())
    assert block["env"] == CALC and block["episodes"] == 20 and "Fisher" in block["test"]
    first, second = block["results"]
    assert "p_value" not in first and first["success_rate"] == 1.0
    assert second["baseline"] == "scripted" and second["policy"] == "random"
    assert second["difference"] == pytest.approx(second["success_rate"] - 1.0)
    assert second["p_value"] < 1e-6  # 20/20 vs (nearly) 0/20
    assert first["episode_seeds"] == second["episode_seeds"] == list(range(20))
    only_scripted, only_random = second["discordant"]
    assert only_random == 0 and only_scripted == 20 - sum(second["episode_successes"])
    assert second["p_value_mcnemar"] == pytest.approx(mcnemar_exact(only_scripted, 0))


def test_rollout_cli_transcripts_and_sft_ready_jsonl(tmp_path):
    path = tmp_path / "episodes.jsonl"
    proc = cli(
        "rollout",
        "--env",
        CALC,
        "--policy",
        "scripted",
        "--episodes",
        "3",
        "--seed",
        "0",
        "--noise",
        "0.5",
        "--save",
        str(path),
        "--show-tokens",
    )
    assert "episode 2 · seed 2" in proc.stdout and "[tool calculator]" in proc.stdout
    assert "⟦<tool_call>" in proc.stdout and "token spans: prompt[0:" in proc.stdout  # policy tokens marked
    assert "3 episodes · success" in proc.stdout and "tokens/s" in proc.stdout
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 3
    tok = build_tiny_tokenizer()
    for record, row in zip(records, read_conversations(str(path))):  # loads as SFT data as it is
        assert {"reward", "reward_components", "success", "turns", "input_ids", "policy_mask"} <= set(record)
        sft = tokenize_conversation(tok, row["messages"], row["tools"], max_length=10_000)
        n = len(record["input_ids"])
        assert sft.input_ids[:n] == record["input_ids"] and sft.assistant_mask[:n] == record["policy_mask"]


def test_rollout_cli_random_policy():
    proc = cli("rollout", "--env", KB, "--policy", "random", "--episodes", "12", "--seed", "0")
    assert "12 episodes · success 0.0%" in proc.stdout and "[tool error] Error:" in proc.stdout


def test_rollout_cli_model_folder(tmp_path):
    """A saved model whose greedy turns never end (all logits 0: always token 0) prints 6-token turns, missing EOS."""
    tok = build_tiny_tokenizer()
    first_token_tiny(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    proc = cli(
        "rollout",
        "--env",
        CALC,
        "--policy",
        str(tmp_path / "model"),
        "--episodes",
        "2",
        "--greedy",
        "--max-new-tokens",
        "6",
        "--split",
        "test",
    )
    assert "[assistant · 6 tokens]" in proc.stdout and "missing_eos" in proc.stdout
