"""ONNX export of a causal LM as ONE decoder-with-past graph, written with `torch.onnx.export` (no optimum).

Why not optimum: the ONNX exporter now lives in `optimum-onnx`, whose releases pin transformers < 4.58; rlagent runs
on transformers 5.x, so installing it would downgrade transformers. The graph here is what optimum's "decoder with
past, merged" model computes, for Llama-family decoders (the tiny default, SmolLM2, Qwen2):

    inputs : input_ids (B, S) int64, attention_mask (B, P+S) int64, position_ids (B, S) int64,
             past_key_<i>, past_value_<i> (B, kv_heads, P, head_dim) float32 for every layer i
    outputs: logits (B, 1, V) float32 (last position), present_key_<i>, present_value_<i> (B, kv_heads, P+S, head_dim)

The first step feeds P = 0 (empty past); every later step feeds the presents of the previous one.
"""

from __future__ import annotations

import os

import torch
from transformers import DynamicCache

OPSET = 17


class DecoderWithPast(torch.nn.Module):
    """Wraps an HF causal LM so that its key/value cache is plain tensors in and out (what an ONNX graph can take).

    The 4-D additive attention mask is built here from the 2-D padding mask, so the traced graph does not depend on
    transformers' mask helpers (which branch on shapes in Python and would bake the example's shapes in).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache(config=self.model.config)
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        mask = additive_causal_mask(attention_mask, input_ids.shape[1])
        # logits of the last position only: generation needs no more, and (B, S, V) at prefill is ~50 MB a row
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def additive_causal_mask(attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """(B, 1, S, P+S) float mask: 0 where query i (at key position P+i) may attend key j, a large negative value
    where j is padding or in its future. Shape: attention_mask (B, P+S) of 0/1."""
    total = attention_mask.shape[1]
    keys = torch.arange(total, device=attention_mask.device)
    queries = torch.arange(query_length, device=attention_mask.device) + (total - query_length)
    allowed = (keys[None, :] <= queries[:, None])[None, None] & attention_mask[:, None, None, :].bool()
    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)


def kv_shape(config) -> tuple[int, int]:
    """(key/value heads, head dim) of a Llama-family config."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return heads, head_dim


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of the graph, in order."""
    past = [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def export_onnx(model, out_file: str) -> None:
    """Trace `model` (fp32, CPU, eager attention) through DecoderWithPast into `out_file` with dynamic batch,
    sequence and past lengths. Weights go to external data beside it when the graph would pass protobuf's 2 GB."""
    model = model.float().cpu().eval()
    model.config._attn_implementation = "eager"  # sdpa's mask fast paths branch on shapes; eager traces cleanly
    config, layers = model.config, model.config.num_hidden_layers
    heads, head_dim = kv_shape(config)
    batch, seq, past_len = 2, 3, 4  # example shapes: all dynamic in the graph
    past = [torch.zeros(batch, heads, past_len, head_dim) for _ in range(2 * layers)]
    inputs = (
        torch.ones(batch, seq, dtype=torch.long),
        torch.ones(batch, past_len + seq, dtype=torch.long),
        torch.arange(past_len, past_len + seq).repeat(batch, 1),
        *past,
    )
    names_in, names_out = io_names(layers)
    dynamic = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "seq"},
        "logits": {0: "batch"},
    }
    dynamic.update({name: {0: "batch", 2: "past"} for name in names_in[3:]})
    dynamic.update({name: {0: "batch", 2: "total"} for name in names_out[1:]})
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            DecoderWithPast(model),
            inputs,
            out_file,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def quantize_onnx_int8(source: str, target: str) -> None:
    """ONNX Runtime's dynamic INT8 quantisation (weights int8 per channel; activations quantised at run time) of
    every MatMul and of the embedding Gather (SmolLM2's embedding is a fifth of its weights, and the export holds it
    twice: the Gather's table and the tied head's transposed copy); norms stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["MatMul", "Gather"]
    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=ops)
