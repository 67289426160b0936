"""`rlagent export`: every format loads back and decodes like its source (exactly in fp32, within the stated INT8
tolerance), `rlagent eval` takes any export, and the self-check does fail on a model that is not the source."""

import json
import os

import numpy as np
import pytest
import torch

from rlagent.common.config import ConfigError
from rlagent.rollout.backends.hf import HFBackend
from rlagent.rollout.backends.onnx import OnnxBackend
from rlagent.rollout.exported import export_info
from rlagent.rollout.policies import load_eval_model
from rlagent.serving.export import INT8_TOLERANCE, check_prompts, export_policy, greedy_tokens, self_check
from rlagent.serving.onnx_export import io_names, kv_shape
from tests.conftest import run_cli

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def source():
    model, tokenizer = load_eval_model("tiny")
    return model.float().cpu().eval(), tokenizer


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "onnx")
    return out, export_policy("tiny", out, "onnx")


def test_onnx_export_matches_torch_logits_and_greedy_tokens(source, onnx_export):
    model, tokenizer = source
    out, info = onnx_export
    assert info["self_check"]["passed"] and info["self_check"]["identical"] == info["self_check"]["prompts"] == 4
    files = [f for f in os.listdir(out) if f != "rlagent_export.json"]
    assert info["size_bytes"] == sum(os.path.getsize(os.path.join(out, f)) for f in files)
    # independently of the self-check: last-position logits of a left-padded batch with an empty past, then one
    # cached step, against the torch model on the same inputs
    backend = OnnxBackend(os.path.join(out, "model.onnx"), tokenizer.pad_token_id)
    ids = torch.tensor([[5, 6, 7, 8, 9], [tokenizer.pad_token_id, tokenizer.pad_token_id, 3, 4, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    heads, head_dim = kv_shape(model.config)
    empty = [np.zeros((2, heads, 0, head_dim), np.float32)] * (2 * model.config.num_hidden_layers)
    logits, present = backend._step(ids.numpy(), mask.numpy(), positions.numpy(), empty)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    assert np.abs(logits[:, -1] - reference.numpy()).max() < 1e-4
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    logits, _ = backend._step(np.array([[11], [12]]), step_mask.numpy(), np.array([[5], [3]]), present)
    with torch.no_grad():
        full = torch.cat([ids, torch.tensor([[11], [12]])], 1)
        reference = model(
            input_ids=full, attention_mask=step_mask, position_ids=(step_mask.cumsum(-1) - 1).clamp(min=0)
        )
    assert np.abs(logits[:, -1] - reference.logits[:, -1].numpy()).max() < 1e-4
    assert len(io_names(model.config.num_hidden_layers)[0]) == 3 + 2 * model.config.num_hidden_layers
    prompts = check_prompts(tokenizer, per_env=1)
    torch_tokens = greedy_tokens(HFBackend(model, tokenizer.pad_token_id, None, prefix_cache=False), prompts,
                                 tokenizer.eos_token_id, 12)  # fmt: skip
    assert greedy_tokens(backend, prompts, tokenizer.eos_token_id, 12) == torch_tokens


def test_the_self_check_fails_on_a_different_model(onnx_export):
    out, info = onnx_export
    other, tokenizer = load_eval_model("tiny", seed=1)  # same architecture, other weights
    check = self_check(other.float().cpu(), tokenizer, out, {"format": "onnx", "quantize": None})
    assert not check["passed"] and check["identical"] < check["prompts"]


def test_an_onnx_export_is_not_a_torch_model(onnx_export):
    with pytest.raises(ConfigError, match="onnx export"):
        load_eval_model(onnx_export[0])


def test_eval_takes_an_export_folder(onnx_export, tmp_path):
    from rlagent.cli.evaluate import main as evaluate

    out, _ = onnx_export
    result = evaluate(["--policy", out, "--env", "rlagent/Calculator-v0", "--episodes", "2", "--max-new-tokens", "8",
                       "--out", str(tmp_path / "eval.json")])  # fmt: skip
    assert result["episodes"] == 2 and result["policy"] == out
    assert json.loads((tmp_path / "eval.json").read_text())["episodes"] == 2


@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_int8_exports_are_smaller_and_within_the_stated_tolerance_bookkeeping(fmt, tmp_path):
    out = str(tmp_path / f"{fmt}-int8")
    info = export_policy("tiny", out, fmt, "int8")
    assert export_info(out)["quantize"] == "int8"
    check = info["self_check"]
    assert check["tolerance"] == f">= {INT8_TOLERANCE} agreement"
    assert check["passed"] == (check["mean_prefix_agreement"] >= INT8_TOLERANCE)
    # the tiny model's weights are 2-D matrices in all but the norms: int8 is well under half of fp32
    weights = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith((".pt", ".onnx")))
    model, _ = load_eval_model("tiny")
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert weights < 0.5 * fp32_bytes


def test_hf_export_is_a_plain_folder_with_identical_greedy_tokens(tmp_path):
    out = str(tmp_path / "hf")
    info = export_policy("tiny", out, "hf")
    assert info["self_check"]["passed"] and info["self_check"]["identical"] == 4
    assert os.path.isfile(os.path.join(out, "model.safetensors")) and os.path.isfile(os.path.join(out, "config.json"))


def test_export_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        export_policy("tiny", str(tmp_path / "full"), "hf")
    with pytest.raises(ConfigError, match="--format"):
        export_policy("tiny", str(tmp_path / "new"), "tflite")
    proc = run_cli("rlagent", "export", "--policy", "no/such/folder", "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
