"""`rlagent quickstart --smoke`: the whole pipeline on minutes-scale settings; checks the summary shape."""

import json

from tests.conftest import run_cli

METRICS = (
    "success_rate",
    "success_ci95",
    "mean_reward",
    "mean_turns",
    "tool_calls_per_episode",
    "invalid_tool_call_rate",
    "episodes",
)


def test_quickstart_smoke(tmp_path):
    proc = run_cli(
        "rlagent", "quickstart", "--output-dir", str(tmp_path), "--smoke", "--eval-episodes", "8",
        "--report-to", "jsonl,wandb", env={"WANDB_MODE": "offline"},
    )  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    for env_id in ("rlagent/Calculator-v0", "rlagent/KBSearch-v0"):
        row = summary[env_id]
        for policy in ("sft", "ppo", "sft_sampled", "ppo_sampled"):
            assert all(key in row[policy] for key in METRICS), row[policy]
            assert 0.0 <= row[policy]["success_rate"] <= 1.0 and row[policy]["episodes"] == 8
            lo, hi = row[policy]["success_ci95"]
            assert lo <= row[policy]["success_rate"] <= hi
            wordings = [row[policy].get(f"{w}_wording_episodes", 0) for w in ("seen", "unseen")]
            assert sum(wordings) == 8, row[policy]
        assert 0.0 <= row["p_value"] <= 1.0 and 0.0 <= row["p_value_sampled"] <= 1.0
    for stage in ("sft", "reward", "ppo"):
        assert (tmp_path / stage / "final" / "config.json").is_file()
        assert summary["seconds"][stage] > 0
    assert "held-out" in proc.stdout and "PPO" in proc.stdout and "unseen wording" in proc.stdout
    # W&B offline: one run per stage; PPO's holds the metrics and the sample-trajectory table.
    for stage in ("sft", "reward", "ppo"):
        assert list((tmp_path / stage / "wandb").glob("offline-run-*/*.wandb")), stage
    tables = list((tmp_path / "ppo" / "wandb").glob("offline-run-*/files/media/table/**/*.table.json"))
    assert tables and "[[" in tables[0].read_text()
