"""Text policies of `rlagent rollout` / `rlagent eval`: random draws calls from the environment's own tool schemas,
`scripted` on an environment without an expert is a one-line error; the tiny tokenizer parses its own tool calls."""

import json
import re

import pytest

from envs.registry import make_env
from rlagent.cli import main as cli_main
from rlagent.cli import rollout_cli
from rlagent.common.config import ConfigError
from rlagent.common.tiny import build_tiny_tokenizer
from rlagent.rollout.policies import random_actor

COUNTER = "examples.trl_counter:make_env"


def calls(text: str) -> list[dict]:
    """The well-formed <tool_call> JSON objects in a turn."""
    out = []
    for body in re.findall(r"<tool_call>(.*?)</tool_call>", text, flags=re.S):
        try:
            out.append(json.loads(body))
        except json.JSONDecodeError:
            continue
    return out


def test_random_calls_come_from_the_environments_schemas():
    tools = make_env(COUNTER).reset(seed=0)[1]["tools"]
    made = [c for seed in range(200) for c in calls(random_actor(seed)([], {}, tools))]
    names = {c["name"] for c in made}
    assert {"increment", "read"} <= names and "calculator" not in names
    increments = [c["arguments"] for c in made if c["name"] == "increment"]
    assert increments and all(set(a) == {"by"} and isinstance(a["by"], int) for a in increments)  # by: integer
    assert all(c["arguments"] == {} for c in made if c["name"] == "read")


def test_random_without_schemas_calls_the_builtin_familys_tool():
    made = [c for seed in range(50) for c in calls(random_actor(seed)([], {"family": "knowledge"}))]
    assert {"search"} <= {c["name"] for c in made} and "calculator" not in {c["name"] for c in made}


def test_random_plays_a_trl_environment_through_the_cli():
    stats = rollout_cli.main(["--env", COUNTER, "--policy", "random", "--episodes", "8", "--seed", "0", "--quiet"])
    assert stats["tool_calls_per_episode"] > 0  # seeded: this draw makes valid calls to increment / read


def test_scripted_on_an_environment_without_an_expert_is_one_line(capsys):
    with pytest.raises(ConfigError, match=r"^--policy scripted: environment '.*' has no scripted expert"):
        rollout_cli.main(["--env", COUNTER, "--policy", "scripted", "--episodes", "1"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", "--policy", "scripted", "--env", COUNTER, "--episodes", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "has no scripted expert" in err


def test_the_tiny_tokenizer_parses_its_own_tool_calls_back(tmp_path):
    """TRL's GRPOTrainer reads tool calls with the tokenizer's response_template; it survives save/load."""
    from transformers import AutoTokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    call = {"type": "function", "function": {"name": "increment", "arguments": {"by": 2}}}
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    prompt = loaded.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    text = loaded.apply_chat_template(messages, tokenize=False)[len(prompt) :]
    assert loaded.parse_response(text, prefix=prompt) == {"role": "assistant", "tool_calls": [call]}
    answer = loaded.parse_response("The count is 2.<|im_end|>\n", prefix=prompt)
    assert answer == {"role": "assistant", "content": "The count is 2."}
