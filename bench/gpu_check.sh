#!/usr/bin/env bash
# GPU check of the SmolLM2 track (see bench/gpu_check.py): stages with tokens/s and peak GPU memory, held-out success,
# then PPO under the DDP / ZeRO-2 and SFT under the FSDP accelerate configs (--num_processes 1), then GSM8K with the
# calculator (SFT on expert replays of GSM8K annotations + held-out success; data: --gsm8k PATH, default
# $RLAGENT_GSM8K or a 12-problem fixture). At most 8 minutes on one GPU (9 with the GSM8K stage).
#   bash bench/gpu_check.sh [--size gpu|smoke] [--output-dir DIR] [--gsm8k PATH|none] [--only-gsm8k]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TRANSFORMERS_VERBOSITY=error
PYTHON="${PYTHON:-python}"
timeout "${GPU_CHECK_TIMEOUT:-540}" "$PYTHON" bench/gpu_check.py "$@"
