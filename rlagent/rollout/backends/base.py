"""The generation-backend interface: requests in, sampled tokens and their log-probs out (see the package doc)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class SamplingParams:
    """How one batch of requests is sampled (plain temperature sampling: no top-k/top-p)."""

    max_new_tokens: int = 96  # longest output; a row that reaches it without a stop id is kept as sampled
    temperature: float = 1.0  # divides the logits for sampling AND for the returned log-probs
    stop_ids: tuple[int, ...] = ()  # a row ends right after sampling one of these (kept in its output)
    greedy: bool = False  # argmax instead of sampling; log-probs are still those of the temperature-scaled softmax
    generator: torch.Generator | None = None  # random stream for sampling (None = torch's global one)


@dataclass
class GenerationRequest:
    """One row to continue. `key` names the sequence across calls (an episode), so a backend may keep its state."""

    key: object
    token_ids: list[int]


@dataclass
class GenerationOutput:
    """The sampled continuation and, per token, its log-prob under the sampling distribution."""

    token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)


class GenerationBackend(Protocol):
    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]: ...

    def sync_weights(self, model) -> None: ...

    def release(self) -> None: ...
