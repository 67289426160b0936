"""The embedded tiny default: byte tokenizer, chat template with tool calls, save/load offline."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlagent.common.config import ConfigError, ModelConfig, TinyModelConfig
from rlagent.common.data import tokenize_conversation
from rlagent.common.modeling import load_causal_lm, load_tokenizer
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
from tests.conftest import CALCULATOR_SCHEMA, addition_conversation


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_round_trip_digits_and_special_ids(tokenizer):
    text = "Zorvath: 3,120 people — café\n\t{} \x00\x7f ünïcödé 🙂"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text  # byte-level: any text round-trips
    digits = tokenizer("population 9081726354").input_ids
    assert [tokenizer.decode([i]) for i in digits][-10:] == list("9081726354")  # one token per digit
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer("<tool_call>").input_ids == [tokenizer.convert_tokens_to_ids("<tool_call>")]
    # Merges learned from the task corpus compress the tool-call boilerplate (bytes alone would be 20 tokens).
    assert len(tokenizer('{"name": "calculator"').input_ids) <= 8


def test_tokenizer_is_deterministic_across_processes():
    import subprocess
    import sys

    code = (
        "from rlagent.common.tiny import build_tiny_tokenizer as b; import json; "
        "print(json.dumps(b().get_vocab(), sort_keys=True))"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0]) > 1000


def test_assistant_mask_token_by_token(tokenizer):
    """Two assistant turns (a tool call, then the answer) around a tool response: mask = exactly those spans."""
    conv = addition_conversation(23, 45)
    # The render, written out by hand as (text, trained-on?) segments.
    segments = [
        ("<|im_start|>system\nTools: calculator(expression)<|im_end|>\n", 0),
        ("<|im_start|>user\nWhat is 23 plus 45?<|im_end|>\n", 0),
        ("<|im_start|>assistant\n", 0),
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "23+45"}}</tool_call><|im_end|>', 1),
        ("\n<|im_start|>user\n<tool_response>68</tool_response><|im_end|>\n", 0),
        ("<|im_start|>assistant\n", 0),
        ("The answer is 68.<|im_end|>", 1),
        ("\n", 0),
    ]
    expected_ids, expected_mask = [], []
    for text, trained in segments:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        expected_ids += ids
        expected_mask += [trained] * len(ids)
    out = tokenize_conversation(tokenizer, conv["messages"], [CALCULATOR_SCHEMA], max_length=10_000)
    assert out.input_ids == expected_ids
    assert out.assistant_mask == expected_mask
    assert not out.truncated
    # Spot checks: the <tool_response> token and the tool output are never trained on.
    i = out.input_ids.index(tokenizer.convert_tokens_to_ids("<tool_response>"))
    assert out.assistant_mask[i : i + 3] == [0, 0, 0]


def test_truncation_is_reported(tokenizer):
    conv = addition_conversation(1, 2)
    out = tokenize_conversation(tokenizer, conv["messages"], [CALCULATOR_SCHEMA], max_length=50)
    assert out.truncated and len(out.input_ids) == 50


def test_save_load_generate_offline(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_tiny_model(
        TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128), tokenizer, seed=0
    )
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    conv = addition_conversation(2, 3)["messages"][:1]
    assert tok2.apply_chat_template(conv, tokenize=False) == tokenizer.apply_chat_template(conv, tokenize=False)
    batch = tok2.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model2.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 5
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch).logits)


def test_same_seed_same_weights(tokenizer):
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    a, b = build_tiny_model(cfg, tokenizer, 5), build_tiny_model(cfg, tokenizer, 5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_hub_id_without_network_gives_one_line_error():
    with pytest.raises(ConfigError, match="'Qwen/Qwen2.5-0.5B-Instruct' is not a local folder"):
        load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(ConfigError, match="pass DIR"):
        load_causal_lm(ModelConfig(name_or_path="meta-llama/Llama-3.2-1B"), None, 0)
