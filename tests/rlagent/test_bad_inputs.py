"""Bad inputs through the real CLI: each exits non-zero with one line that names the file and line (or the key),
never a traceback, and before any model is built.

Every case runs in-process through the real entry point `rlagent.cli.main` (one import of torch for the whole
table); a representative subset also runs as real `rlagent` subprocesses, all started at once.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import transformers

import rlagent.common.data
from rlagent.cli import main as cli_main
from tests.conftest import BIN, ROOT, SMALL_MODEL, addition_conversation

GOOD = json.dumps(addition_conversation(2, 3))
PAIR = json.dumps(
    {"chosen": addition_conversation(2, 3)["messages"], "rejected": addition_conversation(2, 4)["messages"]}
)
UNCLOSED = '{"messages": [{"role": "user", "content": "hi"}'  # the error is at the end of the line
# name -> file content (bytes); the bad line is line 2 unless the content says otherwise.
FILES = {
    "bigint.jsonl": f'{GOOD}\n{{"messages": [], "n": {"1" * 5000}}}\n',
    "deep.jsonl": f'{GOOD}\n{{"messages": {"[" * 100_000}{"]" * 100_000}}}\n',
    "utf8.jsonl": GOOD.encode() + b'\n{"messages": "caf\xff"}\n',
    "tools.jsonl": GOOD + "\n" + json.dumps({**addition_conversation(1, 1), "tools": "calculator"}) + "\n",
    "tools_noname.jsonl": GOOD + "\n" + json.dumps({**addition_conversation(1, 1), "tools": [{"type": "x"}]}) + "\n",
    "eol.jsonl": f"{GOOD}\n{UNCLOSED}\n",
    "empty.jsonl": "\n\n",
    "array.jsonl": f"{GOOD}\n[1, 2]\n",
    "msg_str.jsonl": f'{GOOD}\n{{"messages": "hello"}}\n',
    "no_role.jsonl": f'{GOOD}\n{{"messages": [{{"content": "hi"}}]}}\n',
    "no_content.jsonl": f'{GOOD}\n{{"messages": [{{"role": "user"}}, {{"role": "assistant", "content": "x"}}]}}\n',
    "nul.jsonl": f'{GOOD}\n{{"messages": "a\x00b"}}\n',
    "bad_call.jsonl": f'{GOOD}\n{{"messages": [{{"role": "assistant", "tool_calls": ["calc(1)"]}}]}}\n',
    "huge_line.jsonl": f"{GOOD}\n{' ' * 5000}{GOOD}\n",  # over the limit the case sets (the real one is 64 MiB)
    "pair_bigint.jsonl": f'{PAIR}\n{{"chosen": [], "n": {"1" * 5000}}}\n',
    "pair_deep.jsonl": f'{PAIR}\n{{"chosen": {"[" * 100_000}{"]" * 100_000}}}\n',
    "pair_utf8.jsonl": PAIR.encode() + b'\n{"chosen": "\xfe"}\n',
    "pair_tools.jsonl": PAIR + "\n" + PAIR[:-1] + ', "tools": "calculator"}\n',
    "pair_margin.jsonl": PAIR + "\n" + PAIR[:-1] + f', "margin": {"9" * 400}}}\n',
    "pair_empty.jsonl": "",
    "utf8.yaml": b"max_steps: \xff\n",
    "list.yaml": "- max_steps\n- 3\n",
    "syntax.yaml": "seed: 1\noptim: {lr: 1\n",
    "twice.yaml": "seed: 1\nmax_steps: 5\nseed: 2\n",
    "bigint.yaml": f"seed: {'1' * 5000}\n",
    "nul.yaml": "seed: 1\x00\n",
    "one.jsonl": f"{GOOD}\n",
    "no_config/weights.bin": "",
    "not_a_checkpoint/training_state.pt": "",
}
SFT_FILE = ["data.source=file", *SMALL_MODEL]
RM_FILE = "data.source=file"
SFT = "configs/quickstart/sft.yaml"
REWARD = "configs/quickstart/reward.yaml"
PPO = "configs/quickstart/ppo.yaml"

# (id, argv with {d} = the folder of FILES, fragments the error line must contain ({d} too))
CASES = [
    ("sft-bigint", ["sft", "--config", SFT, *SFT_FILE, "data.path={d}/bigint.jsonl"], ["{d}/bigint.jsonl:2:", "4300"]),
    ("sft-deep", ["sft", "--config", SFT, *SFT_FILE, "data.path={d}/deep.jsonl"], ["{d}/deep.jsonl:2:", "nested"]),
    ("sft-utf8", ["sft", "--config", SFT, *SFT_FILE, "data.path={d}/utf8.jsonl"], ["utf8.jsonl:2:", "column 18"]),
    ("sft-tools", ["sft", "--config", SFT, *SFT_FILE, "data.path={d}/tools.jsonl"], ["tools.jsonl:2:", "'tools'"]),
    ("sft-tool-name", ["sft", *SFT_FILE, "data.path={d}/tools_noname.jsonl"], ["tools_noname.jsonl:2:", "'tools[0]'"]),
    ("sft-eol", ["sft", *SFT_FILE, "data.path={d}/eol.jsonl"], ["eol.jsonl:2:", f"column {len(UNCLOSED) + 1})"]),
    ("sft-empty", ["sft", *SFT_FILE, "data.path={d}/empty.jsonl"], ["{d}/empty.jsonl:", "no conversations"]),
    ("sft-array", ["sft", *SFT_FILE, "data.path={d}/array.jsonl"], ["array.jsonl:2:", "got array"]),
    ("sft-msg-str", ["sft", *SFT_FILE, "data.path={d}/msg_str.jsonl"], ["msg_str.jsonl:2:", "'messages'"]),
    ("sft-no-role", ["sft", *SFT_FILE, "data.path={d}/no_role.jsonl"], ["no_role.jsonl:2:", "'messages[0].role'"]),
    ("sft-no-content", ["sft", *SFT_FILE, "data.path={d}/no_content.jsonl"], ["no_content.jsonl:2:", "'messages[0]'"]),
    ("sft-nul", ["sft", *SFT_FILE, "data.path={d}/nul.jsonl"], ["nul.jsonl:2:", "control character at column 16)"]),
    ("sft-tool-call", ["sft", *SFT_FILE, "data.path={d}/bad_call.jsonl"], ["bad_call.jsonl:2:", "tool_calls[0]"]),
    ("sft-huge-line", ["sft", *SFT_FILE, "data.path={d}/huge_line.jsonl"], ["huge_line.jsonl:2:", "longer than"]),
    ("sft-data-dir", ["sft", *SFT_FILE, "data.path={d}"], ["data.path", "{d} is a directory"]),
    ("sft-data-missing", ["sft", *SFT_FILE, "data.path={d}/nope.jsonl"], ["data.path", "not found: {d}/nope.jsonl"]),
    ("rm-bigint", ["reward", RM_FILE, "data.path={d}/pair_bigint.jsonl"], ["pair_bigint.jsonl:2:", "4300"]),
    ("rm-deep", ["reward", RM_FILE, "data.path={d}/pair_deep.jsonl"], ["pair_deep.jsonl:2:", "nested"]),
    ("rm-utf8", ["reward", RM_FILE, "data.path={d}/pair_utf8.jsonl"], ["pair_utf8.jsonl:2:", "0xfe at column 13"]),
    ("rm-tools", ["reward", RM_FILE, "data.path={d}/pair_tools.jsonl"], ["pair_tools.jsonl:2:", "'tools'"]),
    ("rm-margin", ["reward", RM_FILE, "data.path={d}/pair_margin.jsonl"], ["pair_margin.jsonl:2:", "margin"]),
    ("rm-empty", ["reward", RM_FILE, "data.path={d}/pair_empty.jsonl"], ["pair_empty.jsonl:", "no preference"]),
    ("rm-data-dir", ["reward", "--config", REWARD, "data.source=file", "data.path={d}"], ["{d} is a directory"]),
    ("override-yaml", ["sft", "--config", SFT, "data.env_ids=[oops"], ["'data.env_ids=[oops'", "invalid YAML"]),
    ("override-no-eq", ["sft", "--config", SFT, "max_steps"], ["'max_steps'", "key.sub=value"]),
    ("override-no-key", ["sft", "=3"], ["'=3'", "no key"]),
    ("override-unknown", ["sft", "--config", SFT, "data.pathh=x"], ["'data.pathh'", "did you mean 'data.path'"]),
    ("override-type", ["sft", "--config", SFT, "max_steps=ten"], ["'max_steps=ten'", "'max_steps' must be int"]),
    ("override-bigint", ["sft", f"seed={'1' * 5000}"], ["command line", "4300"]),
    ("config-utf8", ["sft", "--config", "{d}/utf8.yaml"], ["{d}/utf8.yaml:1:12:", "UTF-8"]),
    ("config-dir", ["sft", "--config", "{d}"], ["{d}: is a directory"]),
    ("config-missing", ["sft", "--config", "{d}/nope.yaml"], ["not found: {d}/nope.yaml"]),
    ("config-no-path", ["sft", "--config"], ["--config needs a file path"]),
    ("config-list", ["sft", "--config", "{d}/list.yaml"], ["{d}/list.yaml:", "mapping"]),
    ("config-syntax", ["sft", "--config", "{d}/syntax.yaml"], ["{d}/syntax.yaml:3:1:", "invalid YAML"]),
    ("config-twice", ["sft", "--config", "{d}/twice.yaml"], ["{d}/twice.yaml:3:", "'seed' is set twice", ":1"]),
    ("config-bigint", ["sft", "--config", "{d}/bigint.yaml"], ["{d}/bigint.yaml:", "4300"]),
    ("config-nul", ["sft", "--config", "{d}/nul.yaml"], ["{d}/nul.yaml:1:8:", "invalid YAML"]),
    ("ppo-before-sft", ["ppo", "--config", PPO],
     ["model.name_or_path='runs/quickstart/sft/final'", f"`rlagent sft --config {SFT}`", "make quickstart"]),
    ("ppo-before-rm", ["ppo", "--config", PPO, "model.name_or_path=tiny", *SMALL_MODEL],
     ["reward.model_path='runs/quickstart/reward/final'", f"`rlagent reward --config {REWARD}`"]),
    ("ppo-model-file", ["ppo", "model.name_or_path={d}/list.yaml"], ["model.name_or_path='{d}/list.yaml' is a file"]),
    ("ppo-checkpoint", ["ppo", "model.name_or_path=runs/x/checkpoints/step-5"],
     ["model.name_or_path='runs/x/checkpoints/step-5'", "output_dir is 'runs/x'", "output_dir: runs/x"]),
    ("ppo-no-folder", ["ppo", "model.name_or_path=./no/model"], ["model.name_or_path='./no/model'", "no such folder"]),
    ("ppo-hub-id", ["ppo", "model.name_or_path=Org/Some-Model"], ["model.name_or_path='Org/Some-Model'", "download"]),
    # Values out of range: every numeric field declares the values it allows; nan and inf are never allowed.
    ("sft-lr-inf", ["sft", "--config", SFT, "optim.lr=inf"], ["'optim.lr' must be in [0, 1e+38]", "got inf"]),
    ("sft-lr-nan", ["sft", "--config", SFT, "optim.lr=nan"], ["'optim.lr' must be in [0, 1e+38]", "got nan"]),
    ("rm-lr-negative", ["reward", "--config", REWARD, "optim.lr=-0.1"], ["'optim.lr' must be in [0, 1e+38]", "-0.1"]),
    ("ppo-lr-negative", ["ppo", "--config", PPO, "optim.lr=-1"], ["'optim.lr' must be in [0, 1e+38]"]),
    ("ppo-value-lr-huge", ["ppo", "value.lr=1e39"], ["'value.lr' must be in [0, 1e+38]", "1e+39"]),
    ("ppo-batch-zero", ["ppo", "--config", PPO, "optim.batch_size=0"], ["'optim.batch_size' must be >= 1"]),
    ("ppo-batch-negative", ["ppo", "--config", PPO, "optim.batch_size=-4"], ["'optim.batch_size' must be >= 1"]),
    ("sft-micro-zero", ["sft", "optim.micro_batch_size=0"], ["'optim.micro_batch_size' must be >= 1"]),
    ("ppo-max-new-tokens-0", ["ppo", "rollout.max_new_tokens=0"], ["'rollout.max_new_tokens' must be >= 1"]),
    ("ppo-temperature-0", ["ppo", "rollout.temperature=0"], ["'rollout.temperature' must be > 0"]),
    ("ppo-temperature-nan", ["ppo", "rollout.temperature=nan"], ["'rollout.temperature' must be > 0"]),
    ("ppo-temperature-negative", ["ppo", "rollout.temperature=-1"], ["'rollout.temperature' must be > 0"]),
    ("ppo-gamma", ["ppo", "algo.gamma=1.5"], ["'algo.gamma' must be in [0, 1]", "1.5"]),
    ("ppo-dual-clip", ["ppo", "algo.dual_clip=0.5"], ["'algo.dual_clip' must be > 1"]),
    ("ppo-tis-cap", ["ppo", "algo.tis_cap=0"], ["'algo.tis_cap' must be > 0"]),
    ("sft-warmup", ["sft", "optim.warmup_ratio=2"], ["'optim.warmup_ratio' must be in [0, 1]"]),
    ("sft-seed-negative", ["sft", "seed=-1"], ["'seed' must be >= 0"]),
    ("sft-report-to", ["sft", "report_to=[jsonl,mlflow]"], ["'report_to[1]' must be 'jsonl' | 'wandb'"]),
    ("sft-noise", ["sft", "data.noise=1.5"], ["'data.noise' must be in [0, 1]"]),
    ("rm-eval-fraction", ["reward", "data.eval_fraction=1"], ["'data.eval_fraction' must be in [0, 1)"]),
    # Batch shapes the processes cannot share, or a minibatch that does not fit the rollout.
    ("ppo-batch-vs-episodes", ["ppo", "--config", PPO, "optim.batch_size=3"], ["optim.batch_size=3", "env.episodes"]),
    ("ppo-batch-over-episodes", ["ppo", "env.episodes=8", "optim.batch_size=16"],
     ["optim.batch_size=16", "env.episodes=8"]),
    ("ppo-episodes-vs-envs", ["ppo", "--config", PPO, "env.episodes=33"], ["env.episodes=33", "len(env.ids)"]),
    ("sft-smaller-than-batch", ["sft", *SFT_FILE, "data.path={d}/one.jsonl", "data.eval_fraction=0"],
     ["only 1 training conversations", "optim.batch_size=16"]),
    # Environments, reward functions and model paths.
    ("sft-env-nosuch", ["sft", "data.env_ids=[nosuch:Cls]"], ["data.env_ids[0]", "nosuch"]),
    ("rm-env-nosuch", ["reward", "data.env_ids=[rlagent/Nope-v0]"], ["data.env_ids[0]", "rlagent/Nope-v0"]),
    ("ppo-rm-no-config",
     ["ppo", "model.name_or_path=tiny", *SMALL_MODEL, "reward.model_path={d}/no_config", "reward.rm_weight=0.5"],
     ["reward.model_path='{d}/no_config' has no config.json"]),
    ("ppo-model-typo", ["ppo", "model.name_or_path=smollm2-135m-instruc"], ["did you mean 'smollm2-135m-instruct'?"]),
    ("ppo-reward-fn-not-callable", ["ppo", "reward.functions=[envs:__doc__]"],
     ["'envs:__doc__' is a str, not a function"]),
    ("ppo-reward-fn-missing", ["ppo", "reward.functions=[envs:nope]"], ["module 'envs' has no attribute 'nope'"]),
    # Output folders and checkpoints.
    ("sft-output-is-file", ["sft", "output_dir={d}/list.yaml"], ["output_dir='{d}/list.yaml' is a file"]),
    ("ppo-output-under-file", ["ppo", "output_dir={d}/list.yaml/run"],
     ["output_dir='{d}/list.yaml/run' cannot be created"]),
    ("sft-resume-missing", ["sft", "resume_from={d}/nope"], ["resume_from='{d}/nope': no such folder"]),
    ("sft-resume-not-checkpoint", ["sft", "resume_from={d}/not_a_checkpoint"], ["not a complete checkpoint"]),
    ("rm-resume-missing", ["reward", "resume_from={d}/nope"], ["resume_from='{d}/nope'"]),
    ("ppo-resume-missing", ["ppo", "model.name_or_path=tiny", "resume_from={d}/nope"], ["resume_from='{d}/nope'"]),
    # Command-line counts of eval and rollout.
    ("eval-episodes-0", ["eval", "--policy", "random", "--env", "rlagent/Calculator-v0", "--episodes", "0"],
     ["argument --episodes: must be >= 1, got 0"]),
    ("eval-episodes-negative", ["eval", "--policy", "random", "--env", "rlagent/Calculator-v0", "--episodes", "-3"],
     ["argument --episodes: must be >= 1, got -3"]),
    ("rollout-temperature", ["rollout", "--policy", "random", "--env", "rlagent/Calculator-v0", "--temperature", "-1"],
     ["argument --temperature: must be > 0"]),
    # Shipping: export, serve, ab-report.
    ("export-format", ["export", "--policy", "tiny", "--out", "{d}/x", "--format", "tflite"],
     ["argument --format: invalid choice: 'tflite'"]),
    ("export-out-not-empty", ["export", "--policy", "tiny", "--out", "{d}", "--format", "hf"],
     ["--out '{d}' exists and is not empty"]),
    ("serve-split", ["serve", "--policy", "tiny", "--split", "1.5"], ["argument --split: must be in [0, 1]"]),
    ("ab-report-missing", ["ab-report", "{d}/nope"], ["{d}/nope has no requests.jsonl"]),
]  # fmt: skip
# Real subprocesses: one of each family (data line, config file, override, stage order).
SUBPROCESS = [
    "sft-bigint",
    "rm-deep",
    "config-utf8",
    "override-yaml",
    "ppo-before-sft",
    "sft-lr-inf",
    "eval-episodes-0",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory with a copy of configs/ (and no runs/), and the bad files under bad/."""
    work = tmp_path_factory.mktemp("cwd")
    shutil.copytree(os.path.join(ROOT, "configs"), work / "configs")
    bad = work / "bad"
    bad.mkdir()
    for name, content in FILES.items():
        (bad / name).parent.mkdir(exist_ok=True)
        (bad / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return work


def fill(items: list[str], workdir) -> list[str]:
    return [item.replace("{d}", str(workdir / "bad")) for item in items]


def argv_of(case_id: str, workdir) -> list[str]:
    _, argv, _ = next(case for case in CASES if case[0] == case_id)
    if (
        argv[0] in ("eval", "rollout", "export", "serve", "ab-report")
        or "--config" in argv[-1:]
        or any(a.startswith("output_dir=") for a in argv)
    ):
        return fill(argv, workdir)
    return [*fill(argv, workdir), f"output_dir={workdir}/out"]


def assert_one_error_line(text: str, fragments: list[str], workdir) -> None:
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("rlagent ")]
    assert len(lines) == 1, f"expected one 'rlagent ...: error' line, got:\n{text[-3000:]}"
    assert len(lines[0]) < 400, f"an error line should be readable at a glance: {lines[0][:1000]}"
    for fragment in fill(fragments, workdir):
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"


@pytest.mark.parametrize("case_id, argv, fragments", CASES, ids=[case[0] for case in CASES])
def test_bad_input_in_process(case_id, argv, fragments, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    if case_id == "sft-huge-line":
        monkeypatch.setattr(rlagent.common.data, "MAX_LINE_BYTES", 4096)  # a huge line without writing 64 MiB
    monkeypatch.setattr(sys, "argv", ["rlagent"])
    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", no_model)  # bad input must fail before any model
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv_of(case_id, workdir))
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, f"exit status {exit_info.value.code!r} (bad input exits 2): {captured.err}"
    assert_one_error_line(captured.out + captured.err, fragments, workdir)


def no_model(*args, **kwargs):
    raise AssertionError("a model was built before the bad input was reported")


@pytest.fixture(scope="module")
def subprocess_results(workdir):
    """Start every subprocess case at once (each pays the torch import), then collect them."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    procs = {
        case_id: subprocess.Popen(
            [os.path.join(BIN, "rlagent"), *argv_of(case_id, workdir)],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for case_id in SUBPROCESS
    }
    return {case_id: (proc.communicate(timeout=300)[0], proc.returncode) for case_id, proc in procs.items()}


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_bad_input_subprocess(case_id, workdir, subprocess_results):
    output, returncode = subprocess_results[case_id]
    assert returncode == 2, output[-3000:]
    _, _, fragments = next(case for case in CASES if case[0] == case_id)
    assert_one_error_line(output, fragments, workdir)
