"""Generation speed of the rollout engine on SmolLM2-135M-Instruct: the old fp32 path vs the bf16 + shared-prefix
backend, each against raw `model.generate` on the same prompts in the same dtype, interleaved in lock step.

    python bench/generation_backends.py [--episodes 64] [--rounds 2] [--envs rlagent/Calculator-v0,rlagent/KBSearch-v0]
    python bench/generation_backends.py --quick        # 8 episodes, 1 round, 2 decoder layers

Per environment and round, four runs back to back in one process (the order rotates every round, so a busy shared
machine slows each alike):
  old engine    run_episodes, backend weights fp32 (the trainer's module), no prefix cache (behaviour of c874d7b)
  new engine    run_episodes, backend weights bf16 (a copy; `rollout.dtype: auto` on a native-bf16 machine), prefix
                cache on
  raw fp32/bf16 ONE model.generate call over the same episodes' first-turn prompts, on the fp32 model / the same bf16
                copy, forced to produce as many tokens per row as the engine run it is compared with generated
Zero-shot episodes, plain temperature-1 sampling, each run reseeded alike. Prints generated tokens/s (best round)
and the process CPU seconds per run; RESULT lines for bench/run_all.py. Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from report import banner, load_1min  # noqa: E402

from rlagent.rollout.decoding import ModelPolicy  # noqa: E402
from rlagent.rollout.engine import make_envs, run_episodes  # noqa: E402


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=64, help="Episodes per engine batch.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds; the best of each run is kept.")
    parser.add_argument("--envs", default="rlagent/Calculator-v0,rlagent/KBSearch-v0", help="Comma-separated env ids.")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="Longest assistant turn.")
    parser.add_argument("--layers", type=int, default=0, help="Keep only this many decoder layers (0 = all 30).")
    parser.add_argument("--quick", action="store_true", help="8 episodes, 1 round, 2 layers: a smoke run.")
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.rounds, args.layers = 8, 1, 2
    return args


def load_smollm2(layers: int):
    import tempfile

    from rlagent.common.config import ModelConfig
    from rlagent.common.model_sources import resolve_model_path, truncated_copy
    from rlagent.common.modeling import load_causal_lm, load_tokenizer

    path = resolve_model_path("smollm2-135m-instruct")
    if layers:
        path = truncated_copy(path, layers, tempfile.mkdtemp()) or path
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(ModelConfig(name_or_path=path), tokenizer, seed=0).float().eval()
    return model, tokenizer


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn) -> dict:
    torch.manual_seed(0)
    wall, cpu = time.perf_counter(), cpu_seconds()
    tokens = fn()
    return {"tokens": tokens, "seconds": time.perf_counter() - wall, "cpu_seconds": cpu_seconds() - cpu}


def engine_run(policy: ModelPolicy, tokenizer, env_id: str, n: int) -> int:
    traj = run_episodes(policy, make_envs(env_id, n), list(range(n)), tokenizer, max_total_tokens=2048)
    return traj.generated_tokens


def first_prompts(tokenizer, env_id: str, n: int) -> list[list[int]]:
    prompts = []
    for seed, env in enumerate(make_envs(env_id, n)):
        _, info = env.reset(seed=seed)
        text = tokenizer.apply_chat_template(info["messages"], tools=info.get("tools"), tokenize=False,
                                             add_generation_prompt=True)  # fmt: skip
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return prompts


def raw_generate(model, policy: ModelPolicy, tokenizer, prompts: list[list[int]], new_tokens: int) -> int:
    """One left-padded model.generate call, every row forced to `new_tokens` new tokens."""
    width, n = max(len(p) for p in prompts), len(prompts)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = copy.deepcopy(policy.generation_config)
    config.min_new_tokens = config.max_new_tokens = new_tokens
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return (out.shape[1] - width) * n


def bench_env(env_id: str, old: ModelPolicy, new: ModelPolicy, tokenizer, args) -> dict:
    prompts, n = first_prompts(tokenizer, env_id, args.episodes), args.episodes
    runs: dict[str, list[dict]] = {"old_engine": [], "new_engine": [], "raw_fp32": [], "raw_bf16": []}
    for round_ in range(args.rounds):
        order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
        for which in order:
            policy = old if which == "old" else new
            engine = timed(lambda p=policy: engine_run(p, tokenizer, env_id, n))
            per_row = -(-engine["tokens"] // n)
            raw = timed(lambda p=policy, k=per_row: raw_generate(p.model, p, tokenizer, prompts, k))
            runs[f"{which}_engine"].append(engine)
            runs["raw_fp32" if which == "old" else "raw_bf16"].append(raw)
            print(f"   {env_id} round {round_} {which}: engine {rate(engine):.1f} tok/s ({engine['tokens']} tokens),"
                  f" raw {rate(raw):.1f} tok/s · load {load_1min():.1f}", flush=True)  # fmt: skip
    best = {name: max(r, key=rate) for name, r in runs.items()}
    return {
        "env": env_id,
        **{f"{name}_tokens_per_s": round(rate(r), 1) for name, r in best.items()},
        **{f"{name}_cpu_s_per_1k_tokens": round(1000 * r["cpu_seconds"] / r["tokens"], 2) for name, r in best.items()},
        "new_vs_old": round(rate(best["new_engine"]) / rate(best["old_engine"]), 2),
        "new_vs_raw_bf16": round(rate(best["new_engine"]) / rate(best["raw_bf16"]), 2),
        "old_vs_raw_fp32": round(rate(best["old_engine"]) / rate(best["raw_fp32"]), 2),
        "prefix_tokens": len(new.backend._prefix[0]) if new.backend._prefix else 0,
        "episodes": n,
    }


def rate(run: dict) -> float:
    return run["tokens"] / run["seconds"]


def main() -> None:
    args = parse()
    banner("rollout engine generation: fp32 no-prefix vs bf16 + shared prefix vs raw generate (SmolLM2)")
    model, tokenizer = load_smollm2(args.layers)
    old = ModelPolicy(model, tokenizer, args.max_new_tokens, dtype="float32", prefix_cache=False)
    new = ModelPolicy(model, tokenizer, args.max_new_tokens, dtype="bfloat16", prefix_cache=True)
    assert {p.dtype for p in new.model.parameters()} == {torch.bfloat16}, "the bf16 copy fell back to another dtype"
    print(f"   torch threads {torch.get_num_threads()} · episodes {args.episodes} · rounds {args.rounds} · "
          f"layers {args.layers or 'all'} · max_new_tokens {args.max_new_tokens}", flush=True)  # fmt: skip
    for env_id in args.envs.split(","):
        result = bench_env(env_id, old, new, tokenizer, args)
        print("RESULT " + __import__("json").dumps(result), flush=True)


if __name__ == "__main__":
    main()
