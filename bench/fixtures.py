"""Shared benchmark inputs: tiny models saved as Hugging Face folders, Calculator prompts, and a cached SFT policy.

Both sides of a comparison load the same folders, so they start from identical weights and tokenizer.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys

import torch
from transformers import AutoModelForSequenceClassification

from rlagent.common.config import TinyModelConfig
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer, tiny_llama_config

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
CACHE_DIR = os.path.join(BENCH_DIR, ".cache")
CALCULATOR = "rlagent/Calculator-v0"
QUICKSTART_SFT_CONFIG = os.path.join(REPO_DIR, "configs", "quickstart", "sft.yaml")


ONE_TURN_CALCULATOR = "bench/CalculatorOneTurn-v0"


def register_one_turn_calculator() -> str:
    """Register (once) Calculator-v0 with every reply taken as the final answer; returns the env id.

    A random policy's text can contain "<tool_call>"/"</tool_call>" by chance (the tokenizer's merges spell them), and
    the env would answer with a tool result or an error and ask for another turn. Stripping the tags keeps every
    episode to exactly one assistant turn: prompt in, one response out, as in TRL's single-turn PPOTrainer.
    """
    import gymnasium as gym

    if ONE_TURN_CALCULATOR not in gym.registry:
        gym.register(id=ONE_TURN_CALCULATOR, entry_point=_one_turn_calculator)
    return ONE_TURN_CALCULATOR


def _one_turn_calculator(**kwargs):
    import gymnasium as gym

    import envs  # noqa: F401  (registers the environments)
    from envs.parsing import CLOSE_TAG, OPEN_TAG

    class OneTurn(gym.Wrapper):
        def step(self, action: str):
            return self.env.step(action.replace(OPEN_TAG, "").replace(CLOSE_TAG, ""))

    return OneTurn(gym.make(CALCULATOR, **kwargs))


def save_single_turn_models(folder: str, tiny: TinyModelConfig, seed: int = 0) -> dict[str, str]:
    """policy/ (causal LM, randomly initialised), reward/ and value/ (sequence classifiers, num_labels=1), each with
    the tokenizer.

    The value model is the policy backbone with a zero head (what rlagent's value.init=policy builds); the reward
    model is an independent backbone from seed + 1 with a N(0, 1/sqrt(d+1)) head so its scores vary.
    """
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = build_tiny_tokenizer()
    policy = build_tiny_model(tiny, tokenizer, seed)
    config = tiny_llama_config(tiny, tokenizer)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        reward = AutoModelForSequenceClassification.from_config(config)
        torch.nn.init.normal_(reward.score.weight, std=(config.hidden_size + 1) ** -0.5)
    value = AutoModelForSequenceClassification.from_config(copy.deepcopy(config))
    value.model.load_state_dict(policy.model.state_dict())
    torch.nn.init.zeros_(value.score.weight)
    paths = {}
    for name, model in (("policy", policy), ("reward", reward), ("value", value)):
        paths[name] = os.path.join(folder, name)
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def real_model_folder(out: str, model: str | None = None, layers: int = 0) -> str:
    """SmolLM2-135M-Instruct (or the local folder `model`), truncated to its first `layers` decoder layers (0 = all),
    with its tokenizer prepared for tool conversations (rlagent.common.chat_templates) and the config's pad/eos pointed
    at it: a real-shape model folder that rlagent and TRL both load as is. Returns `out`."""
    from transformers import AutoTokenizer

    from rlagent.common.chat_templates import prepare_tokenizer
    from rlagent.common.model_sources import resolve_model_path, truncated_copy

    source = model or resolve_model_path("smollm2-135m-instruct")
    if layers:
        truncated_copy(source, layers, out)
    else:  # the full model: link its weights, rewrite only the small files below
        os.makedirs(out)
        for name in os.listdir(source):
            if name not in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
                os.symlink(os.path.join(source, name), os.path.join(out, name))
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    if prepare_tokenizer(tokenizer, verbose=False).resize_embeddings:
        raise SystemExit(f"{source}: the tokenizer needs a new pad token; pick a model with a spare special token")
    tokenizer.save_pretrained(out)
    with open(os.path.join(out if layers else source, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    config.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=1)
    return out


def save_single_turn_models_from(policy_dir: str, folder: str, seed: int = 0) -> dict[str, str]:
    """save_single_turn_models for a real model folder: policy/ is `policy_dir` as is; reward/ and value/ are its
    backbone as sequence classifiers (num_labels=1), the reward head N(0, 1/sqrt(d+1)) from `seed`, the value head
    zero (rlagent's value.init=policy)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    tokenizer = AutoTokenizer.from_pretrained(policy_dir, local_files_only=True)
    paths = {"policy": policy_dir}
    logging.set_verbosity_error()  # "score.weight MISSING" is expected: the heads are set below
    for name, std in (("reward", None), ("value", 0.0)):
        model = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, local_files_only=True)
        hidden = model.config.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            torch.nn.init.normal_(model.score.weight, std=(hidden + 1) ** -0.5 if std is None else std)
        model.config.pad_token_id = tokenizer.pad_token_id
        paths[name] = os.path.join(folder, name)
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def calculator_episodes(count: int, split: str = "train", first_seed: int = 0) -> list[dict]:
    """The reset() info (messages, tools, task) of Calculator-v0 episodes with seeds first_seed, first_seed + 1, ..."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the environments)

    env = gym.make(CALCULATOR, split=split)
    return [env.reset(seed=seed)[1] for seed in range(first_seed, first_seed + count)]


def calculator_messages(count: int, split: str = "train", first_seed: int = 0) -> list[list[dict]]:
    """Chat messages (system + user) of Calculator-v0 task prompts."""
    return [info["messages"] for info in calculator_episodes(count, split, first_seed)]


def calculator_prompts(tokenizer, count: int, split: str = "train", first_seed: int = 0) -> list[list[int]]:
    """Token ids of Calculator-v0 task prompts (system + user + tool list), rendered by the chat template."""
    return [
        list(
            tokenizer.apply_chat_template(
                info["messages"], tools=info["tools"], tokenize=True, add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )
        for info in calculator_episodes(count, split, first_seed)
    ]


def sft_policy(max_steps: int | None = None, refresh: bool = False, model: str = "tiny", layers: int = 2) -> str:
    """The SFT policy the multi-turn benchmark starts from, built by this benchmark and cached in bench/.cache.

    model="tiny": the quickstart's stage 1 (`rlagent sft --config configs/quickstart/sft.yaml`). model="smollm2":
    SmolLM2-135M-Instruct truncated to `layers` decoder layers (real vocabulary, embeddings and template), fully
    fine-tuned by `rlagent sft --config configs/smollm2/sft.yaml` without LoRA, so final/ is a plain model folder
    that TRL loads as is. The cache key covers max_steps, the shape, the config and rlagent/common/tiny.py.
    (runs/quickstart/sft/final is not used by default: it may predate the current config; pass it with --sft.)
    """
    config = QUICKSTART_SFT_CONFIG if model == "tiny" else os.path.join(REPO_DIR, "configs", "smollm2", "sft.yaml")
    digest = hashlib.sha1(f"{max_steps} {model} {layers}".encode())
    for path in (config, os.path.join(REPO_DIR, "rlagent", "common", "tiny.py")):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    key = digest.hexdigest()[:10]
    out = os.path.join(CACHE_DIR, f"sft-{'quickstart' if model == 'tiny' else f'smollm2-{layers}layers'}-{key}")
    final = os.path.join(out, "final")
    if os.path.isdir(final) and not refresh:
        return final
    overrides = [f"output_dir={out}", "progress=false", "save_every=0"]
    overrides += [f"max_steps={max_steps}"] if max_steps is not None else []
    if model != "tiny":
        base = out + "-base"
        if not os.path.isdir(base):
            real_model_folder(base, layers=layers)
        # Full fine-tuning of the truncated copy (its new layers are few; LoRA would leave them nearly untrained).
        overrides += [f"model.name_or_path={base}", "model.lora.enabled=false", "optim.lr=2.0e-4"]
    cmd = [sys.executable, "-m", "rlagent.cli", "sft", "--config", config, *overrides]
    print(f"   building the SFT policy (cached afterwards): {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True, cwd=REPO_DIR, stdout=subprocess.DEVNULL)
    return final
