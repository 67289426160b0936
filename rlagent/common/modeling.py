"""Load tokenizers and causal-LM backbones (the policy and its reference): the embedded 'tiny' default, a local
Hugging Face folder, a LoRA stage output (PEFT adapter, merged into its base on load), a `.gguf` file or a short name
such as `smollm2-135m-instruct` (rlagent.common.model_sources); plus the dropout and LoRA helpers the stages apply to
them.

A real model's tokenizer gets rlagent's fix-ups on load (rlagent.common.chat_templates.prepare_tokenizer: tool-capable,
prefix-stable template, eos = end-of-turn, pad distinct from eos), printed once and saved with every final/ folder.

Value models are built in rlagent.training.ppo_models and reward models in reward_models.modeling, both on top of this
module.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import re

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rlagent.common.chat_templates import ChatTemplateError, prepare_tokenizer, sync_model_with_tokenizer
from rlagent.common.config import ConfigError, ModelConfig
from rlagent.common.model_sources import SHIPPED_MODELS, TINY, is_adapter_folder, resolve_model_path
from rlagent.common.precision import weight_dtype
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer

# tokenizer_config.json key under which the fix-ups prepare_tokenizer made are kept, so final/ says what was changed
FIXUPS_KEY = "rlagent_tokenizer_fixups"


def check_local_path(name_or_path: str, key: str = "model.name_or_path") -> None:
    """No network at run time: anything but 'tiny' or an existing local folder gets a one-line, actionable error
    that says what the path is (a file, a stage output not written yet, a hub id)."""
    if name_or_path == TINY:
        return
    if os.path.isdir(name_or_path):
        if not any(os.path.isfile(os.path.join(name_or_path, f)) for f in ("config.json", "adapter_config.json")):
            raise ConfigError(
                f"{key}='{name_or_path}' has no config.json: not a Hugging Face model folder (a stage's model is in "
                "its output_dir/final)"
            )
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
            f"or use 'tiny'{_closest(name_or_path)}."
        )
    raise ConfigError(
        f"{key}='{name_or_path}': no such folder; pass a local model folder or 'tiny'{_closest(name_or_path)}"
    )


def _closest(name: str) -> str:
    """'; did you mean X?' for a near-miss of a known short name ('tiny' or a shipped model), else ''."""
    close = difflib.get_close_matches(name.lower(), [TINY, *SHIPPED_MODELS], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def model_path(name_or_path: str, key: str = "model.name_or_path") -> str:
    """The local folder to load (or 'tiny'): a .gguf file or short name becomes its cached HF folder; a missing path
    gets check_local_path's one-line error (which names the stage that writes it, or says we never download)."""
    if name_or_path == TINY:
        return TINY
    if name_or_path.lower() in SHIPPED_MODELS or os.path.exists(os.path.expanduser(name_or_path)):
        return resolve_model_path(name_or_path, key)
    check_local_path(name_or_path, key)
    raise AssertionError("unreachable: check_local_path raises for a missing path")


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


def load_tokenizer(name_or_path: str, key: str = "model.name_or_path"):
    """The tiny byte-level tokenizer, or the model's own tokenizer with rlagent's fix-ups (printed when any apply;
    their notes are kept in tokenizer_config.json under FIXUPS_KEY, so a saved final/ records them)."""
    if name_or_path == TINY:
        return build_tiny_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(model_path(name_or_path, key), local_files_only=True)
    try:
        fixups = prepare_tokenizer(tokenizer)
    except ChatTemplateError as err:
        raise ConfigError(f"{key}='{name_or_path}': {err}") from None
    if fixups.notes:
        tokenizer.init_kwargs[FIXUPS_KEY] = list(tokenizer.init_kwargs.get(FIXUPS_KEY, [])) + fixups.notes
    return tokenizer


def load_causal_lm(cfg: ModelConfig, tokenizer, seed: int) -> PreTrainedModel:
    """Policy backbone: fresh tiny model from `seed`, or pretrained weights fitted to the (fixed-up) tokenizer."""
    if cfg.name_or_path == TINY:
        model = build_tiny_model(cfg.tiny, tokenizer, seed)
    else:
        model = load_pretrained_causal_lm(cfg.name_or_path, weight_dtype(cfg.dtype))
        sync_model_with_tokenizer(model, tokenizer)
    return model.to(weight_dtype(cfg.dtype))


def load_pretrained_causal_lm(name_or_path: str, dtype: torch.dtype, key: str = "model.name_or_path"):
    """An AutoModelForCausalLM from any accepted spelling; a PEFT adapter folder is loaded onto its base and merged.

    The model's `name_or_path` is set to a spelling that resolves anywhere (the short name, or an absolute path), since
    PEFT records it as `base_model_name_or_path` of adapters trained on top: PPO's LoRA on a merged SFT adapter then
    names the SFT folder as its base, and loading it merges both in turn.
    """
    path = model_path(name_or_path, key)
    if is_adapter_folder(path):
        model = _load_merged_adapter(path, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.name_or_path = model.config._name_or_path = _portable_spelling(name_or_path, path)
    return model


def _portable_spelling(name_or_path: str, path: str) -> str:
    """The short name as given; a .gguf file (not its cache folder, which another machine lacks); else the folder,
    absolute so that it resolves from any working directory."""
    if name_or_path.lower() in SHIPPED_MODELS:
        return name_or_path
    return os.path.abspath(os.path.expanduser(name_or_path if name_or_path.lower().endswith(".gguf") else path))


def _load_merged_adapter(path: str, dtype: torch.dtype):
    """Base model (any accepted spelling, recursively) + the adapter in `path`, merged into plain weights."""
    from peft import PeftModel

    with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as handle:
        base = json.load(handle).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{path}/adapter_config.json: no base_model_name_or_path; cannot load the LoRA adapter")
    model = load_pretrained_causal_lm(base, dtype, key=f"{path}/adapter_config.json base_model_name_or_path")
    return PeftModel.from_pretrained(model, path).merge_and_unload()


def disable_dropout(model: torch.nn.Module) -> None:
    """docs/ppo.md B.10: dropout makes old/new log-probs disagree, so zero every Dropout (LoRA's included)."""
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


def enable_gradient_checkpointing(model: PreTrainedModel, cfg: ModelConfig) -> None:
    """Activation checkpointing per decoder layer when cfg.gradient_checkpointing (only active in train mode)."""
    if cfg.gradient_checkpointing:
        # Non-reentrant: gradients reach LoRA weights inside a layer although its input (from frozen embeddings)
        # does not require grad, so no enable_input_require_grads hook is needed.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def make_trainable(model: PreTrainedModel, cfg: ModelConfig, task_type: str = "CAUSAL_LM") -> PreTrainedModel:
    """A loaded model about to be trained: activation checkpointing, then LoRA adapters, as the config says."""
    enable_gradient_checkpointing(model, cfg)
    return apply_lora(model, cfg, task_type)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
