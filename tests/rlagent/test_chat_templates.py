"""Assistant masks for any chat template (generation blocks, prefix derivation, TRL's training templates), with the
tiny tokenizer, the real SmolLM2 tokenizer and every tool-capable template TRL ships; tokenizer fix-ups (pad, eos,
tool template) and a rollout with the real SmolLM2 tokenizer whose policy mask matches the SFT mask."""

import os

import pytest

from envs.parsing import format_tool_call, parse_assistant
from rlagent.common import chat_templates
from rlagent.common.chat import render_env_reply
from rlagent.common.chat_templates import (
    ChatTemplateError,
    assistant_char_spans,
    assistant_token_mask,
    end_of_turn_token,
    is_prefix_stable,
    pad_candidates,
    prepare_tokenizer,
    probe_conversation,
    read_template,
    supports_tools,
    sync_model_with_tokenizer,
    trl_templates_dir,
    trl_training_template,
)
from rlagent.common.config import TinyModelConfig
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
from rlagent.rollout.engine import make_envs, run_episodes
from rlagent.rollout.policies import TextPolicy
from tests.rlagent.smollm2 import require_smollm2, smollm2_tokenizer

ASSISTANT_TEXT = ["tool_name_q7", "arg_key_q7", "arg_value_q7", "answer_text_q7"]
OTHER_TEXT = ["system_text_q7", "user_text_q7", "tool_result_q7"]


def masked_runs(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded text of each maximal run of masked tokens."""
    runs, current = [], []
    for token, marked in zip(ids, mask):
        if marked:
            current.append(token)
        elif current:
            runs, current = runs + [tokenizer.decode(current)], []
    return runs + ([tokenizer.decode(current)] if current else [])


def trl_template_names() -> list[str]:
    folder = trl_templates_dir()
    return sorted(name for name in os.listdir(folder) if name.endswith(".jinja")) if folder else []


def trl_template(name: str) -> str:
    with open(os.path.join(trl_templates_dir(), name), encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def smollm2():
    """The real tokenizer, prepared once (tests that change it take their own copy)."""
    require_smollm2()
    tokenizer = smollm2_tokenizer()
    prepare_tokenizer(tokenizer, verbose=False)
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# Masks: exact spans by hand


def test_tiny_generation_mask_equals_prefix_derivation(tiny):
    """The two ways of finding assistant tokens agree on a template that supports both."""
    messages, tools = probe_conversation()
    ids, mask = assistant_token_mask(tiny, messages, tools)
    text, spans = assistant_char_spans(tiny, messages, tools)
    assert ids == tiny(text, add_special_tokens=False)["input_ids"]
    assert [text[s:e] for s, e in spans] == [
        '<tool_call>{"name": "tool_name_q7", "arguments": {"arg_key_q7": "arg_value_q7"}}</tool_call><|im_end|>',
        "answer_text_q7<|im_end|>",
    ]
    assert masked_runs(tiny, ids, mask) == [text[s:e] for s, e in spans]


QWEN_CALL = '<tool_call>\n{"name": "tool_name_q7", "arguments": {"arg_key_q7": "arg_value_q7"}}\n</tool_call>'
LLAMA_CALL = '{"name": "tool_name_q7", "parameters": {"arg_key_q7": "arg_value_q7"}}'
# Templates without {% generation %}: the derived mask is what the model writes after the generation prompt, up to
# and including its end-of-turn token (Qwen3.x thinking templates open "<think>\n" in the prompt itself).
EXPECTED_DERIVED = {
    "qwen2_5.jinja": [QWEN_CALL + "<|im_end|>", "answer_text_q7<|im_end|>"],
    "qwen3_instruct_2507.jinja": [QWEN_CALL + "<|im_end|>", "answer_text_q7<|im_end|>"],
    "qwen3_vl.jinja": [QWEN_CALL + "<|im_end|>", "answer_text_q7<|im_end|>"],
    "llama3_1.jinja": [LLAMA_CALL + "<|eot_id|>", "answer_text_q7<|eot_id|>"],
    "llama3_2.jinja": [LLAMA_CALL + "<|eot_id|>", "answer_text_q7<|eot_id|>"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_DERIVED))
def test_derived_mask_by_hand(name):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = trl_template(name)
    messages, tools = probe_conversation()
    ids, mask = assistant_token_mask(tokenizer, messages, tools)
    assert masked_runs(tokenizer, ids, mask) == EXPECTED_DERIVED[name]


def test_qwen3_is_not_prefix_stable_and_uses_trl_training_template():
    """The issue's crash: Qwen3 drops the think block of earlier turns. Its TRL training twin keeps it."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = trl_template("qwen3.jinja")
    messages, tools = probe_conversation()
    assert not is_prefix_stable(tokenizer)
    assert trl_training_template(tokenizer.chat_template)[0] == "qwen3"
    ids, mask = assistant_token_mask(tokenizer, messages, tools)
    think = "<think>\n\n</think>\n\n"
    # TRL's training templates put the newlines around the turn inside the generation block.
    assert masked_runs(tokenizer, ids, mask) == [
        think + QWEN_CALL + "<|im_end|>\n",
        think + "answer_text_q7<|im_end|>\n",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Masks: every tool-capable template TRL ships


def tool_capable(tokenizer, name: str) -> bool:
    tokenizer.chat_template = trl_template(name)
    return supports_tools(tokenizer)


# Decided with the tiny tokenizer at collection; rendering does not depend on the tokenizer's vocabulary.
TOOL_TEMPLATES = [name for name in trl_template_names() if tool_capable(build_tiny_tokenizer(), name)]


@pytest.mark.parametrize("name", TOOL_TEMPLATES)
@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_every_tool_capable_trl_template_masks_only_assistant_text(which, name):
    """Each template's markers are plain text to these tokenizers, so a token may straddle a span's edge; what must
    hold is that the assistant's text is all masked and no system, user or tool text ever is."""
    if which == "smollm2":
        require_smollm2()
    tokenizer = build_tiny_tokenizer() if which == "tiny" else smollm2_tokenizer()
    tokenizer.chat_template = trl_template(name)
    messages, tools = probe_conversation()
    ids, mask = assistant_token_mask(tokenizer, messages, tools)
    masked = "\x00".join(masked_runs(tokenizer, ids, mask))
    assert all(text in masked for text in ASSISTANT_TEXT), masked
    assert not any(other in masked for other in OTHER_TEXT), masked
    assert masked.index("tool_name_q7") < masked.index("answer_text_q7")
    rendered = tokenizer.decode(ids)
    assert all(other in rendered for other in OTHER_TEXT)  # ...which the conversation itself does contain


def test_tool_capable_trl_templates_found():
    """Guards the parametrised test above against silently testing nothing (e.g. a trl without templates)."""
    assert {"qwen2_5.jinja", "qwen3.jinja", "qwen3_instruct_2507.jinja", "llama3_1.jinja"} <= set(TOOL_TEMPLATES)


# ---------------------------------------------------------------------------------------------------------------------
# Refusals


def test_template_that_drops_tool_calls_is_refused():
    """Like SmolLM2's own template, this one only reads `content`: training on it would teach empty tool-call turns."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages, tools = probe_conversation()
    assert not supports_tools(tokenizer)
    with pytest.raises(ChatTemplateError, match="drops part of assistant message 2 .'tool_name_q7'."):
        assistant_token_mask(tokenizer, messages, tools)


def test_render_error_is_a_chat_template_error():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = trl_template("llama3.jinja")  # reads bos_token, which the tiny tokenizer lacks
    messages, tools = probe_conversation()
    with pytest.raises(ChatTemplateError, match="cannot render this conversation: 'bos_token' is undefined"):
        assistant_token_mask(tokenizer, messages, tools)


def test_unstable_template_without_twin_or_generation_is_refused():
    tokenizer = build_tiny_tokenizer()
    # The last message is rendered with a marker that disappears once another message follows.
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if loop.last %}LAST {% endif %}{{ m.content }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    with pytest.raises(ChatTemplateError, match="not prefix-stable"):
        assistant_token_mask(tokenizer, messages, None)


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer fix-ups


def test_smollm2_fixups_pad_eos_template_and_they_survive_save(tmp_path):
    require_smollm2()
    tokenizer = smollm2_tokenizer()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as shipped: the problem
    assert not supports_tools(tokenizer)
    fixups = prepare_tokenizer(tokenizer, verbose=False)
    assert fixups.notes == [
        "chat template ignores tools/tool_calls: using rlagent's ChatML + Hermes tool template",
        "pad '<|im_end|>' == eos -> '<|endoftext|>' id 0",
    ]
    assert not fixups.resize_embeddings
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert supports_tools(tokenizer) and is_prefix_stable(tokenizer)
    tokenizer.save_pretrained(tmp_path)  # what a stage's final/ holds
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert (saved.pad_token, saved.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert saved.chat_template == read_template("chatml_tools")
    assert prepare_tokenizer(saved, verbose=False).notes == []  # idempotent


def test_smollm2_tool_call_renders_in_the_project_format(smollm2):
    """What the template renders for a structured call is exactly what envs.parsing reads back."""
    messages, tools = probe_conversation()
    ids, mask = assistant_token_mask(smollm2, messages, tools)
    runs = masked_runs(smollm2, ids, mask)
    assert runs == [
        format_tool_call("tool_name_q7", {"arg_key_q7": "arg_value_q7"}) + "<|im_end|>",
        "answer_text_q7<|im_end|>",
    ]
    parsed = parse_assistant(runs[0].removesuffix("<|im_end|>"))
    assert parsed.tool_calls == [{"name": "tool_name_q7", "arguments": {"arg_key_q7": "arg_value_q7"}}]
    assert smollm2.pad_token_id not in ids  # the pad token never appears in a conversation


def test_eos_is_reset_to_the_end_of_turn_token():
    tokenizer = build_tiny_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
    notes = prepare_tokenizer(tokenizer, verbose=False).notes
    assert notes == ["eos '<|endoftext|>' -> '<|im_end|>' (the template's end-of-turn token)"]
    assert tokenizer.eos_token == "<|im_end|>"


def test_pad_prefers_a_pad_named_token_then_lowest_id():
    tokenizer = build_tiny_tokenizer()
    assert pad_candidates(tokenizer) == ["<|pad|>", "<|endoftext|>"]  # chat markers and eos are never candidates
    tokenizer.pad_token = "<|im_end|>"
    assert prepare_tokenizer(tokenizer, verbose=False).notes[-1].startswith("pad '<|im_end|>' == eos -> '<|pad|>'")


def test_pad_is_added_only_when_no_special_token_is_free(monkeypatch, capsys):
    require_smollm2()
    tokenizer = smollm2_tokenizer()
    size = len(tokenizer)
    monkeypatch.setattr(chat_templates, "pad_candidates", lambda tok: [])
    fixups = prepare_tokenizer(tokenizer)
    assert fixups.resize_embeddings and len(tokenizer) == size + 1
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id == size
    assert capsys.readouterr().out.splitlines()[-1] == (
        "tokenizer: pad '<|im_end|>' == eos -> '<|pad|>' id 49152 (new token: embeddings resized)"
    )


def test_model_follows_the_prepared_tokenizer():
    """A model built for the old vocabulary gets one more embedding row when a pad was added, and its configs use
    the tokenizer's pad and eos."""
    tokenizer = build_tiny_tokenizer()
    small = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model = build_tiny_model(small, tokenizer, seed=0)
    tokenizer.add_special_tokens({"pad_token": "<|new_pad|>"})
    tokenizer.eos_token = "<|endoftext|>"
    sync_model_with_tokenizer(model, tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 1033
    for config in (model.config, model.generation_config):
        assert (config.pad_token_id, config.eos_token_id) == (1032, tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    sync_model_with_tokenizer(model, build_tiny_tokenizer())  # a smaller tokenizer never shrinks the embeddings
    assert model.get_input_embeddings().weight.shape[0] == 1033


def test_prepare_swaps_qwen3_for_its_training_template_so_rollouts_can_append():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = trl_template("qwen3.jinja")
    messages, tools = probe_conversation()
    history, reply = messages[:3], messages[3:4]
    # The raw template is not prefix-stable, yet the reply is appended with the right boundary (rlagent.common.chat's
    # history-end search); the training twin, being prefix-stable, gives the same reply by the plain delta.
    expected = (
        "\n<|im_start|>user\n<tool_response>\ntool_result_q7\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.decode(render_env_reply(tokenizer, history, reply, tools)) == expected
    notes = prepare_tokenizer(tokenizer, verbose=False).notes
    assert notes == ["chat template: using TRL's qwen3_training.jinja (prefix-stable, generation blocks)"]
    assert tokenizer.decode(render_env_reply(tokenizer, history, reply, tools)) == expected


# ---------------------------------------------------------------------------------------------------------------------
# A rollout with the real tokenizer


def test_smollm2_rollout_policy_mask_equals_sft_mask(smollm2):
    """An expert episode on the calculator: the tokens the rollout marks as policy tokens are exactly the ones the
    SFT mask marks on the finished conversation, and the rollout's tokens read as a fresh render."""
    from envs.experts import ScriptedExpert

    policy = TextPolicy(lambda seed: ScriptedExpert(0.0, seed).act, smollm2, per_episode=True)
    traj = run_episodes(policy, make_envs("rlagent/Calculator-v0", 2), [0, 1], smollm2)
    assert traj.render_mismatch == [False, False] and traj.success.tolist() == [1.0, 1.0]
    for i in range(2):
        n = int(traj.attention_mask[i].sum())
        tokens, policy_mask = traj.input_ids[i, :n].tolist(), traj.policy_mask[i, :n].int().tolist()
        ids, mask = assistant_token_mask(smollm2, traj.messages[i], traj.tools[i])
        assert ids[:n] == tokens and mask[:n] == policy_mask
        assert masked_runs(smollm2, tokens, policy_mask)[-1].endswith("<|im_end|>")


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_prefix_derivation_agrees_with_generation_blocks_on_expert_demonstrations(which):
    """On templates that have both, the two mask sources agree token for token over real episodes (noisy experts:
    malformed calls, retries, both environments), so a template without blocks is masked the same way."""
    import envs
    from envs.experts import generate_demonstrations

    if which == "smollm2":
        require_smollm2()
        tokenizer = smollm2_tokenizer()
        prepare_tokenizer(tokenizer, verbose=False)
    else:
        tokenizer = build_tiny_tokenizer()
    for i, env_id in enumerate(envs.ENV_IDS):
        for row in generate_demonstrations(env_id, 10, noise=0.5, seed=i, split="train"):
            text, spans = assistant_char_spans(tokenizer, row["messages"], row["tools"])
            derived = chat_templates._mask_from_spans(tokenizer, text, spans)
            assert assistant_token_mask(tokenizer, row["messages"], row["tools"]) == derived
