"""Shared fixtures: a small demonstration file and a helper that runs the real CLI as a subprocess."""

import json
import os
import random
import re
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
# A smaller tiny model keeps end-to-end tests to seconds; the learning tests use the default size.
# fp32: the end-to-end tests compare runs (two processes vs one, resumed vs not) to 1e-5, which bf16 autocast's
# rounding (model.dtype: auto on a bf16 CPU) does not meet when micro-batch shapes differ; tests/rlagent/test_precision
# covers autocast itself.
SMALL_MODEL = [
    "model.dtype=float32",
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=128",
]
CALCULATOR_SCHEMA = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "The expression."}},
            "required": ["expression"],
        },
    },
}


def addition_conversation(a: int, b: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "calculator", "arguments": {"expression": f"{a}+{b}"}}}
                ],
            },
            {"role": "tool", "name": "calculator", "content": str(a + b)},
            {"role": "assistant", "content": f"The answer is {a + b}."},
        ],
        "tools": [CALCULATOR_SCHEMA],
    }


@pytest.fixture(scope="session")
def demo_jsonl(tmp_path_factory) -> str:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "demo.jsonl"
    with open(path, "w") as handle:
        for _ in range(200):
            handle.write(json.dumps(addition_conversation(rng.randint(1, 99), rng.randint(1, 99))) + "\n")
    return str(path)


def run_cli(*args: str, timeout: int = 600, env: dict | None = None, check: bool = True, cwd: str = ROOT):
    """Run `rlagent ...` (or another venv binary) as a subprocess; return the CompletedProcess."""
    full_env = {
        **os.environ,
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        **(env or {}),
    }
    cmd = list(args) if args[0] != "rlagent" else [os.path.join(BIN, "rlagent"), *args[1:]]
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def free_port() -> str:
    """A TCP port nobody listens on now: back-to-back launches on accelerate's fixed default (29500) can collide
    with a previous run's socket that is still closing."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def launch_two_processes(script: str, *args: str, env: dict | None = None):
    """`accelerate launch` of `script` as 2 real processes on this CPU host (gloo): `--cpu` would start only one."""
    port = free_port()
    launch = ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", port]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    return run_cli(os.path.join(BIN, "accelerate"), *launch, script, *args, env=env)


def assert_metrics_documented(output_dir) -> None:
    """Every key a run logged to metrics.jsonl is explained in the README's metrics glossary."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    glossary = readme[readme.index("## Metrics glossary") : readme.index("## How PPO is done here")]
    keys = {key for row in read_metrics(output_dir) for key in row} - {"step"}
    generic = {re.sub(r"^curriculum/.+_level$", "curriculum/<env>_level", key) for key in keys}
    generic = {re.sub(r"^reward/(?!function_errors$)[^/]+/(mean|std)$", r"reward/<name>/\1", key) for key in generic}
    generic = {re.sub(r"^reward/(?!function_errors$)[^/]+$", "reward/<name>", key) for key in generic}
    generic = {re.sub(r"^env/.+/success_rate$", "env/<id>/success_rate", key) for key in generic}
    missing = sorted(key for key in generic if f"`{key}`" not in glossary)
    assert not missing, f"metrics logged but not explained in the README glossary: {missing}"


def read_metrics(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]
