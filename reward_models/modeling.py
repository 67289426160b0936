"""Reward-model backbones: a causal transformer with a scalar `score` head (AutoModelForSequenceClassification).

`model.name_or_path` is 'tiny' (a LlamaForSequenceClassification with the tiny policy's LlamaConfig), a causal-LM
folder such as an SFT output, a .gguf file or short name (all load with a fresh head), a LoRA SFT output (its adapter
merged into its base first), or an existing reward-model folder (its head is kept).
"""

from __future__ import annotations

import copy
import math

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, LlamaForSequenceClassification
from transformers.utils import logging as hf_logging

from rlagent.common.chat_templates import sync_model_with_tokenizer
from rlagent.common.config import ModelConfig, TinyModelConfig
from rlagent.common.model_sources import is_adapter_folder
from rlagent.common.modeling import TINY, load_pretrained_causal_lm, model_path
from rlagent.common.precision import weight_dtype
from rlagent.common.tiny import tiny_llama_config


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
    """Reward model to train: fresh tiny, a causal LM with a fresh head, or a reward-model folder as is.

    pad_token_id is set in the config (sync_model_with_tokenizer) because HF reads the score at the last token that is
    not padding; a converted GGUF's config still says pad = eos, which would score the wrong token.
    """
    if cfg.name_or_path == TINY:
        model = build_tiny_reward_model(cfg.tiny, tokenizer, seed)
    else:
        path, dtype = model_path(cfg.name_or_path), weight_dtype(cfg.dtype)
        keep_head = not is_adapter_folder(path) and is_reward_model_folder(path)
        if is_adapter_folder(path):
            model = _classifier_from_causal_lm(load_pretrained_causal_lm(cfg.name_or_path, dtype))
        else:
            model = _load_classifier(path, dtype, quiet=not keep_head)
        if not keep_head:
            init_score_head(model, seed)
        sync_model_with_tokenizer(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(weight_dtype(cfg.dtype))


def _load_classifier(path: str, dtype: torch.dtype, quiet: bool):
    verbosity = hf_logging.get_verbosity()
    if quiet:  # the "score.weight MISSING" load report is expected: the head is initialised by the caller
        hf_logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype, local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def _classifier_from_causal_lm(causal):
    """A one-output sequence classifier with the causal LM's backbone weights (e.g. a merged LoRA SFT policy); its
    head is left for init_score_head."""
    config = copy.deepcopy(causal.config)
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config, dtype=causal.dtype)
    backbone = getattr(model, model.base_model_prefix)
    backbone.load_state_dict(getattr(causal, causal.base_model_prefix).state_dict())
    return model
