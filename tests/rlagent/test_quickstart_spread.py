"""The quickstart's SFT stage under two CPU kernel settings (bench/quickstart_spread.py): a different CPU rounds
differently, and the recipe's eval loss must not hinge on that rounding."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "bench", "quickstart_spread.py")
STEPS = 100
# Largest |eval loss difference| allowed between the two settings after STEPS steps. Measured on the 2-core AMD EPYC
# machine (2026-12-05, `python bench/quickstart_spread.py --settings default,avx512 --seeds 0 --steps 100 --episodes 0
# eval_every=50`, the 5000-step recipe with micro-batches of 4): eval loss 0.8189013 / 0.8189062 at step 50 and
# 0.7265246 / 0.7265251 at step 100, a difference of 5e-7; 1e-4 leaves 200x. This covers only the first 100 steps:
# the difference grows over the full stage (FULL_MARGIN).
MARGIN = 1e-4
# The whole 5000-step stage (the shipped recipe), run as the quickstart runs it (its own thread count): over 3 kernel
# settings x 3 seeds (`python bench/quickstart_spread.py`, 2026-12-05) the final eval loss ranged over [0.0791,
# 0.1139], 0.035 wide; default vs avx512 at seed 0 gave 0.1092 vs 0.1017. Two settings must land within that measured
# width, rounded up.
FULL_MARGIN = 0.04


def run_spread(tmp_path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, SCRIPT, "--out", str(tmp_path), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    return json.loads(lines[0][len("RESULT ") :])


@pytest.mark.slow
def test_sft_eval_loss_agrees_across_kernel_settings(tmp_path):
    """ATEN_CPU_CAPABILITY/ONEDNN_MAX_CPU_ISA default (SSE) vs avx512 kernels, seed 0, the quickstart's SFT config
    cut to STEPS steps (its schedule shrinks with it). The curves must differ (else the two settings ran the same
    kernels and this checks nothing) and the final eval losses must agree within MARGIN."""
    args = ["--settings", "default,avx512", "--seeds", "0", "--steps", str(STEPS), "--episodes", "0", "eval_every=50"]
    result = run_spread(tmp_path, *args)
    curves = [cell["eval_loss_curve"] for cell in result["cells"]]
    assert len(curves) == 2 and curves[0] != curves[1], "the two kernel settings gave bit-identical eval losses"
    losses = result["spread"]["eval_loss"]
    assert losses["max"] - losses["min"] <= MARGIN, result["spread"]


@pytest.mark.slow
def test_full_sft_stage_lands_within_the_measured_spread(tmp_path):
    """The shipped SFT recipe end to end under the SSE (default) and avx512 kernels, seed 0, one after the other with
    the quickstart's threads (~16 min idle on 2 cores): the final eval losses differ (the kernels round differently
    over 5000 steps) by no more than FULL_MARGIN, the width measured over the 3 x 3 grid."""
    args = ["--settings", "default,avx512", "--seeds", "0", "--episodes", "0"]
    result = run_spread(tmp_path, *args)
    losses = result["spread"]["eval_loss"]
    assert losses["n"] == 2 and losses["max"] > losses["min"], result["spread"]
    assert losses["max"] - losses["min"] <= FULL_MARGIN, result["spread"]
