"""Exported policies (`rlagent export`): what an export folder holds and how the rollout side loads one.

An export folder has `rlagent_export.json` (format, quantisation, source, layer shapes) beside its tokenizer:
- `hf`: a plain Hugging Face folder (LoRA merged, tokenizer with rlagent's fix-ups); loads like any model folder;
- `hf` + `int8`: config + tokenizer + `model_int8.pt`, the state dict of the model after torch.ao dynamic INT8
  quantisation of every nn.Linear (transformers cannot load that layout itself, so it is rebuilt here);
- `onnx` (optionally `int8`): `model.onnx`, a decoder with past keys/values, run with ONNX Runtime through the
  generation backend rlagent.rollout.backends.onnx.

This is a rollout module: `rlagent eval`, `rlagent rollout` and the server load exports through it.
"""

from __future__ import annotations

import json
import os

import torch

EXPORT_INFO = "rlagent_export.json"
INT8_WEIGHTS = "model_int8.pt"
ONNX_FILE = "model.onnx"


def export_info(path: str) -> dict | None:
    """The export's metadata when `path` is a folder `rlagent export` wrote, else None."""
    file = os.path.join(os.path.expanduser(path), EXPORT_INFO) if isinstance(path, str) else ""
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)


def needs_custom_loader(info: dict | None) -> bool:
    """True for exports that are not plain HF weights (ONNX, or INT8 torch modules)."""
    return info is not None and (info["format"] == "onnx" or info.get("quantize") == "int8")


def quantize_linear_int8(model: torch.nn.Module) -> torch.nn.Module:
    """torch.ao dynamic INT8 quantisation of every nn.Linear (weights int8 per tensor, activations quantised on the
    fly per batch); embeddings and norms stay fp32. CPU only: the quantised kernels are fbgemm/qnnpack.
    torch.ao.quantization still works in torch 2.13 but warns that it is deprecated (torchao succeeds it)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model.float().cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def load_int8_hf(path: str):
    """The torch INT8 model of an `hf --quantize int8` export: built from config.json, quantised the same way, then
    filled with the saved state dict."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model = quantize_linear_int8(AutoModelForCausalLM.from_config(config, dtype=torch.float32))
    # weights_only=False: the packed INT8 params are pickled objects; the file is one `rlagent export` wrote locally.
    state = torch.load(os.path.join(path, INT8_WEIGHTS), map_location="cpu", weights_only=False)
    model.load_state_dict(state)
    return model.eval()
