"""rlagent.common.precision: `auto` follows the hardware probes; named dtypes map one to one."""

import pytest
import torch

from rlagent.common import precision


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
