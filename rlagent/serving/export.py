"""`rlagent export`: write a policy as a deployable folder and check it against the source.

    rlagent export --policy runs/quickstart/ppo/final --out exports/hf --format hf
    rlagent export --policy runs/quickstart/ppo/final --out exports/onnx-int8 --format onnx --quantize int8

Formats (rlagent.rollout.exported describes the folders): `hf` (LoRA merged, tokenizer with rlagent's fix-ups),
`hf --quantize int8` (torch.ao dynamic INT8 Linear layers), `onnx` (decoder with past for ONNX Runtime, written by
rlagent.serving.onnx_export), `onnx --quantize int8` (ONNX Runtime's dynamic INT8 quantiser).

Self-check: the source (fp32) and the export decode the same prompts greedily (the first test-split prompts of
Calculator-v0 and KBSearch-v0, rendered with the tools); fp32 exports must give the same tokens, INT8 exports must
keep on average >= INT8_TOLERANCE of the source's tokens before their first difference (quantisation noise flips a
near-tie argmax now and then, after which the continuations are unrelated, so an exact match is not expected).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import torch

from rlagent.common.config import ConfigError
from rlagent.rollout.backends import GenerationRequest, SamplingParams
from rlagent.rollout.backends.hf import HFBackend
from rlagent.rollout.exported import EXPORT_INFO, INT8_WEIGHTS, ONNX_FILE, quantize_linear_int8
from rlagent.rollout.policies import load_eval_model, load_export_backend
from rlagent.serving.onnx_export import export_onnx, quantize_onnx_int8

FORMATS = ("hf", "onnx")
INT8_TOLERANCE = 0.5  # mean fraction of the source's greedy tokens an INT8 export reproduces before diverging
CHECK_PROMPTS = 2  # per environment
CHECK_TOKENS = 24


def export_policy(policy: str, out: str, fmt: str = "hf", quantize: str | None = None) -> dict:
    """Write `policy` (any --policy spec) to the folder `out` and return its rlagent_export.json content, which
    includes the size on disk and the self-check."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize: unknown scheme {quantize!r} (known: int8)")
    if os.path.exists(out) and os.listdir(out):
        raise ConfigError(f"--out '{out}' exists and is not empty; choose a new folder")
    model, tokenizer = load_eval_model(policy)
    model = model.float().cpu().eval()
    os.makedirs(out, exist_ok=True)
    started = time.time()
    write_weights(model, tokenizer, out, fmt, quantize)
    info = {
        "format": fmt,
        "quantize": quantize,
        "source": policy,
        "torch_dtype": "float32",
        "num_layers": model.config.num_hidden_layers,
        "export_seconds": round(time.time() - started, 2),
    }
    write_info(out, info)
    info["self_check"] = self_check(model, tokenizer, out, info)
    info["size_bytes"] = folder_size(out)
    write_info(out, info)
    return info


def write_weights(model, tokenizer, out: str, fmt: str, quantize: str | None) -> None:
    """Tokenizer and config always; then the weights in the chosen format."""
    tokenizer.save_pretrained(out)
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    if fmt == "hf" and quantize is None:
        model.save_pretrained(out)
    elif fmt == "hf":
        quantized = quantize_linear_int8(_copy(model))
        torch.save(quantized.state_dict(), os.path.join(out, INT8_WEIGHTS))
    elif quantize is None:
        export_onnx(_copy(model), os.path.join(out, ONNX_FILE))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            export_onnx(_copy(model), os.path.join(scratch, ONNX_FILE))
            quantize_onnx_int8(os.path.join(scratch, ONNX_FILE), os.path.join(out, ONNX_FILE))


def _copy(model):
    """A deep copy, so exporting (eager attention) or quantising never changes the model the self-check uses."""
    import copy

    return copy.deepcopy(model)


def write_info(out: str, info: dict) -> None:
    with open(os.path.join(out, EXPORT_INFO), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)


def folder_size(path: str) -> int:
    """Bytes of every file under `path` but rlagent_export.json (which records this number)."""
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files if f != EXPORT_INFO
    )


def check_prompts(tokenizer, per_env: int = CHECK_PROMPTS) -> list[list[int]]:
    """Token ids of the first test-split prompts of each built-in environment, rendered with their tools."""
    import gymnasium as gym

    import envs
    from rlagent.common.chat import encode

    prompts = []
    for env_id in envs.ENV_IDS[:2]:
        env = gym.make(env_id, split="test")
        for seed in range(per_env):
            info = env.reset(seed=seed)[1]
            text = tokenizer.apply_chat_template(
                info["messages"], tools=info.get("tools"), tokenize=False, add_generation_prompt=True
            )
            prompts.append(encode(tokenizer, text))
    return prompts


def greedy_tokens(backend, prompts: list[list[int]], eos_id: int, max_new_tokens: int = CHECK_TOKENS) -> list:
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_ids=(eos_id,), greedy=True)
    outputs = backend.generate([GenerationRequest(i, p) for i, p in enumerate(prompts)], params)
    return [out.token_ids for out in outputs]


def self_check(model, tokenizer, out: str, info: dict) -> dict:
    """Greedy tokens of the source vs the export on the check prompts; raises when an fp32 export differs."""
    prompts = check_prompts(tokenizer)
    eos = tokenizer.eos_token_id
    source = greedy_tokens(HFBackend(model, tokenizer.pad_token_id, None, prefix_cache=False), prompts, eos)
    if info["format"] == "hf" and info["quantize"] is None:
        reloaded = load_eval_model(out)[0].float().cpu()
        exported = HFBackend(reloaded, tokenizer.pad_token_id, None, prefix_cache=False)
    else:
        exported = load_export_backend(out, info, tokenizer)
    copies = greedy_tokens(exported, prompts, eos)
    agreement = [common_prefix(a, b) / max(len(a), 1) for a, b in zip(source, copies)]
    result = {
        "prompts": len(prompts),
        "max_new_tokens": CHECK_TOKENS,
        "identical": sum(a == b for a, b in zip(source, copies)),
        "mean_prefix_agreement": round(sum(agreement) / len(agreement), 4),
    }
    result["tolerance"] = "identical greedy tokens" if info["quantize"] is None else f">= {INT8_TOLERANCE} agreement"
    result["passed"] = (
        (result["identical"] == len(prompts))
        if info["quantize"] is None
        else (result["mean_prefix_agreement"] >= INT8_TOLERANCE)
    )
    return result


def common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
