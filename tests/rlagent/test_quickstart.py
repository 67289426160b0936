"""`rlagent quickstart --smoke`: the whole pipeline on minutes-scale settings; checks the summary shape."""

import json

import pytest

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


def test_control_gets_ppo_wall_time_and_its_own_folder(tmp_path, monkeypatch):
    """--control: after PPO, SFT runs again from the SFT policy with max_seconds = PPO's measured seconds, into
    sft_control/ (the stages are stand-ins that record their argv; PPO's takes ~0.3 s)."""
    import time

    from rlagent import train_ppo, train_reward, train_sft
    from rlagent.cli import quickstart

    calls = []
    for module, pause in ((train_sft, 0.0), (train_reward, 0.0), (train_ppo, 0.3)):
        monkeypatch.setattr(module, "main", lambda argv, pause=pause: (calls.append(argv), time.sleep(pause)))
    args = quickstart.parse(["--output-dir", str(tmp_path), "--control"])
    seconds = quickstart.run_stages(args)
    assert [call[1].split("/")[-1] for call in calls] == ["sft.yaml", "reward.yaml", "ppo.yaml", "sft.yaml"]
    control = calls[-1]
    assert f"output_dir={tmp_path / 'sft_control'}" in control
    assert f"model.name_or_path={tmp_path / 'sft' / 'final'}" in control
    budget = [float(a.split("=")[1]) for a in control if a.startswith("max_seconds=")]
    assert budget == [seconds["ppo"]] and 0.3 <= seconds["ppo"] < 5 and "sft_control" in seconds
    assert "eval_every=0" in control and "optim.schedule=constant" in control


def test_table_shows_both_p_values_and_the_control(capsys):
    from rlagent.cli.evaluate import compare
    from rlagent.cli.quickstart import print_table

    def result(successes):  # 4 episodes, seeds 0-3
        stats = {
            "success_ci95": [0.0, 1.0],
            "mean_turns": 2.0,
            "tool_calls_per_episode": 1.0,
            "invalid_tool_call_rate": 0.0,
            "episode_seeds": [0, 1, 2, 3],
            "episode_successes": successes,
        }
        return {"successes": sum(successes), "episodes": 4, "success_rate": sum(successes) / 4, **stats}

    sft, control, ppo = result([1, 0, 0, 0]), result([1, 1, 0, 0]), result([0, 1, 1, 1])
    control.update(compare(sft, control))
    ppo.update(compare(sft, ppo))
    row = {"sft": sft, "sft_control": control, "ppo": ppo, "ppo_vs_control": compare(control, ppo)}
    print_table({"rlagent/Calculator-hard-v0": row}, {"ppo": 1.0})
    out = capsys.readouterr().out
    assert "SFT control" in out and "McNemar" in out
    # PPO vs SFT: discordant 1 (seed 0) : 3 (seeds 1-3); 2 * P(Bin(4, 1/2) <= 1) = 2 * 5/16 = 0.625
    assert ppo["discordant"] == [1, 3] and ppo["p_value_mcnemar"] == 0.625 and "0.62 (1:3)" in out
    assert "PPO vs SFT control, Calculator-hard-v0 greedy: +25.0%" in out


@pytest.mark.slow
def test_quickstart_smoke_with_control(tmp_path):
    """The whole tiny pipeline with --control: an sft_control stage and row, evaluated on the same episodes."""
    run_cli("rlagent", "quickstart", "--output-dir", str(tmp_path), "--smoke", "--eval-episodes", "6", "--control")
    summary = json.loads((tmp_path / "summary.json").read_text())
    control = json.loads((tmp_path / "sft_control" / "summary.json").read_text())
    assert control["steps"] >= 1 and (tmp_path / "sft_control" / "final" / "config.json").is_file()
    assert summary["seconds"]["sft_control"] > 0
    for env_id in ("rlagent/Calculator-v0", "rlagent/KBSearch-v0"):
        row = summary[env_id]
        assert row["sft_control"]["episode_seeds"] == row["ppo"]["episode_seeds"] == row["sft"]["episode_seeds"]
        assert set(row["ppo_vs_control"]) >= {"difference", "p_value", "p_value_mcnemar", "discordant"}
        assert 0.0 <= row["p_value_mcnemar"] <= 1.0 and 0.0 <= row["p_value_mcnemar_sampled"] <= 1.0


def test_decodings_default_by_model_and_bad_names_are_errors(capsys):
    """The tiny default evaluates greedy and sampled rows; a real model greedy only (the budget); a typo is an error
    that names the option."""
    from rlagent.cli import quickstart

    assert quickstart.parse([]).decodings == ["greedy", "sampled"]
    assert quickstart.parse(["--model", "smollm2-135m-instruct"]).decodings == ["greedy"]
    assert quickstart.parse(["--model", "x.gguf", "--decodings", "sampled,greedy"]).decodings == ["sampled", "greedy"]
    with pytest.raises(SystemExit) as exit_info:
        quickstart.parse(["--decodings", "greedy,beam"])
    assert exit_info.value.code == 2 and "--decodings" in capsys.readouterr().err


def test_set_overrides_reach_only_their_stage_and_the_control_keeps_its_budget(tmp_path, monkeypatch, capsys):
    """--set sft.max_steps=5000 lands in the SFT stage's argv (after the config, before what the quickstart wires),
    not in the others; the SFT control's own max_steps/max_seconds come later and win; --set ppo.* also decides
    whether the reward stage runs; a value without a known stage or a key is a usage error naming --set."""
    from rlagent import train_ppo, train_reward, train_sft
    from rlagent.cli import quickstart

    calls = []
    for module in (train_sft, train_reward, train_ppo):
        monkeypatch.setattr(module, "main", lambda argv, name=module.__name__: calls.append((name, argv)))
    argv = ["--output-dir", str(tmp_path), "--control", "--set", "sft.max_steps=5000", "--set", "ppo.algo.kl_coef=0.5"]
    quickstart.run_stages(quickstart.parse(argv))
    by_stage = [(name.rsplit(".", 1)[-1], a) for name, a in calls]
    assert [name for name, _ in by_stage] == ["train_sft", "train_reward", "train_ppo", "train_sft"]
    sft, reward, ppo, control = (a for _, a in by_stage)
    assert "max_steps=5000" in sft and "max_steps=5000" not in reward + ppo
    assert "algo.kl_coef=0.5" in ppo and "algo.kl_coef=0.5" not in sft + reward
    assert control.index("max_steps=5000") < control.index("max_steps=1000000")  # the control's budget wins
    calls.clear()
    skip_rm = ["--output-dir", str(tmp_path), "--set", "ppo.reward.rm_weight=0", "--set", "ppo.algo.estimator=rloo"]
    quickstart.run_stages(quickstart.parse(skip_rm))
    assert [name.rsplit(".", 1)[-1] for name, _ in calls] == ["train_sft", "train_ppo"]
    for bad in ("max_steps=5", "eval.episodes=3", "sft.=3", "sft.max_steps"):
        with pytest.raises(SystemExit) as exit_info:
            quickstart.parse(["--set", bad])
        assert exit_info.value.code == 2 and "--set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "reads"),
    [
        ("reward: {rm_weight: 0}\nalgo: {estimator: rloo}\nvalue: {init: reward_model}\n", False),
        ("reward: {rm_weight: 0}\nalgo: {estimator: gae}\nvalue: {init: policy}\n", False),
        ("reward: {rm_weight: 0}\nalgo: {estimator: gae}\nvalue: {init: reward_model}\n", True),
        ("reward: {rm_weight: 0.1}\nalgo: {estimator: rloo}\n", True),
    ],
)
def test_reward_stage_runs_only_when_ppo_reads_its_model(tmp_path, monkeypatch, settings, reads):
    """A PPO config that neither weighs the reward model's score nor starts its critic from it skips stage 2, and
    PPO gets reward.model_path=null (no folder that was never written)."""
    from rlagent import train_ppo, train_reward, train_sft
    from rlagent.cli import quickstart

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "ppo.yaml").write_text("env: {ids: [rlagent/Calculator-hard-v0]}\n" + settings)
    monkeypatch.setattr(quickstart, "REAL_MODEL_CONFIG_DIR", str(configs))
    calls = []
    for module in (train_sft, train_reward, train_ppo):
        monkeypatch.setattr(module, "main", lambda argv, name=module.__name__: calls.append((name, argv)))
    args = quickstart.parse(["--model", "some/folder", "--output-dir", str(tmp_path / "out")])
    assert quickstart.ppo_reads_reward_model(args) is reads
    seconds = quickstart.run_stages(args)
    names = [name.rsplit(".", 1)[-1] for name, _ in calls]
    assert names == (["train_sft", "train_reward", "train_ppo"] if reads else ["train_sft", "train_ppo"])
    assert ("reward" in seconds) is reads
    rm_path = f"reward.model_path={tmp_path / 'out' / 'reward' / 'final'}" if reads else "reward.model_path=null"
    assert rm_path in calls[-1][1]
