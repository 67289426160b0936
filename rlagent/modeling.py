"""Load tokenizers and causal-LM backbones (the policy and its reference): the embedded 'tiny' default or a local
Hugging Face folder; plus the dropout and LoRA helpers the stages apply to them.

Value models are built in rlagent.ppo_models and reward models in reward_models.modeling, both on top of this module.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rlagent.config import ConfigError, ModelConfig
from rlagent.tiny import build_tiny_model, build_tiny_tokenizer

TINY = "tiny"


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' = bf16 on a GPU that supports it, otherwise fp32 (CPU bf16 matmuls are slow and imprecise)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def check_local_path(name_or_path: str, key: str = "model.name_or_path") -> None:
    """No network at run time: a hub id that is not a local folder gets a one-line, actionable error."""
    if name_or_path != TINY and not os.path.isdir(name_or_path):
        raise ConfigError(
            f"{key}='{name_or_path}' is not a local folder; rlagent does not download weights. "
            "Download the model elsewhere (e.g. `huggingface-cli download ID --local-dir DIR`) and pass DIR, "
            "or use 'tiny'."
        )


def load_tokenizer(name_or_path: str):
    """The tiny byte-level tokenizer, or the folder's own tokenizer (with its own chat template)."""
    if name_or_path == TINY:
        return build_tiny_tokenizer()
    check_local_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # PPO_CHECKLIST A.1: pad must differ from eos, or masking eos as padding teaches the model never to stop.
        raise ConfigError(
            f"{name_or_path}: tokenizer has pad_token == eos_token ({tokenizer.eos_token!r}); "
            "set a distinct pad token in its tokenizer_config.json"
        )
    return tokenizer


def load_causal_lm(cfg: ModelConfig, tokenizer, seed: int) -> PreTrainedModel:
    """Policy backbone: fresh tiny model from `seed`, or weights from a local folder."""
    if cfg.name_or_path == TINY:
        model = build_tiny_model(cfg.tiny, tokenizer, seed)
    else:
        check_local_path(cfg.name_or_path)
        model = AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path, dtype=resolve_dtype(cfg.dtype), local_files_only=True
        )
    return model.to(resolve_dtype(cfg.dtype))


def disable_dropout(model: torch.nn.Module) -> None:
    """PPO_CHECKLIST B.10: dropout makes old/new log-probs disagree, so zero every Dropout (LoRA's included)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def apply_lora(model: PreTrainedModel, cfg: ModelConfig, task_type: str = "CAUSAL_LM") -> PreTrainedModel:
    """Wrap with PEFT LoRA adapters when cfg.lora.enabled; otherwise return the model unchanged."""
    if not cfg.lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, lora)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
