"""Which floating-point formats the hardware computes natively, so `dtype: auto` can pick bf16 where it is free.

bf16 halves memory traffic; it is only a speed-up where the hardware has bf16 arithmetic: CUDA GPUs of compute
capability 8.0+ (torch.cuda.is_bf16_supported) and x86 CPUs with AVX512-BF16 or AMX (oneDNN then runs bf16
matmuls natively). Elsewhere torch emulates bf16 through fp32 and it is slower than fp32, so `auto` stays fp32.
"""

from __future__ import annotations

import functools

import torch

NAMED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this x86 CPU (torch's own probes; False on other architectures or older torch)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 matmuls run natively on `device` (a CUDA GPU that supports bf16, or a bf16-capable CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def pick_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """A config's dtype name to a torch dtype: 'auto' = bf16 where `device` computes it natively, else fp32."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return NAMED_DTYPES[name]


def weight_dtype(name: str) -> torch.dtype:
    """The dtype weights are loaded in: fp32 master weights for 'auto' (bf16, where used, comes from autocast);
    an explicit name is taken literally ('bfloat16' = bf16 weights and bf16 optimizer updates, the pre-autocast
    meaning)."""
    return torch.float32 if name == "auto" else NAMED_DTYPES[name]


def training_autocast(name: str, device: torch.device | str) -> bool:
    """Whether training forwards/backwards run under bf16 autocast: 'auto' on a device with native bf16 (measured
    faster on GPUs and on this project's AVX512-BF16 CPU; README "Speed and memory at a real vocabulary")."""
    return name == "auto" and native_bf16(device)


def mixed_precision_mode(name: str, device: torch.device | str) -> str:
    """accelerate's `mixed_precision` for a model.dtype: 'bf16' when training autocasts, else 'no'."""
    return "bf16" if training_autocast(name, device) else "no"
