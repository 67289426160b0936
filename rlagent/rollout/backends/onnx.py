"""The ONNX Runtime generation backend: batched decode of an `rlagent export --format onnx` graph (decoder with past).

Each call left-pads the requests into one batch, prefills them with an empty past, then feeds one token per row per
step with the previous step's present keys/values; rows that finish leave the batch. It keeps no state between calls
(no per-sequence or shared-prefix cache: an exported model serves independent requests). Sampling and log-probs are
the HF backend's (rlagent.rollout.backends.hf.sample), so both backends draw from the same distribution.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from rlagent.rollout.backends.base import GenerationOutput, GenerationRequest, SamplingParams
from rlagent.rollout.backends.hf import sample


class OnnxBackend:
    """Samples from an ONNX decoder-with-past graph (inputs/outputs named as rlagent.serving.onnx_export writes)."""

    name = "onnx"

    def __init__(self, onnx_file: str, pad_id: int, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
        self.session = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
        self.pad_id = pad_id
        inputs = self.session.get_inputs()
        self.past_names = [i.name for i in inputs if i.name.startswith("past_")]
        first = next(i for i in inputs if i.name.startswith("past_key"))
        self.kv_heads, self.head_dim = first.shape[1], first.shape[3]
        self.model = None  # no torch module: ModelPolicy.model is None for this backend
        self.reuse_cache = False

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]:
        sequences = [list(r.token_ids) for r in requests]
        width = max(len(s) for s in sequences)
        ids = np.array([[self.pad_id] * (width - len(s)) + s for s in sequences], dtype=np.int64)
        mask = np.array([[0] * (width - len(s)) + [1] * len(s) for s in sequences], dtype=np.int64)
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        empty = np.zeros((len(sequences), self.kv_heads, 0, self.head_dim), dtype=np.float32)
        past = [empty] * len(self.past_names)
        outputs = [GenerationOutput([], []) for _ in requests]
        rows, stop = list(range(len(requests))), set(params.stop_ids)
        while True:
            logits, past = self._step(ids, mask, positions, past)
            tokens, logprobs = sample(torch.from_numpy(logits[:, -1]), params)
            keep = []
            for row, (token, logprob) in enumerate(zip(tokens.tolist(), logprobs.tolist())):
                out = outputs[rows[row]]
                out.token_ids.append(token)
                out.logprobs.append(logprob)
                if token not in stop and len(out.token_ids) < params.max_new_tokens:
                    keep.append(row)
            if not keep:
                return outputs
            tokens = tokens.numpy()
            ids, positions = tokens[keep][:, None], positions[keep][:, -1:] + 1
            mask = np.concatenate([mask[keep], np.ones((len(keep), 1), dtype=np.int64)], axis=1)
            past, rows = [p[keep] for p in past], [rows[row] for row in keep]

    def _step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[np.ndarray]):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feed.update(zip(self.past_names, past))
        logits, *present = self.session.run(None, feed)
        return logits, present

    def sync_weights(self, model) -> None:
        raise NotImplementedError("the ONNX backend serves a fixed exported graph; export again to change weights")

    def release(self) -> None:
        """Nothing to forget: no state is kept between calls."""
