"""Atomic, resumable checkpoints (OUTPUT_DIR/checkpoints/step-N/) and the final model folder, for every stage."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import shutil
import sys

import numpy as np
import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from rlagent.common.config import ConfigError
from rlagent.training.guards import assert_finite

CHECKPOINT_RE = re.compile(r"step-(\d+)$")

# Checkpoints: OUTPUT_DIR/checkpoints/step-N/, written to a temporary folder and renamed, so a kill at any moment
# leaves either the previous checkpoint or the complete new one.


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


MANIFEST = "MANIFEST.json"


def write_manifest(folder: str) -> None:
    """MANIFEST.json: size and SHA-256 of every file in the checkpoint, written before COMPLETE so a resume can tell
    a checkpoint that was truncated or corrupted after the fact (disk full, a bad copy) from an intact one."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump({"files": files}, handle, indent=1, sort_keys=True)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_problem(path: str) -> str | None:
    """Why checkpoint folder `path` cannot be resumed from (one phrase naming the file), or None if it is intact.
    A checkpoint written before manifests existed is trusted if its COMPLETE marker is there."""
    if not os.path.isdir(path):
        return "no such folder"
    if not os.path.isfile(os.path.join(path, "COMPLETE")):
        return "not a complete checkpoint (no COMPLETE marker)"
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest):
        return None if os.path.isfile(os.path.join(path, "training_state.pt")) else "training_state.pt is missing"
    try:
        with open(manifest, encoding="utf-8") as handle:
            files = json.load(handle)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, entry in sorted(files.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != entry["size"]:
            return f"{name} has {os.path.getsize(file)} bytes, the manifest says {entry['size']}"
        if _sha256(file) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def latest_checkpoint(output_dir: str) -> str | None:
    """Path of the newest intact step-N checkpoint, or None. A damaged newer one is skipped with a warning line
    saying which and why, so a resume falls back to the newest checkpoint that can actually be loaded."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "checkpoints", "step-*")):
        match = CHECKPOINT_RE.search(path)
        if match and os.path.isfile(os.path.join(path, "COMPLETE")):
            found.append((int(match.group(1)), path))
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print(f"rlagent: warning: skipping checkpoint {path}: {problem}", file=sys.stderr, flush=True)
    return None


def resolve_resume(resume_from: str | None, output_dir: str) -> str | None:
    """'auto' = the newest intact checkpoint in output_dir if any; a path must be an intact checkpoint (else a
    ConfigError naming it); None/'' = start fresh."""
    if not resume_from:
        return None
    if resume_from == "auto":
        return latest_checkpoint(output_dir)
    problem = checkpoint_problem(resume_from)
    if problem is not None:
        raise ConfigError(f"resume_from='{resume_from}': {problem} (resume_from=auto picks the newest intact one)")
    return resume_from


def check_resume_from(resume_from: str | None) -> None:
    """An explicit resume_from path must be an intact checkpoint: checked before any data or model is built."""
    if resume_from and resume_from != "auto":
        resolve_resume(resume_from, "")


def save_model(model, folder: str, state_dict: dict | None = None) -> None:
    """save_pretrained (safetensors). A LoRA model whose base is a short name (smollm2-135m-instruct), not a folder:
    PEFT's save_embedding_layers='auto' would look that name up on the Hugging Face Hub (rlagent never goes online;
    offline it warns and saves no embeddings), so say False, which is what it ends up doing."""
    kwargs = {}
    base = getattr(getattr(model, "peft_config", {}).get("default"), "base_model_name_or_path", None)
    if base and not os.path.isdir(base):
        kwargs["save_embedding_layers"] = False
    if state_dict is not None:
        kwargs["state_dict"] = state_dict
    model.save_pretrained(folder, safe_serialization=True, **kwargs)


# FSDP: every process holds a slice of each weight and of its optimiser state. Saving gathers the full tensors (a
# collective every rank joins; rank 0 receives them), so a checkpoint or final/ is the same file whatever the number
# of processes, and loads in plain transformers. Resuming hands each rank its slice again. With the launcher's
# `fsdp_state_dict_type: SHARDED_STATE_DICT` a checkpoint's models are instead written by every rank, each its own
# slices (torch.distributed.checkpoint): nothing is gathered, which is what keeps saving a model too large for one
# process possible. final/ is always gathered.

SHARDS_INDEX = ".metadata"  # torch.distributed.checkpoint's index of every rank's files


def is_sharded(accelerator) -> bool:
    return accelerator.distributed_type == "FSDP"


def saves_shards(accelerator) -> bool:
    """FSDP with `fsdp_state_dict_type: SHARDED_STATE_DICT`: checkpoints hold each rank's slices of the models."""
    if not is_sharded(accelerator):
        return False
    kind = accelerator.state.fsdp_plugin.state_dict_type
    return getattr(kind, "name", str(kind)) == "SHARDED_STATE_DICT"


def save_shards(model, folder: str) -> None:
    """Every rank writes its slices of `model`'s state dict into `folder` (a collective: all ranks call it)."""
    import torch.distributed.checkpoint as dcp

    os.makedirs(folder, exist_ok=True)
    dcp.save(model.state_dict(), checkpoint_id=folder)


def load_shards(model, folder: str) -> None:
    """The inverse of save_shards: each rank reads the slices its DTensors hold (a collective too)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    state = model.state_dict()
    try:
        dcp.load(state, checkpoint_id=folder)
    except CheckpointException as err:  # a BaseException: load_checkpoint would not turn it into a ConfigError
        raise RuntimeError(f"{folder}: {err}") from None
    model.load_state_dict(state)


def full_state_dicts(accelerator, models: dict) -> dict:
    """name -> the full state dict (rank 0) under FSDP, name -> None otherwise (save_pretrained reads the module)."""
    return {name: accelerator.get_state_dict(m) if is_sharded(accelerator) else None for name, m in models.items()}


def optimizer_state(accelerator, optimizer) -> dict:
    """optimizer.state_dict(); under FSDP this rank's slices as plain tensors (save_checkpoint writes one file per
    rank, so a resume needs the same number of processes)."""
    state = optimizer.state_dict()
    if is_sharded(accelerator):
        state["state"] = {
            index: {key: value.to_local() if isinstance(value, DTensor) else value for key, value in slot.items()}
            for index, slot in state["state"].items()
        }
    return state


def load_optimizer_state(accelerator, optimizer, saved: dict) -> None:
    """The inverse of optimizer_state: under FSDP the saved slices become DTensors shaped like their parameters."""
    if is_sharded(accelerator):
        params = [param for group in optimizer.param_groups for param in group["params"]]
        saved["state"] = {
            index: {key: _like(params[index], value) for key, value in slot.items()}
            for index, slot in saved["state"].items()
        }
    optimizer.load_state_dict(saved)


def _like(param, value):
    """`value` (a slice saved by this rank) as a DTensor laid out like `param`; scalars (AdamW's step) stay as is.
    The global shape is the parameter's: a dimension the ranks split unevenly (a 1-row score head over 2 ranks holds
    1 and 0 rows) would otherwise be taken as world size x this rank's rows."""
    if isinstance(param, DTensor) and torch.is_tensor(value) and value.dim() > 0:
        return DTensor.from_local(
            value, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
        )
    return value


def _shard_weights(model, weights: dict) -> dict:
    """Full tensors from a checkpoint as DTensors where the (FSDP) model holds DTensors; every rank loads the same
    file, so each keeps its own slice."""
    own = model.state_dict()
    return {
        key: distribute_tensor(value, own[key].device_mesh, own[key].placements)
        if isinstance(own.get(key), DTensor)
        else value
        for key, value in weights.items()
    }


def save_checkpoint(accelerator, output_dir: str, step: int, models: dict, state: dict, keep: int = 2) -> str:
    """Atomically save `models` (name -> module, HF save_pretrained) plus `state` (optimizer etc.) as step-N."""
    final = os.path.join(output_dir, "checkpoints", f"step-{step}")
    tmp = final + ".tmp"
    assert_finite({name: accelerator.unwrap_model(model) for name, model in models.items()}, final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    # Each rank keeps its own RNG stream (seed + rank), so each saves it; under FSDP its optimiser slices too.
    torch.save(rng_state(), os.path.join(tmp, f"rng_rank{accelerator.process_index}.pt"))
    if is_sharded(accelerator):
        state = dict(state)
        torch.save(state.pop("optimizer"), os.path.join(tmp, f"optimizer_rank{accelerator.process_index}.pt"))
    shards = saves_shards(accelerator)
    if shards:  # every rank writes its own slices; nothing is gathered
        for name, model in models.items():
            save_shards(accelerator.unwrap_model(model), os.path.join(tmp, name))
    else:
        full = full_state_dicts(accelerator, models)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, model in models.items() if not shards else ():
            save_model(accelerator.unwrap_model(model), os.path.join(tmp, name), full[name])
        torch.save(state, os.path.join(tmp, "training_state.pt"))
        write_manifest(tmp)
        open(os.path.join(tmp, "COMPLETE"), "w").close()
        _remove_checkpoint(final)  # only there when a step is saved again (resume from an explicit earlier path)
        os.replace(tmp, final)
        _prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def _prune_checkpoints(output_dir: str, keep: int) -> None:
    paths = glob.glob(os.path.join(output_dir, "checkpoints", "step-*"))
    steps = sorted((int(m.group(1)), p) for p in paths if (m := CHECKPOINT_RE.search(p)))
    for _, path in steps[:-keep] if keep > 0 else []:
        _remove_checkpoint(path)


def _remove_checkpoint(path: str) -> None:
    """Delete a step-N folder, its COMPLETE marker first: rmtree removes files in directory order, so a kill half-way
    through could otherwise leave a folder that still says COMPLETE but has lost its weights or optimiser state."""
    try:
        os.remove(os.path.join(path, "COMPLETE"))
    except FileNotFoundError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: str, models: dict, rank: int) -> dict:
    """Load weights into `models` (unwrapped modules), restore this rank's RNG, and return the saved state.
    A file that cannot be read (truncated, not a checkpoint of this model) is a ConfigError naming the folder."""
    try:
        return _load_checkpoint_files(path, models, rank)
    except (OSError, EOFError, RuntimeError, ValueError, KeyError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(f"checkpoint {path} cannot be loaded: {reason}") from None


def _load_checkpoint_files(path: str, models: dict, rank: int) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for name, model in models.items():
        folder = os.path.join(path, name)
        if os.path.isfile(os.path.join(folder, SHARDS_INDEX)):
            load_shards(model, folder)
            continue
        weights = {}
        for file in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
            try:
                weights.update(load_file(file))
            except SafetensorError as err:
                raise ValueError(f"{file}: {err}") from None
        if hasattr(model, "peft_config"):  # PEFT saved only the adapters (and modules_to_save, e.g. a score head)
            from peft import set_peft_model_state_dict

            unexpected = set_peft_model_state_dict(model, weights).unexpected_keys
            if unexpected:
                raise RuntimeError(f"{folder}: adapter checkpoint does not match the model ({unexpected[:3]})")
        elif hasattr(model, "load_adapter_weights"):
            model.load_adapter_weights(weights)
        else:
            missing, unexpected = model.load_state_dict(_shard_weights(model, weights), strict=False)
            # Tied embeddings are saved once; anything else missing means the checkpoint does not match.
            missing = [k for k in missing if "lm_head" not in k]
            if missing or unexpected:
                raise RuntimeError(
                    f"{folder}: checkpoint does not match the model (missing={missing[:3]}, "
                    f"unexpected={unexpected[:3]})"
                )
    state = torch.load(os.path.join(path, "training_state.pt"), weights_only=False)
    optimizer_file = os.path.join(path, f"optimizer_rank{rank}.pt")
    if os.path.isfile(optimizer_file):
        state["optimizer"] = torch.load(optimizer_file, weights_only=False)
    rng_file = os.path.join(path, f"rng_rank{rank}.pt")
    if os.path.isfile(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def save_final(accelerator, model, tokenizer, folder: str, extra_files: dict | None = None) -> None:
    """Write OUTPUT_DIR/final in Hugging Face format with its tokenizer, atomically (temp folder + rename)."""
    full = full_state_dicts(accelerator, {"model": model})["model"]
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    assert_finite({"the model": full if full is not None else accelerator.unwrap_model(model)}, folder)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(accelerator.unwrap_model(model), tmp, full)
    tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
