"""Rigged causal LMs for tests: the real tiny Llama (so the engine's KV-cache decode and `model.generate` run for real)
with a forward hook that overwrites the last position's logits so that ALL probability mass sits on a scripted next
token. Greedy or sampled, every machine then produces the same tokens, whatever the float noise.

The script sees only what both decode paths feed the model on every call: the last input token and its position
(`position_ids`). A cached decode step feeds one token, a prefill or an uncached `generate` step feeds the whole
left-padded context; the last column is the same token at the same position either way.
"""

import contextlib
from collections.abc import Callable

import torch

from rlagent.common.config import TinyModelConfig
from rlagent.common.tiny import build_tiny_model

SMALL = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
# exp(-1e4) is exactly 0 in float32, so softmax puts probability 1 on the scripted token (sampling is forced too),
# and the value is finite, so no sampling guard sees inf or nan.
SUPPRESSED = -1e4


class RiggedModel:
    """RiggedModel(model, script): the model's next token is script(last_token, position) in every row; `records`
    keeps, per forward call, (positions, last tokens, the real last-position logits) while `record` is True."""

    def __init__(self, model, script: Callable[[int, int], int]):
        self.model, self.script, self.record, self.records = model, script, False, []
        self.handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        input_ids, positions = kwargs.get("input_ids"), kwargs.get("position_ids")
        if input_ids is None or positions is None:  # both decode paths pass them by name; fail loudly, never guess
            raise AssertionError("the rigged model needs input_ids and position_ids passed by name")
        last, position = input_ids[:, -1].tolist(), positions[:, -1].tolist()
        real = output.logits[:, -1]
        if self.record:
            self.records.append((position, last, real.detach().clone()))
        rigged = torch.full_like(real, SUPPRESSED)
        rigged[torch.arange(len(last)), [self.script(t, p) for t, p in zip(last, position)]] = 0.0
        output.logits = output.logits.clone()
        output.logits[:, -1] = rigged
        return output

    @contextlib.contextmanager
    def disabled(self):
        """The plain model (for reference forwards)."""
        self.handle.remove()
        try:
            yield self.model
        finally:
            self.handle = self.model.register_forward_hook(self._hook, with_kwargs=True)


def rigged_tiny(tokenizer, script: Callable[[int, int], int], seed: int = 0, sharpen: float = 3.0) -> RiggedModel:
    """The small tiny Llama, every weight matrix scaled by `sharpen`: at the default init (std 0.02) attention is
    nearly uniform, so a cache that lost half its keys moved the real logits by only ~3e-3; scaled by 3, ~0.3
    (float noise between batched and single decoding stays ~1e-6), which lets a 1e-4 tolerance tell them apart."""
    model = build_tiny_model(SMALL, tokenizer, seed=seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(sharpen)
    return RiggedModel(model, script)


class CountdownScript:
    """Varied multi-turn episodes on Calculator-v0, decided by the position where a turn starts.

    A turn is either a malformed tool call `<tool_call>` + a digit countdown (`<tool_call>543210`, an unclosed tag:
    the env answers with an error and the episode goes on) or a bare countdown (a wrong final answer: it ends).
    A countdown from d is d + 1 digit tokens then the end-of-turn token, so turn lengths vary with the start digit.
    `longest` caps the start digit; a start digit >= max_new_tokens makes a turn that hits the token limit.
    """

    def __init__(self, tokenizer, longest: int = 9, answer_every: int = 3):
        self.eos, self.longest, self.answer_every = tokenizer.eos_token_id, longest, answer_every
        self.digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
        self.tool_call = tokenizer.convert_tokens_to_ids("<tool_call>")

    @staticmethod
    def mix(position: int) -> int:
        """A fixed integer hash (Knuth's multiplicative), so nearby positions make unrelated choices."""
        return (position * 2654435761) % 2**32 >> 16

    def start_digit(self, position: int) -> int:
        return self.digits[self.mix(position) % (self.longest + 1)]

    def __call__(self, token: int, position: int) -> int:
        if token in self.digits:
            d = self.digits.index(token)
            return self.eos if d == 0 else self.digits[d - 1]
        if token == self.tool_call:
            return self.start_digit(position)
        # A turn starts (the last fed token ends the generation prompt): answer or call, by the position.
        answer = self.mix(position) // (self.longest + 1) % self.answer_every == 0
        return self.start_digit(position) if answer else self.tool_call


def first_token_tiny(tokenizer):
    """A tiny Llama (a plain HF model: it saves, loads and runs in a subprocess) whose logits are all exactly 0.

    Greedy decoding then always picks token id 0 (argmax returns the first maximal index, as torch and transformers
    document), which is not the end-of-turn token: every greedy turn runs to max_new_tokens. The tiny model ties its
    input and output embeddings, so zeroing the shared matrix zeroes every logit whatever the hidden state.
    """
    model = build_tiny_model(SMALL, tokenizer, seed=0)
    assert model.config.tie_word_embeddings and tokenizer.eos_token_id != 0
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    return model
