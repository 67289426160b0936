"""Chat templates of real models: assistant-token masks for any template, and tokenizer fix-ups (pad, end-of-turn,
tool support, prefix stability) applied once when a tokenizer is loaded.

The assistant mask marks the tokens the policy itself produces. A template with `{% generation %}` blocks says so
directly; most shipped templates have none, so the mask is derived by rendering the conversation message by
message: what an assistant message adds after the generation prompt ("<|im_start|>assistant\\n"), up to its
end-of-turn token, is what the model generated. That needs a prefix-stable template (rendering more messages never
changes earlier text); for one that is not (e.g. Qwen3's, which drops the think block of earlier turns) the
matching training template that TRL ships (`trl/chat_templates/*_training.jinja`) is used instead.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from dataclasses import dataclass, field

from jinja2 import TemplateError

TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")
CHATML_START = "<|im_start|>"


class ChatTemplateError(ValueError):
    """A chat template rlagent cannot train with; the message says why and what to do. rlagent.common.modeling reports
    it as a ConfigError of the model choice and rlagent.common.data as a DataError of the conversation, so a stage
    exits with that line; this module imports nothing of rlagent's (config imports data, which imports this module)."""


def read_template(name: str) -> str:
    """A template shipped with rlagent (rlagent/templates/NAME.jinja)."""
    with open(os.path.join(TEMPLATES_DIR, f"{name}.jinja"), encoding="utf-8") as handle:
        return handle.read()


def has_generation_blocks(template: str | None) -> bool:
    return bool(template) and GENERATION_BLOCK.search(template) is not None


def render(tokenizer, messages: list[dict], tools=None, template: str | None = None, add_generation_prompt=False
           ) -> str:  # fmt: skip
    return tokenizer.apply_chat_template(
        messages, tools=tools, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


# ---------------------------------------------------------------------------------------------------------------------
# Assistant masks


def assistant_token_mask(tokenizer, messages: list[dict], tools=None) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_mask) of the rendered conversation; mask 1 = a token the assistant produced.

    `{% generation %}` blocks when the template has them; otherwise the prefix derivation; otherwise TRL's training
    template of the same family. Raises ChatTemplateError when none applies or no assistant token is marked.
    """
    template = tokenizer.chat_template
    try:
        if has_generation_blocks(template):
            return _generation_mask(tokenizer, messages, tools, template)
        spans = assistant_char_spans(tokenizer, messages, tools, template)
        if spans is not None:
            return _mask_from_spans(tokenizer, *spans)
        twin = trl_training_template(template)
        if twin is not None:
            return _generation_mask(tokenizer, messages, tools, twin[1])
    except TemplateError as err:
        raise ChatTemplateError(f"the chat template cannot render this conversation: {err}") from None
    raise ChatTemplateError(
        "the chat template has no {% generation %} blocks and is not prefix-stable (rendering more messages changes "
        "earlier text), and TRL ships no training template for it: set tokenizer.chat_template to one that is"
    )


def _generation_mask(tokenizer, messages, tools, template: str) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(
        messages, tools=tools, chat_template=template, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )  # fmt: skip
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if sum(mask) == 0:
        raise ChatTemplateError("the chat template's {% generation %} blocks marked no assistant tokens")
    return ids, mask


def assistant_char_spans(tokenizer, messages: list[dict], tools, template: str | None = None
                         ) -> tuple[str, list[tuple[int, int]]] | None:  # fmt: skip
    """(full render, [(start, end) character span of each assistant message]) by rendering prefixes; None when the
    template is not prefix-stable on this conversation.

    Span of assistant message i: render(messages[:i], generation prompt) is the text before it; render(messages[:i+1])
    adds the message; its trailing whitespace is layout between turns, not generated (generation stops at the
    end-of-turn token), so it is left out.
    """
    full = render(tokenizer, messages, tools, template)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], tools, template, add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1], tools, template)
        if not (upto.startswith(before) and full.startswith(upto)):
            return None
        added = upto[len(before) :].rstrip()
        _check_rendered(message, added, i)
        spans.append((len(before), len(before) + len(added)))
    return full, spans


def _check_rendered(message: dict, added: str, index: int) -> None:
    """A template that silently drops content or tool calls would train the model on empty turns: refuse it."""
    content = (message.get("content") or "").strip()
    calls = [c.get("function", c).get("name", "") for c in message.get("tool_calls") or []]
    missing = [text for text in [content, *calls] if text and text not in added]
    if missing:
        raise ChatTemplateError(
            f"the chat template drops part of assistant message {index} ({missing[0][:40]!r}); it needs a template "
            "that renders content and tool_calls (see rlagent.common.chat_templates.prepare_tokenizer)"
        )


def _mask_from_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of `text` (as apply_chat_template tokenises it: no special tokens added) and 1 for every token that
    overlaps an assistant span. Overlap, like transformers' own generation mask: a token straddling the edge of a
    span (possible only when the template's markers are not single tokens) counts as assistant."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), encoding["offset_mapping"]
    mask = [int(any(start < e and end > s for s, e in spans)) for start, end in offsets]
    if sum(mask) == 0:
        raise ChatTemplateError("the conversation has no assistant tokens to learn from")
    return ids, mask


# ---------------------------------------------------------------------------------------------------------------------
# Templates: tool support, prefix stability, TRL's training templates

_SENTINELS = {"name": "tool_name_q7", "key": "arg_key_q7", "value": "arg_value_q7", "result": "tool_result_q7"}


def probe_conversation() -> tuple[list[dict], list[dict]]:
    """(messages, tools) of a short tool-using conversation with sentinel strings, for probing a template."""
    s = _SENTINELS
    schema = {"type": "object", "properties": {s["key"]: {"type": "string"}}, "required": [s["key"]]}
    tools = [{"type": "function", "function": {"name": s["name"], "description": "probe", "parameters": schema}}]
    call = {"type": "function", "function": {"name": s["name"], "arguments": {s["key"]: s["value"]}}}
    messages = [
        {"role": "system", "content": "system_text_q7"},
        {"role": "user", "content": "user_text_q7"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": s["name"], "content": s["result"]},
        {"role": "assistant", "content": "answer_text_q7"},
    ]
    return messages, tools


def supports_tools(tokenizer, template: str | None = None) -> bool:
    """Does the template render tool calls (name and arguments) and tool results? Many do not and silently drop
    them (SmolLM2's, Llama 3.0's)."""
    messages, tools = probe_conversation()
    try:
        text = render(tokenizer, messages, tools, template)
    except (TemplateError, TypeError, ValueError):
        return False
    return all(s in text for s in _SENTINELS.values())


def is_prefix_stable(tokenizer, template: str | None = None) -> bool:
    """Does rendering more messages leave the earlier text unchanged (on the probe conversation)? The rollout engine
    appends environment replies as the rendering delta, which needs exactly this."""
    messages, tools = probe_conversation()
    try:
        return assistant_char_spans(tokenizer, messages, tools, template) is not None
    except (TemplateError, TypeError, ValueError):
        return False


def trl_templates_dir() -> str | None:
    """trl/chat_templates of the installed trl, found without importing trl (its import takes seconds)."""
    spec = importlib.util.find_spec("trl")
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "chat_templates")
        if os.path.isdir(path):
            return path
    return None


@functools.lru_cache(maxsize=1)
def _trl_originals() -> dict[str, str]:
    """{template text: family name} of every TRL original that has a `<family>_training.jinja` twin."""
    folder = trl_templates_dir()
    if folder is None:
        return {}
    originals = {}
    for name in sorted(os.listdir(folder)):
        family = name.removesuffix(".jinja")
        if name.endswith(".jinja") and os.path.isfile(os.path.join(folder, f"{family}_training.jinja")):
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                originals[handle.read()] = family
    return originals


def trl_training_template(template: str | None) -> tuple[str, str] | None:
    """(family, training template text) when `template` is byte-identical to a TRL original with a training twin."""
    family = _trl_originals().get(template or "")
    if family is None:
        return None
    with open(os.path.join(trl_templates_dir(), f"{family}_training.jinja"), encoding="utf-8") as handle:
        return family, handle.read()


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer fix-ups


@dataclass
class TokenizerFixups:
    """What prepare_tokenizer changed."""

    notes: list[str] = field(default_factory=list)
    """One line per change, printed once and kept with the saved tokenizer."""
    resize_embeddings: bool = False
    """A token was added: the caller must `model.resize_token_embeddings(len(tokenizer))`."""


def prepare_tokenizer(tokenizer, verbose: bool = True) -> TokenizerFixups:
    """Make a real model's tokenizer usable for multi-turn tool training, in place; every change is noted.

    1. template: a ChatML template without tool support gets rlagent's ChatML + Hermes tool template; one that is
       not prefix-stable (the rollout engine cannot append env replies to it) gets TRL's training twin if any;
    2. eos = the end-of-turn token the template closes assistant turns with (generation must stop there);
    3. pad: distinct from eos (padding masked as eos teaches the model never to stop): an existing special token
       that the template never renders, else a new <|pad|> (then embeddings must be resized).
    Everything changed is in the tokenizer's own files after save_pretrained (chat template, special tokens).
    """
    fixups = TokenizerFixups()
    if not tokenizer.chat_template:
        raise ChatTemplateError("the tokenizer has no chat template; set tokenizer.chat_template")
    _fix_template(tokenizer, fixups)
    _fix_eos(tokenizer, fixups)
    _fix_pad(tokenizer, fixups)
    if verbose:
        for note in fixups.notes:
            print(f"tokenizer: {note}", flush=True)
    return fixups


def _fix_template(tokenizer, fixups: TokenizerFixups) -> None:
    template = tokenizer.chat_template
    if not supports_tools(tokenizer) and CHATML_START in template:
        tokenizer.chat_template = read_template("chatml_tools")
        fixups.notes.append("chat template ignores tools/tool_calls: using rlagent's ChatML + Hermes tool template")
        return
    if is_prefix_stable(tokenizer):
        return  # masks come from the template itself or from the prefix derivation
    twin = trl_training_template(template)
    if twin is not None:
        tokenizer.chat_template = twin[1]
        fixups.notes.append(f"chat template: using TRL's {twin[0]}_training.jinja (prefix-stable, generation blocks)")


def end_of_turn_token(tokenizer) -> str | None:
    """The token right after an assistant message's text in the rendered template (<|im_end|> for ChatML,
    <|eot_id|> for Llama 3), or None when what follows is not a single special/added token."""
    messages = [{"role": "user", "content": "user_text_q7"}, {"role": "assistant", "content": "answer_text_q7"}]
    try:
        text = render(tokenizer, messages)
    except (TemplateError, TypeError, ValueError):
        return None
    position = text.find("answer_text_q7")
    if position < 0:
        return None
    after = text[position + len("answer_text_q7") :]
    added = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)
    return next((token for token in added if after.startswith(token)), None)


def _fix_eos(tokenizer, fixups: TokenizerFixups) -> None:
    token = end_of_turn_token(tokenizer)
    if token is not None and token != tokenizer.eos_token:
        fixups.notes.append(f"eos {tokenizer.eos_token!r} -> {token!r} (the template's end-of-turn token)")
        tokenizer.eos_token = token


def pad_candidates(tokenizer) -> list[str]:
    """Existing special tokens that may pad, best first: not eos/bos, never in a render of the probe conversation
    (so a pad never stands where the model reads or writes), never an ordinary text token. Tokens named like a pad
    come first, then the rest by id (low ids are the reserved ones, e.g. SmolLM2's <|endoftext|> = 0)."""
    messages, tools = probe_conversation()
    try:
        rendered = render(tokenizer, messages, tools, add_generation_prompt=True)
    except (TemplateError, TypeError, ValueError):
        rendered = render(tokenizer, [{"role": "user", "content": "x"}], add_generation_prompt=True)
    taken = {tokenizer.eos_token, tokenizer.bos_token}
    special = [
        (token_id, added.content)
        for token_id, added in sorted(tokenizer.added_tokens_decoder.items())
        if added.special and added.content not in taken and added.content not in rendered
    ]
    return [content for _, content in sorted(special, key=lambda item: ("pad" not in item[1].lower(), item[0]))]


def _fix_pad(tokenizer, fixups: TokenizerFixups) -> None:
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    before = tokenizer.pad_token
    candidates, size = pad_candidates(tokenizer), len(tokenizer)
    if candidates:
        tokenizer.pad_token = candidates[0]
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        fixups.resize_embeddings = len(tokenizer) > size  # False when <|pad|> was there, merely in use in renders
    why = "missing" if before is None else f"{before!r} == eos"
    added = " (new token: embeddings resized)" if fixups.resize_embeddings else ""
    fixups.notes.append(f"pad {why} -> {tokenizer.pad_token!r} id {tokenizer.pad_token_id}{added}")


def sync_model_with_tokenizer(model, tokenizer) -> None:
    """Fit a model loaded from the same folder to its prepared tokenizer: grow the embeddings when prepare_tokenizer
    added a token (never shrink: many checkpoints pad their vocabulary), and point config and generation config at
    the tokenizer's pad and eos (a converted GGUF's config still says pad = eos, and generate() would otherwise pad
    and stop with the old ids)."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None:
            config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
