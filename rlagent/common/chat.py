"""Chat-template rendering and tokenisation shared by the rollout engine, the data pipeline and the reward model.

Tokens go in and out unchanged (docs/ppo.md B.11): the environment's reply is rendered through the chat template as a
text delta and tokenised on its own, `encode`/`encode_many` tokenise without special tokens through the fast
tokenizer's Rust backend when that gives the same ids, and `render_mismatches` counts how far an episode's tokens
drift from a fresh render of its conversation.

This is a common module (see tests/test_layers.py): it imports only third-party code.
"""

from __future__ import annotations

from transformers import TokenizersBackend


def render_env_reply(tokenizer, history: list[dict], env_messages: list[dict], tools, context: list[int] | None = None
                     ) -> list[int]:  # fmt: skip
    """Tokens the chat template places after the assistant's end-of-turn token, up to the next generation prompt.

    Rendered as a string delta between the history and history + env messages (veRL's multi-turn approach). The
    template's text after the assistant's last end-of-turn (e.g. "\\n") belongs to the delta too, because the policy
    stopped at end-of-turn.

    `context`, the episode's token ids so far (ending with that end-of-turn), enables a fast path that renders once
    instead of twice: when the fresh render of history + env messages starts with the decoded context, the delta is
    the rest of it, and context + delta decodes to exactly that render. Otherwise (e.g. the policy wrote a tool call
    the template renders differently) the two-render delta is used. A template that is not prefix-stable (rendering
    more messages changes earlier text, e.g. Qwen3's think block of the last assistant message) never raises: the
    reply is what `after` holds past the history's end-of-turn, found by `_history_end`.
    """
    after = tokenizer.apply_chat_template(
        history + env_messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    if context is not None:
        text = tokenizer.decode(context, skip_special_tokens=False)
        if text and after.startswith(text):
            return encode(tokenizer, after[len(text) :])
    before = tokenizer.apply_chat_template(history, tools=tools, tokenize=False)
    eos = tokenizer.eos_token
    if not after.startswith(before):
        # Not prefix-stable (e.g. Qwen3 renders a think block only in the LAST assistant message): find where the
        # history ends in `after` itself, by rendering the same conversation with the env message's text replaced.
        return encode(tokenizer, after[_history_end(tokenizer, history, env_messages, tools, after) :])
    tail = before[before.rindex(eos) + len(eos) :] if eos in before else ""
    return encode(tokenizer, tail + after[len(before) :])


SENTINEL = "\x00rlagent-sentinel\x00"


def _history_end(tokenizer, history: list[dict], env_messages: list[dict], tools, after: str) -> int:
    """Index in `after` (the render of history + env messages) just past the history's last end-of-turn token.

    A second render with the first env message's content swapped for a sentinel renders the history exactly as
    `after` does (same messages before it, same position in the conversation); the two agree up to that content, so
    the history's end is the last end-of-turn token in their common prefix (the env message's header follows it).
    """
    probe = history + [{**env_messages[0], "content": SENTINEL}] + env_messages[1:]
    other = tokenizer.apply_chat_template(probe, tools=tools, tokenize=False, add_generation_prompt=True)
    common = next((i for i, (a, b) in enumerate(zip(after, other)) if a != b), min(len(after), len(other)))
    eos = tokenizer.eos_token
    end = after.rfind(eos, 0, common) if eos else -1
    if end < 0:
        raise ValueError("chat template: cannot find the end of the assistant's turn before the environment's reply")
    return end + len(eos)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens added: what `tokenizer(text, add_special_tokens=False)` returns."""
    return encode_many(tokenizer, [text])[0]


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """`encode` for many texts in one call.

    A fast tokenizer's Rust backend is called directly, with the whole batch at once: the Python wrapper costs ~50 us
    a call, and the prompts, environment replies and final render checks are a fifth of the engine's time outside
    generation.
    """
    backend = _direct_backend(tokenizer)
    if backend is None:
        return list(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else []
    return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]


def _direct_backend(tokenizer):
    """The Rust tokenizer, when calling it directly gives what the Python wrapper would give; else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None  # settings stored in tokenizer.json (v4 checkpoints): the wrapper switches them off first
    if backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    if type(tokenizer)._encode_plus is not TokenizersBackend._encode_plus:
        return None  # a subclass that rewrites the text first (e.g. CodeLlama's infilling tokens)
    return backend


def render_mismatches(tokenizer, episodes: list) -> list[bool]:
    """Per episode: do our tokens differ from tokenising a fresh render of the final conversation?

    `episodes` are the engine's episode states (`messages`, `tools`, `tokens`). A mismatch is not an error (e.g. the
    model wrote a tool call with spacing the template would not produce); it is counted so users see how far training
    tokens drift from what the template would feed the model. Compared as a prefix: the template adds text after the
    last end-of-turn (and the env's last reply, when the token budget ended the episode) that was never appended.

    The conversation is rendered with a closing user message after it, as the engine rendered every reply: a template
    that renders the LAST assistant message differently (Qwen3 adds an empty think block) is not a real difference.
    """
    texts = [_render_not_last(tokenizer, ep.messages, ep.tools) for ep in episodes]
    rendered = encode_many(tokenizer, texts)
    return [ids[: len(ep.tokens)] != ep.tokens for ids, ep in zip(rendered, episodes)]


def _render_not_last(tokenizer, messages: list[dict], tools) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages + [{"role": "user", "content": SENTINEL}], tools=tools, tokenize=False
        )
    except TemplateError:  # a template that rejects two user turns in a row: the plain render
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """Keep tokens up to and including the first end-of-turn token.

    generate() pads a row only after it emitted eos, so a row without eos is max_new_tokens real samples: keep all
    of it (stripping "trailing padding" there would drop sampled tokens if the model ever sampled the pad id).
    """
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids
