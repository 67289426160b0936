"""The embedded default: a byte-level BPE tokenizer trained on our task corpus, a Hermes/Qwen-style chat template,
and a small Llama model.

Built offline and deterministically, so everything runs with no downloads. All 256 bytes are base tokens (any text
round-trips) and digits are always single tokens (split before BPE), while merges learned from the environments'
expert transcripts compress the boilerplate (JSON keys, tool names, phrasing) about 3x: shorter sequences make
training and rollouts on CPU proportionally cheaper and shorten the distances the model must copy across.
Chat and tool-call markers are added tokens; pad != eos.
"""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB_SIZE = 1024  # bytes + learned merges (added tokens come on top)

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


def _corpus() -> list[str]:
    """Training text for the merges: expert transcripts (train split only) of every environment, rendered with the
    chat template, markers removed (they are added tokens and never merged)."""
    import envs
    from envs.experts import generate_demonstrations

    texts = []
    for i, env_id in enumerate(envs.ENV_IDS):
        for row in generate_demonstrations(env_id, 400, noise=0.3, seed=9_000 + i, split="train"):
            texts.append(_render_plain(row["messages"], row["tools"]))
    return texts


def _render_plain(messages: list[dict], tools) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=CHAT_TEMPLATE)
    text = rendered[0]
    for marker in (PAD, EOS, IM_START, IM_END, *TOOL_TOKENS):
        text = text.replace(marker, "\n")
    return text


@functools.lru_cache(maxsize=1)
def _trained_backend_json() -> str:
    """Train the byte-level BPE once per process (about a second) and cache its serialised form."""
    backend = Tokenizer(models.BPE())
    # Digits first, one per piece, so merges never glue digits: numbers stay digit-by-digit for copying/arithmetic.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    return backend.to_str()


# How an assistant turn of CHAT_TEMPLATE parses back into a message (transformers' `response_template`, saved in
# tokenizer_config.json): TRL's GRPOTrainer reads tool calls with it. The shape of TRL's qwen3_template, minus
# reasoning: <tool_call> JSON blocks, then text up to <|im_end|>.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": f"{IM_START}assistant\n",
    "fields": {
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (bytes + merges from our task corpus), then pad, eos, chat and tool markers."""
    backend = Tokenizer.from_str(_trained_backend_json())
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=4096, padding_side="left")
    tokenizer.add_special_tokens(
        {"pad_token": PAD, "eos_token": IM_END, "additional_special_tokens": [EOS, IM_START, IM_END]}
    )
    tokenizer.add_tokens(TOOL_TOKENS, special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


def tiny_llama_config(cfg, tokenizer) -> LlamaConfig:
    """The LlamaConfig of the tiny model sized by `cfg` (a TinyModelConfig); shared by the policy and reward model."""
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
