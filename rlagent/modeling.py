"""Load tokenizers and causal-LM backbones (the policy and its reference): the embedded 'tiny' default or a local
Hugging Face folder; plus the dropout and LoRA helpers the stages apply to them.

Value models are built in rlagent.ppo_models and reward models in reward_models.modeling, both on top of this module.
"""

from __future__ import annotations

import glob
import os
import re

import torch
import yaml
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
    """No network at run time: anything but 'tiny' or an existing local folder gets a one-line, actionable error
    that says what the path is (a file, a stage output not written yet, a hub id)."""
    if name_or_path == TINY or os.path.isdir(name_or_path):
        return
    if os.path.exists(name_or_path):
        raise ConfigError(f"{key}='{name_or_path}' is a file; pass the model's folder (with config.json) or 'tiny'")
    stage_output = _stage_output_dir(name_or_path)
    if stage_output is not None:
        quickstart = os.path.dirname(stage_output) == os.path.join("runs", "quickstart")  # what make quickstart writes
        raise ConfigError(
            f"{key}='{name_or_path}' does not exist yet: it is written by the stage whose output_dir is "
            f"'{stage_output}'; run {_producing_command(stage_output)} first"
            + (" (or `make quickstart` for all stages)" if quickstart else "")
        )
    if _looks_like_hub_id(name_or_path):
        raise ConfigError(
            f"{key}='{name_or_path}' is not a local folder; rlagent does not download weights. "
            "Download the model elsewhere (e.g. `huggingface-cli download ID --local-dir DIR`) and pass DIR, "
            "or use 'tiny'."
        )
    raise ConfigError(f"{key}='{name_or_path}': no such folder; pass a local model folder or 'tiny'")


def _stage_output_dir(path: str) -> str | None:
    """OUTPUT_DIR when `path` is a folder a training stage writes (OUTPUT_DIR/final or .../checkpoints/step-N)."""
    parts = os.path.normpath(path).split(os.sep)
    if parts[-1] == "final" and len(parts) > 1:
        return os.path.join(*parts[:-1])
    if len(parts) > 2 and parts[-2] == "checkpoints" and re.fullmatch(r"step-\d+", parts[-1]):
        return os.path.join(*parts[:-2])
    return None


def _producing_command(output_dir: str) -> str:
    """`rlagent STAGE --config FILE` for the config under ./configs whose output_dir is `output_dir` (the stage is
    the file's name: sft, reward or ppo); a generic hint when none matches."""
    for config in sorted(glob.glob(os.path.join("configs", "**", "*.yaml"), recursive=True)):
        stage = os.path.splitext(os.path.basename(config))[0]
        if stage in ("sft", "reward", "ppo") and _config_output_dir(config) == os.path.normpath(output_dir):
            return f"`rlagent {stage} --config {config}`"
    return f"the stage (`rlagent sft|reward --config FILE`) with output_dir: {output_dir}"


def _config_output_dir(config: str) -> str | None:
    try:
        with open(config, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, ValueError, yaml.YAMLError):  # an unrelated broken file must not hide the real error
        return None
    value = data.get("output_dir") if isinstance(data, dict) else None
    return os.path.normpath(value) if isinstance(value, str) else None


def _looks_like_hub_id(name: str) -> bool:
    """'org/name' or 'name': what a user copies from the Hub; a path with more parts or a ./ or / is local."""
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1


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
