"""The README's commands run as written (shrunk to one step / a few episodes), in the README's order, in a scratch
working directory: the quickstart table, the bring-your-own and robustness blocks, and the Python API example.

Left out, each for a reason the README itself gives: SmolLM2 and GSM8K commands (model weights / a data download)
and what reads their exports,
the two-machine launch, `make` and `pip` lines, and `bench/` scripts (benchmarks, never in the test suite).
The fast tests check every kept command against its parser (config keys and types, CLI flags) and run the Python
API example; the slow one runs them all.
"""

import os
import re
import shlex
import shutil

import pytest

from tests.conftest import ROOT, SMALL_MODEL, run_cli

# " [": a synopsis line; "exports/": folders the (skipped) SmolLM2 export commands write.
SKIP = ("smollm2", "gsm8k", "GSM8K", "--num_machines", "bench/", "make ", "pip ", " [", "exports/")
# Parsed by the fast test but not run by the slow one: a server never exits, a sweep is many runs, the report reads
# a server's log, and a quickstart is the whole pipeline (tests/rlagent/test_serving.py, test_sweep.py and
# test_quickstart.py run them).
NOT_RUN = ("serve", "sweep", "ab-report", "quickstart")
SHRINK = {  # appended to a stage command: one optimizer step / iteration on a few examples
    "sft": ["max_steps=1", "data.episodes=8", "optim.batch_size=4", "eval_every=0", "save_every=0", *SMALL_MODEL],
    "reward": ["max_steps=1", "data.pairs=8", "optim.batch_size=4", "eval_every=0", "save_every=0",
               "normalize.reference_samples=8", *SMALL_MODEL],
    "ppo": ["max_steps=1", "env.episodes=4", "optim.batch_size=4", "optim.micro_batch_size=4", "save_every=0",
            "rollout.max_new_tokens=16", "rollout.max_total_tokens=256"],
}  # fmt: skip


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return handle.read()


def readme_commands() -> list[str]:
    """`rlagent ...` commands of the "What you get" table and of every bash block, in README order."""
    text, found = readme(), []
    for match in re.finditer(r"^\| [^|]+ \| `(rlagent [^`]+)` \|", text, flags=re.M):
        found.append((match.start(), match.group(1)))
    for block in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block.group(1))
        for offset, line in enumerate(joined.splitlines()):
            command = line.split("  #")[0].strip()
            if command.startswith("rlagent "):
                found.append((block.start() + offset, command))
    return [command for _, command in sorted(found) if not any(word in command for word in SKIP)]


def as_run(command: str) -> list[str]:
    """argv of the shrunk command: placeholders filled, a few episodes, the stage's SHRINK overrides."""
    argv = shlex.split(command.replace(" PATH ", " runs/quickstart/ppo/final "))
    if "--episodes" in argv:
        argv[argv.index("--episodes") + 1] = "2"
    return argv + (["progress=false", *SHRINK[argv[1]]] if argv[1] in SHRINK else [])


def python_api_example() -> str:
    text = readme()
    section = text[text.index("### Python API") :]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_lists_the_commands_this_test_runs():
    commands = readme_commands()
    stages = [c for c in commands if not c.startswith("rlagent quickstart")]
    assert stages[:3] == [f"rlagent {s} --config configs/quickstart/{s}.yaml" for s in ("sft", "reward", "ppo")]
    assert any(c.startswith("rlagent rollout --env examples.trl_counter") for c in commands) and len(commands) >= 12


def test_every_readme_command_parses(capsys):
    """Stage commands: the config file and every override load (keys, types, ranges); the others: their flags."""
    from rlagent.cli import evaluate, plot, quickstart, rollout_cli, serve, sweep
    from rlagent.common.config import load_config
    from rlagent.train_distill import DistillConfig
    from rlagent.train_ppo import PPOConfig
    from rlagent.train_reward import RewardConfig
    from rlagent.train_sft import SFTConfig

    configs = {"sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig, "distill": DistillConfig}
    parsers = {"rollout": rollout_cli.parse, "eval": evaluate.parse, "plot": plot.parse, "serve": serve.parse}
    parsers.update({"sweep": sweep.parse, "ab-report": lambda argv: None})  # ab-report: its flags are positional
    parsers["quickstart"] = quickstart.parse
    for command in readme_commands():
        argv = as_run(command)[1:]
        if argv[0] in configs:
            i = argv.index("--config")
            load_config(configs[argv[0]], os.path.join(ROOT, argv[i + 1]), argv[1:i] + argv[i + 2 :])
        else:
            parsers[argv[0]](argv[1:])


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    code = python_api_example()
    assert len(code.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(ROOT)
    small = '"max_steps": 1, "progress": False, "env.episodes": 4, "optim.batch_size": 4, "rollout.max_new_tokens": 16'
    assert '"max_steps": 20' in code
    exec(compile(code.replace('"max_steps": 20', small), "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "counter" / "final" / "config.json").is_file()


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    """~15 commands, each a subprocess (several minutes on 2 CPU cores)."""
    for name in ("configs", "examples"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    for command in [c for c in readme_commands() if c.split()[1] not in NOT_RUN]:
        argv = as_run(command)
        if argv[1] == "plot":  # two runs to overlay: the quickstart's PPO run, twice
            for run in ("runs/a/ppo", "runs/b/ppo"):
                shutil.copytree(tmp_path / "runs/quickstart/ppo", tmp_path / run, dirs_exist_ok=True)
        proc = run_cli(*argv, cwd=str(tmp_path), check=False)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
