"""Is bf16 autocast faster than fp32 for training on this machine? A SmolLM2-shaped MLP block (micro-batch 8 x 340
tokens, hidden 576, intermediate 1536: the matmuls that dominate a decoder layer) forward + backward, fp32 against
torch.autocast(bf16), interleaved (order swapped each round), CPU-seconds per 5 passes. What `model.dtype: auto`
decides from (rlagent.common.precision); the full-model check is bench/ppo_precision_ab.py.

    .venv/bin/python bench/bf16_autocast_ab.py            # ~1 CPU-minute
"""

from __future__ import annotations

import statistics

import torch
from lockstep import cpu_seconds
from report import banner, emit, uptime

from rlagent.common.precision import cpu_has_native_bf16

BENCH = "bf16_autocast_ab"


def step(x, w1, w2, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(x, w1)), w2)
    y.float().sum().backward()


def main() -> None:
    banner(f"{BENCH}: SmolLM2-shaped MLP fwd+bwd, fp32 vs bf16 autocast (native bf16: {cpu_has_native_bf16()})")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8 * 340, 576, generator=g, requires_grad=True)
    w1 = torch.randn(1536, 576, generator=g, requires_grad=True)
    w2 = torch.randn(576, 1536, generator=g, requires_grad=True)
    for bf16 in (False, True):  # warm-up (oneDNN kernel selection)
        step(x, w1, w2, bf16)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for round_index in range(6):
        for bf16 in (False, True) if round_index % 2 == 0 else (True, False):
            start = cpu_seconds()
            for _ in range(5):
                step(x, w1, w2, bf16)
            seconds[bf16].append(cpu_seconds() - start)
    fp32, bf16 = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"   fp32 {fp32:.2f} CPU-s, bf16 autocast {bf16:.2f} CPU-s per 5 passes: {fp32 / bf16:.2f}x", flush=True)
    emit(
        BENCH,
        fp32_cpu_s=fp32,
        bf16_cpu_s=bf16,
        speedup=fp32 / bf16,
        native_bf16=cpu_has_native_bf16(),
        uptime=uptime(),
    )


if __name__ == "__main__":
    main()
