"""The scoring API: padding invariance, final/ vs plain transformers, normalisation, re-tokenisation, backbones."""

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

import reward_models
from reward_models.modeling import build_tiny_reward_model, load_reward_backbone
from reward_models.scoring import (
    NORMALIZATION_FILE,
    fit_normalization,
    render_for_reward,
    render_many_for_reward,
)
from rlagent.common.config import ModelConfig, TinyModelConfig
from rlagent.common.data import right_pad
from rlagent.common.tiny import EOS, IM_END, IM_START, PAD, TOOL_TOKENS, build_tiny_model, build_tiny_tokenizer
from tests.conftest import CALCULATOR_SCHEMA, addition_conversation

SMALL = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("rm")
    build_tiny_reward_model(SMALL, tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def conversations(n: int, start: int = 1) -> list[list[dict]]:
    return [addition_conversation(start + i, 3 * i + 7)["messages"] for i in range(n)]


def test_head_init_and_pad_id(tokenizer):
    model = build_tiny_reward_model(TinyModelConfig(), tokenizer, seed=3)
    d = model.config.hidden_size
    assert model.score.weight.shape == (1, d) and model.score.bias is None
    # N(0, 1/sqrt(d+1)): the sample std of 192 weights is within ~15 % of 1/sqrt(193) = 0.0720
    assert model.score.weight.std().item() == pytest.approx(1 / math.sqrt(d + 1), rel=0.15)
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.num_labels == 1


def test_score_read_at_last_real_token_whatever_the_padding(rm_folder, tokenizer):
    rm = reward_models.load(str(rm_folder))
    short, long = conversations(1)[0], addition_conversation(123, 456)["messages"] + conversations(1)[0][1:]
    alone = rm.score_raw([short], [CALCULATOR_SCHEMA])
    together = rm.score_raw([long, short], [CALCULATOR_SCHEMA])
    torch.testing.assert_close(together[1], alone[0], rtol=0, atol=1e-5)
    # The same ids left-padded, right-padded with extra padding, and in a batch of one.
    ids = render_for_reward(tokenizer, short, [CALCULATOR_SCHEMA])
    n, width = len(ids), len(ids) + 9
    left = torch.full((1, width), tokenizer.pad_token_id)
    left[0, width - n :] = torch.tensor(ids)
    left_mask = (torch.arange(width) >= width - n).long()[None]
    right, right_mask = right_pad([ids, ids + [5] * 9], tokenizer.pad_token_id)
    torch.testing.assert_close(rm.score_ids(left, left_mask, raw=True)[0], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(rm.score_ids(right, right_mask, raw=True)[0], alone[0], rtol=0, atol=1e-5)
    # The score sits at the final <|im_end|>: appending the template's trailing "\n" would change it.
    assert tokenizer.decode(ids[-1:]) == IM_END


def tool_call_message(arguments: dict) -> dict:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": arguments}}],
    }


def test_batched_render_equals_one_by_one_and_keeps_tools_apart(tokenizer):
    convs = conversations(3)
    batch = [convs[0], convs[1], convs[0], convs[2], convs[0]]  # repeats are rendered once, returned each time
    tools = [[CALCULATOR_SCHEMA], [CALCULATOR_SCHEMA], None, [CALCULATOR_SCHEMA], [CALCULATOR_SCHEMA]]
    rows = render_many_for_reward(tokenizer, batch, tools)
    assert rows == [render_for_reward(tokenizer, c, t) for c, t in zip(batch, tools)]
    assert rows[0] == rows[4] and rows[0] != rows[2]  # same conversation, different tools: a different render
    # Argument key order is part of the render (tojson keeps it), so it must be part of the dedupe key too.
    ab, ba = [tool_call_message({"a": 2, "b": 3})], [tool_call_message({"b": 3, "a": 2})]
    both = render_many_for_reward(tokenizer, [ab, ba])
    assert both == [render_for_reward(tokenizer, ab), render_for_reward(tokenizer, ba)] and both[0] != both[1]
    assert render_many_for_reward(tokenizer, []) == []


def test_plain_transformers_gives_the_same_raw_scores(rm_folder):
    model = AutoModelForSequenceClassification.from_pretrained(rm_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(rm_folder)
    convs = conversations(3)
    ours = reward_models.load(str(rm_folder)).score_raw(convs, [CALCULATOR_SCHEMA])
    for conv, score in zip(convs, ours):
        text = tokenizer.apply_chat_template(conv, tools=[CALCULATOR_SCHEMA], tokenize=False)
        text = text[: text.rindex(IM_END) + len(IM_END)]  # documented: scored up to the final end-of-turn
        with torch.no_grad():
            plain = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0]
        torch.testing.assert_close(plain, score, rtol=0, atol=1e-5)


def test_normalisation_and_clip(tmp_path, rm_folder, tokenizer):
    reference = conversations(40)
    raw = reward_models.load(str(rm_folder)).score_raw(reference, [CALCULATOR_SCHEMA])
    norm = fit_normalization(raw)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((rm_folder / name).read_bytes())
    (tmp_path / NORMALIZATION_FILE).write_text(json.dumps(norm))
    scores = reward_models.load(str(tmp_path)).score(reference, [CALCULATOR_SCHEMA])
    assert abs(scores.mean().item()) <= 0.05 and abs(scores.std().item() - 1) <= 0.05
    torch.testing.assert_close(scores, raw * norm["gain"] + norm["bias"])
    (tmp_path / NORMALIZATION_FILE).write_text(json.dumps({**norm, "clip": 0.5}))
    clipped = reward_models.load(str(tmp_path)).score(reference, [CALCULATOR_SCHEMA])
    assert clipped.abs().max().item() <= 0.5 and clipped.abs().max().item() == 0.5
    with pytest.raises(ValueError, match="std"):
        fit_normalization(torch.ones(5))


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A plain byte-level tokenizer (no merges, other ids than the tiny BPE) with the same markers and template."""
    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens(
        {"pad_token": PAD, "eos_token": IM_END, "additional_special_tokens": [EOS, IM_START, IM_END]}
    )
    tok.add_tokens(TOOL_TOKENS, special_tokens=False)
    tok.chat_template = build_tiny_tokenizer().chat_template
    return tok


def test_policy_ids_are_retokenised_when_the_vocabulary_differs(rm_folder, tokenizer):
    rm = reward_models.load(str(rm_folder))
    convs = conversations(3)
    expected = rm.score(convs, [CALCULATOR_SCHEMA])
    policy = byte_tokenizer()
    rows = [render_for_reward(policy, c, [CALCULATOR_SCHEMA]) for c in convs]
    assert rows[0] != render_for_reward(tokenizer, convs[0], [CALCULATOR_SCHEMA])  # really different ids
    ids, mask = right_pad(rows, policy.pad_token_id)
    assert not rm.same_vocab(policy)
    torch.testing.assert_close(rm.score_policy_ids(ids, mask, policy), expected, rtol=0, atol=1e-5)
    # Same vocabulary: the ids are used as they are (the tokenizer built in memory equals the saved one).
    own, own_mask = right_pad([render_for_reward(tokenizer, c, [CALCULATOR_SCHEMA]) for c in convs], 0)
    assert rm.same_vocab(tokenizer)
    torch.testing.assert_close(rm.score_policy_ids(own, own_mask, tokenizer), expected, rtol=0, atol=1e-5)


def test_causal_lm_folder_loads_with_a_fresh_head(tmp_path, tokenizer):
    policy = build_tiny_model(SMALL, tokenizer, seed=1)
    policy.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    rm = load_reward_backbone(ModelConfig(name_or_path=str(tmp_path), tiny=SMALL), tokenizer, seed=0)
    torch.testing.assert_close(rm.model.embed_tokens.weight, policy.model.embed_tokens.weight)
    assert rm.score.weight.std().item() == pytest.approx(1 / math.sqrt(SMALL.hidden_size + 1), rel=0.3)
    assert rm.config.pad_token_id == tokenizer.pad_token_id
    # A reward-model folder keeps its trained head.
    rm.save_pretrained(tmp_path / "rm")
    again = load_reward_backbone(ModelConfig(name_or_path=str(tmp_path / "rm")), tokenizer, seed=5)
    torch.testing.assert_close(again.score.weight, rm.score.weight)


def test_combine_rewards():
    env, rm = torch.tensor([1.0, 0.0, -0.5]), torch.tensor([0.5, -1.0, 2.0])
    # 1.0 * env + 0.5 * rm = [1 + 0.25, 0 - 0.5, -0.5 + 1]
    torch.testing.assert_close(reward_models.combine_rewards(env, rm, 1.0, 0.5), torch.tensor([1.25, -0.5, 0.5]))
    torch.testing.assert_close(reward_models.combine_rewards(env, None, 2.0, 0.0), torch.tensor([2.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="rm_weight"):
        reward_models.combine_rewards(env, None, 1.0, 0.5)
    with pytest.raises(ValueError, match="shape"):
        reward_models.combine_rewards(env, rm[:2], 1.0, 0.5)
