"""Scoring API for PPO: batched, no-grad, eval-mode reward-model scores, normalised with the stored gain and bias.

    rm = reward_models.load("runs/reward/final")
    rm.score(conversations)                          # normalised (and clipped if configured), shape (N,)
    rm.score_raw(conversations)                      # the head's raw output
    rm.score_ids(input_ids, attention_mask)          # ids already in the RM's tokenizer, any padding
    rm.score_policy_ids(input_ids, attention_mask, policy_tokenizer)   # re-tokenised when needed

A conversation is rendered with the RM's own chat template and cut right after the final end-of-turn token, so the
score is read at the assistant's last <|im_end|> — where a PPO trajectory ends too (the template's trailing "\\n"
is not part of a rollout).
"""

from __future__ import annotations

import json
import math
import os
import warnings

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlagent.common.chat import encode_many
from rlagent.common.data import right_pad

NORMALIZATION_FILE = "reward_normalization.json"


def render_for_reward(tokenizer, messages: list[dict], tools=None) -> list[int]:
    """Token ids of a conversation as the RM scores it (training and scoring share this one function)."""
    return render_many_for_reward(tokenizer, [messages], [tools])[0]


def render_many_for_reward(tokenizer, conversations: list[list[dict]], tools: list | None = None) -> list[list[int]]:
    """render_for_reward for many conversations: each distinct one is rendered once, and all texts are encoded in
    one batched tokenizer call (rule-built pairs repeat the same chosen conversation up to a dozen times)."""
    tools = tools if tools is not None else [None] * len(conversations)
    texts, index = {}, []
    for messages, conv_tools in zip(conversations, tools):
        # No sort_keys: the template's tojson keeps key order, so {"a","b"} and {"b","a"} arguments render apart.
        key = json.dumps([messages, conv_tools or None], default=str)
        if key not in texts:
            texts[key] = _reward_text(tokenizer, messages, conv_tools)
        index.append(key)
    encoded = dict(zip(texts, encode_many(tokenizer, list(texts.values()))))
    return [list(encoded[key]) for key in index]


def _reward_text(tokenizer, messages: list[dict], tools=None) -> str:
    """The chat-template text cut right after the final end-of-turn token of a trailing assistant message."""
    text = tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False)
    eos = tokenizer.eos_token
    if messages and messages[-1].get("role") == "assistant" and eos and eos in text:
        text = text[: text.rindex(eos) + len(eos)]
    return text


def forward_scores(model, rows: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """Raw scalar scores (B,) in float32; HF reads each at the last non-pad token. Gradients flow (training)."""
    input_ids, attention_mask = right_pad(rows, pad_id)
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    return out.logits[:, 0].float()


@torch.no_grad()
def raw_scores(model, rows: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Raw scores (N,) on CPU, in the order of `rows`; batches are formed by length to waste little on padding."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.empty(len(rows), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out[chunk] = forward_scores(model, [rows[i] for i in chunk], pad_id, device).cpu()
    return out


def fit_normalization(raw: torch.Tensor, clip: float | None = None) -> dict:
    """Gain and bias that map `raw` (scores on a reference sample) to mean 0, std 1: normalised = gain·raw + bias."""
    mean, std = raw.double().mean().item(), raw.double().std().item()
    if not math.isfinite(std) or std < 1e-8:
        raise ValueError(f"reference scores have std {std}; cannot normalise (did training collapse?)")
    return {"gain": 1.0 / std, "bias": -mean / std, "clip": clip, "mean": mean, "std": std, "samples": len(raw)}


class RewardModel:
    """A trained reward model ready for PPO: eval mode, no gradients, normalised scores."""

    def __init__(self, model, tokenizer, normalization: dict | None = None, batch_size: int = 16):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        norm = normalization or {}
        self.gain, self.bias, self.clip = norm.get("gain", 1.0), norm.get("bias", 0.0), norm.get("clip")
        self.batch_size = batch_size
        self.pad_id = model.config.pad_token_id
        self._same_vocab: tuple[object, bool] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> RewardModel:
        self.model.to(device)
        return self

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """gain·raw + bias, clamped to [-clip, clip] when a clip is configured."""
        scores = raw * self.gain + self.bias
        return scores.clamp(-self.clip, self.clip) if self.clip else scores

    def score(self, conversations: list[list[dict]], tools=None, raw: bool = False) -> torch.Tensor:
        """Scores (N,) on CPU for HF-format conversations; `tools`: one schema list for all or one per conversation."""
        per_conversation = tools if tools and not isinstance(tools[0], dict) else [tools] * len(conversations)
        rows = render_many_for_reward(self.tokenizer, conversations, per_conversation)
        return self._score_rows(rows, raw)

    def score_raw(self, conversations: list[list[dict]], tools=None) -> torch.Tensor:
        return self.score(conversations, tools, raw=True)

    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """Scores (N,) for ids in the RM's tokenizer, (N, T) with any padding: attention_mask says which are real."""
        return self._score_rows(_real_tokens(input_ids, attention_mask), raw)

    def score_policy_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, policy_tokenizer, raw: bool = False
    ) -> torch.Tensor:
        """Scores (N,) for token ids from the policy's tokenizer.

        Rule: ids are used as they are when both tokenizers have the same vocabulary (token -> id map, added tokens
        included); otherwise each sequence is decoded with the policy tokenizer (special tokens kept) and
        re-tokenised with the RM's. The text keeps the policy's chat markup, so a differing chat template is warned
        about: for that case, score the messages with `score()` instead.
        """
        rows = _real_tokens(input_ids, attention_mask)
        if not self.same_vocab(policy_tokenizer):
            texts = [policy_tokenizer.decode(row, skip_special_tokens=False) for row in rows]
            rows = [self.tokenizer(text, add_special_tokens=False).input_ids for text in texts]
        return self._score_rows(rows, raw)

    def same_vocab(self, other_tokenizer) -> bool:
        if self._same_vocab is None or self._same_vocab[0] is not other_tokenizer:
            same = other_tokenizer is self.tokenizer or other_tokenizer.get_vocab() == self.tokenizer.get_vocab()
            if getattr(other_tokenizer, "chat_template", None) != getattr(self.tokenizer, "chat_template", None):
                warnings.warn(
                    "the policy's chat template differs from the reward model's; scores may be off", stacklevel=3
                )
            self._same_vocab = (other_tokenizer, same)
        return self._same_vocab[1]

    def _score_rows(self, rows: list[list[int]], raw: bool) -> torch.Tensor:
        if not rows:
            return torch.empty(0)
        scores = raw_scores(self.model, rows, self.pad_id, self.batch_size, self.device)
        return scores if raw else self.normalize(scores)


def _real_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """Each row's real tokens (attention_mask == 1), whatever side the padding was on."""
    keep = attention_mask.bool().cpu()
    return [row[mask].tolist() for row, mask in zip(input_ids.cpu(), keep)]


def load(path: str, device=None, batch_size: int = 16) -> RewardModel:
    """A reward model from a stage-2 `final/` folder (or any sequence-classification folder with num_labels=1).

    Normalisation comes from `reward_normalization.json` beside the weights; without it, scores are raw.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"reward model folder not found: {path}")
    model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if model.config.num_labels != 1:
        raise ValueError(f"{path}: a reward model has num_labels=1, this one has {model.config.num_labels}")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    normalization = None
    norm_file = os.path.join(path, NORMALIZATION_FILE)
    if os.path.isfile(norm_file):
        with open(norm_file, encoding="utf-8") as handle:
            normalization = json.load(handle)
    reward_model = RewardModel(model, tokenizer, normalization, batch_size)
    return reward_model.to(device) if device is not None else reward_model
