"""Policies a rollout can be played with, and how `rlagent rollout` / `rlagent eval` load one from its spec.

A spec is a local Hugging Face model folder (e.g. an SFT output `runs/.../final`, a LoRA adapter folder too, or any
folder `rlagent export` wrote: plain HF, torch INT8 or ONNX, see rlagent.rollout.exported), a .gguf
file, a short name such as `smollm2-135m-instruct`, `tiny` (the untrained tiny default), `scripted` (the scripted
expert; mistakes with probability --noise per episode) or `random` (random text and often malformed tool calls).
Text policies (scripted, random) go through TextPolicy; models through ModelPolicy
(rlagent.rollout.decoding).
"""

from __future__ import annotations

import argparse
import os
import random
import string
from collections.abc import Callable

import torch
from transformers.utils import logging

from rlagent.common.chat import encode
from rlagent.common.config import AT_LEAST_ONE, FRACTION, POSITIVE, ConfigError, ModelConfig, arg_type, env_spec_errors
from rlagent.common.modeling import load_causal_lm, load_tokenizer
from rlagent.rollout.backends.hf import HFBackend
from rlagent.rollout.decoding import ModelPolicy
from rlagent.rollout.exported import ONNX_FILE, export_info, load_int8_hf, needs_custom_loader

PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "


class TextPolicy:
    """A text-producing policy, e.g. a scripted expert; its text is tokenised and closed with the eos token.

    TextPolicy(fn, tok): fn(messages, task) -> assistant text, one function for all episodes.
    TextPolicy(make, tok, per_episode=True): make(seed) -> fn, a fresh actor per episode (seeded by its reset seed),
    so a stateful actor gives the same episode whatever the batch it runs in.
    """

    def __init__(self, fn: Callable, tokenizer, per_episode: bool = False):
        self.fn, self.tokenizer, self.per_episode = fn, tokenizer, per_episode
        self.eos_id = tokenizer.eos_token_id

    def act(self, episodes: list) -> list[list[int]]:
        texts = []
        for ep in episodes:
            actor = self._actor(ep)
            # An actor that plays any environment (random) reads the tool schemas the episode was shown.
            texts.append(actor(ep.messages, ep.task, ep.tools) if getattr(actor, "takes_tools", False)
                         else actor(ep.messages, ep.task))  # fmt: skip
        return [self.encode(text) for text in texts]

    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text) + [self.eos_id]

    def _actor(self, ep) -> Callable:
        if not self.per_episode:
            return self.fn
        if ep.actor is None:
            ep.actor = self.fn(ep.seed)
        return ep.actor


def add_policy_arguments(parser: argparse.ArgumentParser, greedy_default: bool) -> None:
    """Options shared by `rlagent rollout` and `rlagent eval`."""
    parser.add_argument("--tokenizer", help="Tokenizer folder for scripted/random policies (default: tiny).")
    parser.add_argument(
        "--noise",
        type=arg_type(float, FRACTION),
        default=0.0,
        help="Scripted expert: mistake probability per episode.",
    )
    parser.add_argument(
        "--temperature", type=arg_type(float, POSITIVE), default=1.0, help="Sampling temperature (model policies)."
    )
    if not greedy_default:
        parser.add_argument("--greedy", action="store_true", help="Greedy decoding instead of sampling.")
    parser.add_argument(
        "--max-new-tokens", type=arg_type(int, AT_LEAST_ONE), default=96, help="Longest assistant turn in tokens."
    )
    parser.add_argument(
        "--max-total-tokens", type=arg_type(int, AT_LEAST_ONE), default=1024, help="Longest episode in tokens."
    )
    parser.add_argument(
        "--batch-size", type=arg_type(int, AT_LEAST_ONE), default=64, help="Episodes played at once by the engine."
    )
    parser.add_argument("--backend", default="hf", help="Generation backend (model policies).")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="Sampling weights' dtype (auto: bf16 where the hardware computes it natively).",
    )
    parser.add_argument("--no-prefix-cache", action="store_true", help="Prefill each prompt in full.")


def random_actor(seed: int) -> Callable[[list[dict], dict, list | None], str]:
    """A per-episode random policy: printable noise, calls to the environment's own tools (from the schemas it was
    shown; arguments drawn by their JSON type), the usual breakages, and random final answers."""
    from envs.parsing import format_tool_call

    rng = random.Random(seed)

    def noise(n: int) -> str:
        return "".join(rng.choice(PRINTABLE) for _ in range(rng.randint(1, n)))

    def act(messages: list[dict], task: dict, tools: list | None = None) -> str:
        name, arguments = random_call(rng, tools, task, noise)
        roll = rng.random()
        if roll < 0.15:
            return noise(40)
        if roll < 0.4:
            return format_tool_call(name, arguments)
        if roll < 0.85:  # the usual breakages: cut-off JSON, unclosed tag, wrong name
            return rng.choice(
                [
                    "<tool_call>{" + noise(20),
                    "<tool_call>" + noise(20) + "</tool_call>",
                    format_tool_call(noise(6), arguments),
                ]
            )
        return f"The answer is {rng.randint(-100, 10_000)}."

    act.takes_tools = True
    return act


def random_call(rng: random.Random, tools: list | None, task: dict, noise: Callable[[int], str]) -> tuple[str, dict]:
    """(tool name, arguments): a tool drawn from the schemas (each argument a random value of its JSON type); with
    no schemas, the built-in family's tool."""
    from envs.experts import TOOL_OF_FAMILY

    functions = [tool.get("function", tool) for tool in tools or [] if isinstance(tool, dict)]
    if not functions:
        name, argument = TOOL_OF_FAMILY.get(task.get("family"), ("calculator", "expression"))
        return name, {argument: noise(12)}
    function = rng.choice(functions)
    properties = (function.get("parameters") or {}).get("properties") or {}
    draw = {
        "integer": lambda: rng.randint(-100, 100),
        "number": lambda: round(rng.uniform(-100, 100), 2),
        "boolean": lambda: rng.random() < 0.5,
    }
    arguments = {key: draw.get(spec.get("type"), lambda: noise(12))() for key, spec in properties.items()}
    return function.get("name", noise(6)), arguments


def check_scripted(env_spec: str) -> None:
    """`--policy scripted` needs an expert: a built-in family, or tasks that carry `Task.solution`; else one line."""
    from envs.experts import TOOL_OF_FAMILY
    from envs.registry import make_env

    env = make_env(env_spec, split="test")
    task = env.reset(seed=0)[1].get("task") or {}
    if task.get("family") not in TOOL_OF_FAMILY and not task.get("solution"):
        raise ConfigError(
            f"--policy scripted: environment {env_spec!r} has no scripted expert (its tasks carry no Task.solution); "
            "use --policy random, a model folder, or give its tasks a solution"
        )


def scripted_actor(noise: float) -> Callable[[int], Callable]:
    """make(seed) -> a fresh scripted expert's act(); seeded per episode, so batching never changes an episode."""
    from envs.experts import ScriptedExpert

    return lambda seed: ScriptedExpert(noise=noise, seed=seed).act


def load_policy(spec: str, args: argparse.Namespace, greedy: bool):
    """(policy, tokenizer) for a model folder, .gguf file, short name, 'tiny', 'scripted' or 'random'."""
    if spec == "scripted":
        env_specs = getattr(args, "env", None) or []
        for env_spec in [env_specs] if isinstance(env_specs, str) else env_specs:
            with env_spec_errors("--env"):
                check_scripted(env_spec)
    if spec in ("scripted", "random"):
        tokenizer = load_tokenizer(args.tokenizer or "tiny", "--tokenizer")
        make = scripted_actor(args.noise) if spec == "scripted" else random_actor
        return TextPolicy(make, tokenizer, per_episode=True), tokenizer
    info = export_info(spec)
    if needs_custom_loader(info):  # an ONNX or INT8 export: its own backend, no trainable torch model
        tokenizer = load_tokenizer(spec, "--policy")
        backend = load_export_backend(spec, info, tokenizer, prefix_cache=not args.no_prefix_cache)
        return ModelPolicy(None, tokenizer, args.max_new_tokens, args.temperature, greedy=greedy,
                           backend=backend), tokenizer  # fmt: skip
    model, tokenizer = load_eval_model(spec, args.seed)
    policy = ModelPolicy(model, tokenizer, args.max_new_tokens, args.temperature, greedy=greedy, backend=args.backend,
                         dtype=args.dtype, prefix_cache=not args.no_prefix_cache, key="--backend")  # fmt: skip
    return policy, tokenizer


def load_export_backend(path: str, info: dict, tokenizer, prefix_cache: bool = True):
    """The generation backend of an ONNX or INT8 export (rlagent.rollout.exported): ONNX Runtime for `onnx`, the HF
    backend on the torch.ao INT8 modules for `hf` + `int8` (sampled as they are: no bf16 copy of int8 weights)."""
    if info["format"] == "onnx":
        from rlagent.rollout.backends.onnx import OnnxBackend

        return OnnxBackend(os.path.join(path, ONNX_FILE), tokenizer.pad_token_id)
    return HFBackend(load_int8_hf(path), tokenizer.pad_token_id, None, prefix_cache=prefix_cache)


def load_eval_model(spec: str, seed: int = 0, flag: str = "--policy"):
    """(model, tokenizer) of a stage output or model spec (HF or LoRA-adapter folder, .gguf, short name, 'tiny') on
    the GPU if there is one: the one loader of `rlagent eval`, `rlagent rollout` and the quickstart's evaluation.
    Adapters are merged and the tokenizer gets the fix-ups the stages trained with."""
    logging.disable_progress_bar()  # no "Loading weights" bar in transcripts
    info = export_info(spec)
    if needs_custom_loader(info):
        kind = f"{info['format']}{' int8' if info.get('quantize') else ''}"
        raise ConfigError(
            f"{flag}='{spec}' is an {kind} export: eval, rollout and serve run it; it has no torch weights"
        )
    tokenizer = load_tokenizer(spec, flag)  # a real model's tokenizer is fixed up as in training
    model = load_causal_lm(ModelConfig(name_or_path=spec), tokenizer, seed=seed)
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer
