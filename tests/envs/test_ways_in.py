"""Each way in, end to end on the tiny default: a registered id (plain `gymnasium.register`, no entry point), a
`module:attr` gymnasium.Env subclass, a `module:attr` factory and a TRL-style class, played by `rlagent rollout`
and `rlagent eval`, and trained together for one `rlagent ppo` iteration with reward functions and a wrapper on.

The CLIs run in-process (their `main`) where that is the same code path; PPO runs once as a real subprocess.
"""

import json

import pytest

from rlagent.cli import evaluate, rollout_cli
from rlagent.common.config import ConfigError
from tests.conftest import SMALL_MODEL, assert_metrics_documented, read_metrics, run_cli

PLUGIN = "tests.envs.byo_plugin"
SPECS = [f"{PLUGIN}:byo/Units-v0", f"{PLUGIN}:UnitsEnv", f"{PLUGIN}:make_units", f"{PLUGIN}:Echo"]


@pytest.mark.parametrize("spec", SPECS)
def test_rollout_cli_plays_each_way_in(spec, tmp_path):
    save = tmp_path / "episodes.jsonl"
    stats = rollout_cli.main(["--env", spec, "--policy", "random", "--episodes", "3", "--seed", "0", "--quiet",
                              "--max-new-tokens", "16", "--save", str(save)])  # fmt: skip
    rows = [json.loads(line) for line in save.read_text().splitlines()]
    assert len(rows) == 3 and stats["episodes"] == 3
    assert [row["env"] for row in rows] == [spec] * 3
    assert all(row["messages"][0]["role"] in ("system", "user") and row["tools"] for row in rows)


def test_scripted_expert_plays_the_registered_id_and_the_factory(tmp_path):
    """The scripted expert reads the task's solution: every episode of both specs is solved in two turns."""
    out = tmp_path / "eval.json"
    evaluate.main(["--policy", "scripted", "--env", SPECS[0], "--env", SPECS[2], "--episodes", "4",
                   "--out", str(out)])  # fmt: skip
    results = json.loads(out.read_text())["envs"]
    assert [(r["env"], r["success_rate"], r["mean_turns"]) for r in results] == [(SPECS[0], 1.0, 2.0),
                                                                                  (SPECS[2], 1.0, 2.0)]  # fmt: skip


def test_eval_wrapper_reports_with_and_without(tmp_path):
    """tool_faults at rate 1 replaces every tool result with a time-out; the scripted expert answers from the task,
    so its success is unchanged, but the wrapped rows say which wrapper ran and see the same episodes."""
    out = tmp_path / "compare.json"
    evaluate.main(["--compare", "scripted", "random", "--env", SPECS[2], "--wrapper", "tool_faults:1.0:timeout",
                   "--episodes", "5", "--max-new-tokens", "16", "--out", str(out)])  # fmt: skip
    blocks = json.loads(out.read_text())["envs"]
    assert [(b["env"], b["wrapper"]) for b in blocks] == [(SPECS[2], None), (SPECS[2], "tool_faults:1.0:timeout")]
    assert all([r["policy"] for r in b["results"]] == ["scripted", "random"] for b in blocks)
    assert all(r["wrapper"] == b["wrapper"] and r["episodes"] == 5 for b in blocks for r in b["results"])
    assert blocks[0]["results"][0]["success_rate"] == blocks[1]["results"][0]["success_rate"] == 1.0


def test_eval_rejects_a_bad_wrapper_before_loading_anything(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--policy", "scripted", "--env", SPECS[0], "--wrapper", "prompt_injection:2"])
    assert "rate must be in [0, 1]" in capsys.readouterr().err


def test_one_ppo_iteration_on_all_four_ways_in(tmp_path):
    """One subprocess: 5 episodes, one per way in plus examples/trl_counter.py (the class that
    tests/envs/test_trl_adapter.py trains with TRL's GRPOTrainer), prompt injection on, two reward functions
    logged as reward/<name>. Iteration 1 plays seeds 0-4 (rlagent.rollout.schedule.episode_seeds);
    broken_on_odd_seeds fails on 0 and 4 (NaN), 1 and 3 (raises), even at weight 0, so those four are dropped
    and counted and seed 2 is trained on."""
    run_cli("rlagent", "ppo", f"output_dir={tmp_path}", "model.name_or_path=tiny", *SMALL_MODEL, "progress=false",
            f"env.ids=[{','.join(SPECS)},examples.trl_counter:make_env]", "env.episodes=5",
            "env.wrappers=prompt_injection:0.5",
            f"reward.functions=[{PLUGIN}:turns_bonus,{PLUGIN}:broken_on_odd_seeds]",
            "reward.function_weights=[1.0,0.0]", "optim.batch_size=5", "optim.micro_batch_size=5", "max_steps=1",
            "save_every=0", "rollout.max_new_tokens=16", "rollout.max_total_tokens=512")  # fmt: skip
    (row,) = read_metrics(tmp_path)
    assert row["step"] == 1 and row["reward/function_errors"] == 4 and row["objective/nonfinite_scores"] == 4
    assert row["train/skipped_iteration"] == 0.0 and row["reward/broken_on_odd_seeds"] == 1.0
    assert row["reward/turns_bonus"] >= 0.25 and row["env/turns"] * 0.25 == pytest.approx(row["reward/turns_bonus"])
    assert_metrics_documented(tmp_path)


def test_a_bad_spec_is_a_config_error_naming_it():
    """The CLIs print a ConfigError as one line (rlagent.common.config.run_main) instead of a traceback."""
    with pytest.raises(ConfigError, match=r"^environment 'no_such_pkg_xyz:Env': no module named 'no_such_pkg_xyz'"):
        rollout_cli.main(["--env", "no_such_pkg_xyz:Env", "--policy", "random", "--episodes", "1"])
    with pytest.raises(ConfigError, match=r"environment 'tests.envs.byo_plugin:nothing'.* has no attribute 'nothing'"):
        evaluate.main(["--policy", "random", "--env", f"{PLUGIN}:nothing", "--episodes", "1"])
