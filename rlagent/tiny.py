"""The embedded default: a byte-level tokenizer with a Hermes/Qwen-style chat template and a small Llama model.

Built offline and deterministically, so everything runs with no downloads. Every byte is one token (any text
round-trips, digits are single tokens); chat and tool-call markers are added tokens; pad != eos.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, EOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Qwen marks tool calls with ordinary added tokens (not "special"), so decoding keeps them; we do the same.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# The tiny template mirrors Qwen2.5's layout (tool results come back as a user turn wrapped in <tool_response>),
# but lists tools compactly as name(arg, ...) because byte-level sequences are long. Assistant spans are wrapped in
# {% generation %} so `return_assistant_tokens_mask=True` marks exactly the tokens the policy must produce,
# <|im_end|> included (the model has to learn to stop); the newline after it is a template token.
CHAT_TEMPLATE = (
    "{% if messages and messages[0].role == 'system' %}{% set sys = messages[0].content %}"
    "{% set rest = messages[1:] %}{% else %}{% set sys = none %}{% set rest = messages %}{% endif %}"
    "{% if tools or sys %}<|im_start|>system\n{% if sys %}{{ sys }}{% if tools %}{{ '\\n' }}{% endif %}{% endif %}"
    "{% if tools %}Tools: {% for t in tools %}{% set f = t.function if t.function is defined else t %}"
    "{{ f.name }}({{ f.parameters.properties.keys() | join(', ') }}){% if not loop.last %}; {% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endif %}"
    "{% for m in rest %}"
    "{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>\n"
    "{% elif m.role == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m.content if m.content else '' }}"
    "{% if m.tool_calls %}{% for tc in m.tool_calls %}{% set f = tc.function if tc.function is defined else tc %}"
    '<tool_call>{"name": {{ f.name | tojson }}, "arguments": {{ f.arguments | tojson }}}</tool_call>'
    "{% endfor %}{% endif %}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n"
    "{% elif m.role == 'system' %}<|im_start|>system\n{{ m.content }}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map, so byte b gets token id b."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: ids 0-255 are bytes, then pad, eos, chat and tool markers."""
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=4096, padding_side="left")
    tokenizer.add_special_tokens(
        {"pad_token": PAD, "eos_token": IM_END, "additional_special_tokens": [EOS, IM_START, IM_END]}
    )
    tokenizer.add_tokens(TOOL_TOKENS, special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama_config(cfg, tokenizer) -> LlamaConfig:
    """The tiny default's LlamaConfig, sized by `cfg` (a TinyModelConfig); shared by the policy and reward model."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attention_dropout=0.0,
    )


def build_tiny_model(cfg, tokenizer, seed: int) -> LlamaForCausalLM:
    """A small Llama-style causal LM sized by `cfg` (a TinyModelConfig), initialised from `seed`."""
    config = tiny_llama_config(cfg, tokenizer)
    # A private generator keeps model init independent of whatever consumed the global RNG before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
