"""Reward-model backbones: a causal transformer with a scalar `score` head (AutoModelForSequenceClassification).

`model.name_or_path` is 'tiny' (a LlamaForSequenceClassification with the tiny policy's LlamaConfig), a causal-LM
folder such as an SFT output (it loads with a fresh head), or an existing reward-model folder (its head is kept).
"""

from __future__ import annotations

import math

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, LlamaForSequenceClassification
from transformers.utils import logging as hf_logging

from rlagent.config import ModelConfig, TinyModelConfig
from rlagent.modeling import TINY, check_local_path, resolve_dtype
from rlagent.tiny import tiny_llama_config


def build_tiny_reward_model(cfg: TinyModelConfig, tokenizer, seed: int) -> LlamaForSequenceClassification:
    """The tiny default as a reward model: same backbone config as the tiny policy, one output, head N(0, 1/√(d+1))."""
    config = tiny_llama_config(cfg, tokenizer)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
    init_score_head(model, seed)
    return model


def init_score_head(model, seed: int) -> None:
    """docs/ppo.md D.16: scalar head weights ~ N(0, std=1/√(d+1)), bias 0, so initial scores are O(1).

    HF's default (std = initializer_range = 0.02) gives near-constant initial scores; 1/√(d+1) is the N+
    implementation detail (OpenRLHF's 1/(d+1) is a typo).
    """
    head = model.score
    generator = torch.Generator().manual_seed(seed + 1)
    std = 1.0 / math.sqrt(head.in_features + 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * std)
        if head.bias is not None:
            head.bias.zero_()


def is_reward_model_folder(path: str) -> bool:
    """True when the folder already holds a sequence-classification model (its trained head should be kept)."""
    architectures = AutoConfig.from_pretrained(path, local_files_only=True).architectures or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def load_reward_backbone(cfg: ModelConfig, tokenizer, seed: int):
    """Reward model to train: fresh tiny, a causal-LM folder with a fresh head, or a reward-model folder as is.

    pad_token_id is set in the config because HF reads the score at the last token that is not padding.
    """
    if cfg.name_or_path == TINY:
        model = build_tiny_reward_model(cfg.tiny, tokenizer, seed)
    else:
        check_local_path(cfg.name_or_path)
        keep_head = is_reward_model_folder(cfg.name_or_path)
        verbosity = hf_logging.get_verbosity()
        if not keep_head:  # the "score.weight MISSING" load report is expected: the head is initialised below
            hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                cfg.name_or_path, num_labels=1, dtype=resolve_dtype(cfg.dtype), local_files_only=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        if not keep_head:
            init_score_head(model, seed)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(resolve_dtype(cfg.dtype))
