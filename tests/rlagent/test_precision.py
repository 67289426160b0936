"""rlagent.common.precision: `auto` follows the hardware probes; named dtypes map one to one."""

import copy

import pytest
import torch

from rlagent.common import precision
from rlagent.training.ppo_models import forward_policy
from rlagent.training.setup import make_accelerator
from tests.rlagent.smollm2 import require_smollm2, smollm2_truncated
from tests.rlagent.test_output_head import batch, tiny_policy


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_probe(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.pick_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)


def test_named_dtypes_ignore_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert precision.pick_dtype("float32", "cpu") == torch.float32
    assert precision.pick_dtype("float16", "cpu") == torch.float16


def test_cuda_without_a_gpu_is_not_native(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.native_bf16("cuda") is False


# ---- model.dtype: auto = fp32 master weights + bf16 autocast where the probe says bf16 is native


@pytest.mark.parametrize("native", [True, False])
def test_auto_keeps_fp32_weights_and_autocasts_only_where_native(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.weight_dtype("auto") == torch.float32
    assert precision.mixed_precision_mode("auto", "cpu") == ("bf16" if native else "no")
    assert precision.pick_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    # Explicit names never autocast: float32 = plain fp32, bfloat16 = bf16 weights.
    assert precision.mixed_precision_mode("float32", "cpu") == "no"
    assert precision.mixed_precision_mode("bfloat16", "cpu") == "no"
    assert precision.weight_dtype("bfloat16") == torch.bfloat16


def _prepared_policy(monkeypatch, native: bool, model=None):
    """The tiny policy (or `model`; fp32 weights) prepared by make_accelerator('auto') with the bf16 probe forced to
    `native`, plus the dtypes its q_proj matmuls produced (recorded by a forward hook)."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    accelerator = make_accelerator("auto")
    model = model if model is not None else tiny_policy()
    seen = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return accelerator, accelerator.prepare(model), seen


@pytest.mark.parametrize("native", [True, False])
def test_auto_runs_the_matmuls_in_bf16_exactly_when_the_probe_says_so(monkeypatch, native):
    accelerator, model, seen = _prepared_policy(monkeypatch, native)
    ids, attention, mask = batch()
    logp, entropy = forward_policy(model, ids, attention, 1.0, mask)
    assert accelerator.mixed_precision == ("bf16" if native else "no")
    assert seen == [torch.bfloat16 if native else torch.float32]  # no silent fallback to fp32 (or to bf16)
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32
    assert logp.dtype == entropy.dtype == torch.float32  # log-softmax and entropy in fp32


def test_bf16_autocast_logprobs_and_loss_match_fp32(monkeypatch):
    """Same weights, same batch: log-probs under bf16 autocast within 0.05 nats of fp32 (bf16 keeps 8 mantissa bits,
    ~0.4 % relative rounding per matmul input; measured max ~4e-4 on the tiny model); the summed loss within 1 %."""
    ids, attention, mask = batch()
    _, model, _ = _prepared_policy(monkeypatch, True)
    logp16, _ = forward_policy(model, ids, attention, 1.0, mask)
    _, model32, _ = _prepared_policy(monkeypatch, False)
    model32.load_state_dict(model.state_dict())
    logp32, _ = forward_policy(model32, ids, attention, 1.0, mask)
    assert (logp16 - logp32).abs().max() < 0.05
    loss16, loss32 = -(logp16 * mask).sum(), -(logp32 * mask).sum()
    assert abs(float(loss16 - loss32)) < 0.01 * abs(float(loss32.detach()))
    assert (logp16 != logp32).any()  # the bf16 path really ran (it cannot be bit-identical)


def test_a_launcher_mixed_precision_that_disagrees_is_overridden_with_a_warning(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.warns(UserWarning, match="mixed_precision=bf16 ignored: model.dtype=float32"):
        accelerator = make_accelerator("float32")
    assert accelerator.mixed_precision == "no"


def test_bf16_autocast_sft_loss_matches_fp32_on_truncated_smollm2(monkeypatch, tmp_path_factory):
    """The real vocabulary (49,152) and widths: the SFT token loss under bf16 autocast within 1 % of fp32, the
    log-probs within 0.05 nats on average and 0.5 at worst (random tokens are the worst case: the hidden state's
    bf16 rounding moves logits of magnitude ~20); the head itself stays fp32, applied outside the autocast forward."""
    require_smollm2()
    from transformers import AutoModelForCausalLM

    folder = smollm2_truncated(str(tmp_path_factory.getbasetemp() / "smollm2-1layer"))
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    attention, mask = torch.ones_like(ids), torch.ones_like(ids)
    _, bf16_model, seen = _prepared_policy(monkeypatch, True, copy.deepcopy(model))
    with torch.no_grad():
        logp16, _ = forward_policy(bf16_model, ids, attention, 1.0, mask)
    _, fp32_model, seen32 = _prepared_policy(monkeypatch, False, model)
    with torch.no_grad():
        logp32, _ = forward_policy(fp32_model, ids, attention, 1.0, mask)
    assert seen == [torch.bfloat16] and seen32 == [torch.float32] and logp16.dtype == torch.float32
    error = (logp16 - logp32).abs()[:, 1:]  # position 0 is never scored
    assert error.mean() < 0.05 and error.max() < 0.5  # measured: mean ~0.03, max ~0.24 nats on random tokens
    assert abs(float(logp16.sum() - logp32.sum())) < 0.01 * abs(float(logp32.sum()))
