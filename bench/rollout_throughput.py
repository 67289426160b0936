"""Rollout throughput: the batched multi-turn engine vs one raw `model.generate` call vs a sequential engine loop.

    python bench/rollout_throughput.py [--episodes 32] [--max-new-tokens 64] [--policy PATH] [--sft-steps 100]

Without --policy, the default-size tiny model (TinyModelConfig()) is first trained for --sft-steps SFT steps on
Calculator expert demonstrations (rlagent.train_sft, into a temporary folder), so episodes look realistic: tool
calls, tool responses, answers. Then, on B = --episodes Calculator episodes (train split, seeds 0..B-1):
  (a) engine, batched      run_episodes over all B episodes at once (plain temperature-1 sampling)
  (b) raw generate         ONE model.generate call over the same B first-turn prompts, same sampling settings,
                           producing the same number of tokens as (a): ceil(tokens_a / B) new tokens per row
                           (min_new_tokens = max_new_tokens, so no row stops early); the goal compares with this
  (b') raw generate, full  the same call with max_new_tokens per row (B * max_new_tokens tokens), for reference
  (c) engine, sequential   run_episodes on one episode at a time
  (c') sequential, generate the same, but each turn is one `model.generate` call from scratch (no keys/values kept
                           between turns): the loop a user writes by hand, for reference
and prints generated tokens/s for each and the ratios (goals: a/b >= 0.85, a/c >= 10). Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlagent.rollout.decoding import ModelPolicy  # noqa: E402
from rlagent.rollout.engine import make_envs, run_episodes  # noqa: E402

ENV_ID = "rlagent/Calculator-v0"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32, help="B: episodes per batch.")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Longest assistant turn.")
    parser.add_argument("--policy", help="A trained model folder; default: train the tiny model first.")
    parser.add_argument("--sft-steps", type=int, default=100, help="SFT steps for the default tiny model.")
    parser.add_argument("--sft-dir", help="Train the tiny model into this folder (reused if DIR/final exists).")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default).")
    parser.add_argument("--no-reuse-cache", action="store_true", help="Engine decodes each turn with model.generate.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats of (a) and (b); the best is kept.")
    return parser.parse_args()


def trained_tiny(steps: int, folder: str) -> str:
    """The default-size tiny model after `steps` SFT steps on Calculator expert demonstrations."""
    from rlagent import train_sft

    if os.path.isdir(os.path.join(folder, "final")):
        return os.path.join(folder, "final")

    train_sft.main(
        [
            f"output_dir={folder}",
            f"max_steps={steps}",
            "data.env_ids=[rlagent/Calculator-v0]",
            "data.episodes=400",
            "optim.lr=3e-3",
            "max_length=512",
            "eval_every=0",
            "save_every=0",
            "progress=false",
            "report_to=[]",
        ]
    )
    return os.path.join(folder, "final")


def load(path: str):
    from rlagent.common.config import ModelConfig
    from rlagent.common.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(path)
    model = load_causal_lm(ModelConfig(name_or_path=path), tokenizer, seed=0)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


class TimedPolicy:
    """Wraps a policy to split the engine's wall time into generation and everything else (env, templates)."""

    def __init__(self, policy: ModelPolicy):
        self.policy, self.max_new_tokens, self.seconds = policy, policy.max_new_tokens, 0.0

    def act(self, episodes):
        t0 = time.perf_counter()
        out = self.policy.act(episodes)
        self.seconds += time.perf_counter() - t0
        return out


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def engine_batched(policy: ModelPolicy, tokenizer, n: int) -> dict:
    timed, envs = TimedPolicy(policy), make_envs(ENV_ID, n)
    synchronize()
    t0 = time.perf_counter()
    traj = run_episodes(timed, envs, list(range(n)), tokenizer)
    synchronize()
    seconds = time.perf_counter() - t0
    return {"tokens": traj.generated_tokens, "seconds": seconds, "generate_s": timed.seconds, "traj": traj}


def raw_generate(policy: ModelPolicy, tokenizer, n: int, new_tokens: int) -> dict:
    """One generate call over the B first-turn prompts, forced to produce exactly `new_tokens` each."""
    prompts = []
    for env, seed in zip(make_envs(ENV_ID, n), range(n)):
        _, info = env.reset(seed=seed)
        prompts.append(
            tokenizer.apply_chat_template(
                info["messages"], tools=info["tools"], tokenize=True, add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )
    width = max(len(p) for p in prompts)
    device = next(policy.model.parameters()).device
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = (torch.arange(width).expand(n, width) >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    config = copy.deepcopy(policy.generation_config)
    config.min_new_tokens = config.max_new_tokens = new_tokens
    synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = policy.model.generate(input_ids=ids, attention_mask=mask.to(device), generation_config=config)
    synchronize()
    seconds = time.perf_counter() - t0
    return {"tokens": (out.shape[1] - width) * n, "seconds": seconds}


def engine_sequential(policy: ModelPolicy, tokenizer, n: int) -> dict:
    env, tokens = make_envs(ENV_ID, 1), 0
    synchronize()
    t0 = time.perf_counter()
    for seed in range(n):
        tokens += run_episodes(policy, env, [seed], tokenizer).generated_tokens
    synchronize()
    return {"tokens": tokens, "seconds": time.perf_counter() - t0}


def best_of(fn, repeats: int) -> dict:
    """Fastest of `repeats` runs (each reseeded): the machine's noise only ever adds time."""
    runs = []
    for _ in range(repeats):
        torch.manual_seed(0)
        runs.append(fn())
    return max(runs, key=lambda r: r["tokens"] / r["seconds"])


def line(name: str, result: dict) -> str:
    rate = result["tokens"] / result["seconds"]
    return f"{name:<24} {result['tokens']:>7} tokens in {result['seconds']:7.2f} s = {rate:9.1f} tokens/s"


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        path = args.policy or trained_tiny(args.sft_steps, args.sft_dir or tmp)
        trained = "" if args.policy else f"; SFT+load {time.time() - t0:.0f} s"
        model, tokenizer = load(path)
    policy = ModelPolicy(model, tokenizer, args.max_new_tokens, temperature=1.0, reuse_cache=not args.no_reuse_cache)
    n = args.episodes
    device = next(model.parameters()).device
    params = sum(p.numel() for p in model.parameters())
    print(
        f"device {device} · torch threads {torch.get_num_threads()} · model {path if args.policy else 'tiny'} "
        f"({params / 1e6:.2f} M parameters{trained}) · B={n} · max_new_tokens={args.max_new_tokens} · "
        f"engine cache reuse {policy.reuse_cache} · load average {os.getloadavg()[0]:.1f}"
    )
    raw_generate(policy, tokenizer, min(n, 4), args.max_new_tokens)  # warm-up: first-call allocations
    a = best_of(lambda: engine_batched(policy, tokenizer, n), args.repeats)
    same_tokens = -(-a["tokens"] // n)
    b = best_of(lambda: raw_generate(policy, tokenizer, n, same_tokens), args.repeats)
    b_full = best_of(lambda: raw_generate(policy, tokenizer, n, args.max_new_tokens), args.repeats)
    torch.manual_seed(0)
    c = engine_sequential(policy, tokenizer, n)
    torch.manual_seed(0)
    naive = ModelPolicy(model, tokenizer, args.max_new_tokens, temperature=1.0, reuse_cache=False)
    c_generate = engine_sequential(naive, tokenizer, n)
    traj = a["traj"]
    print(
        line("(a) engine, batched", a)
        + f"   (generate {a['generate_s']:.2f} s, rest {a['seconds'] - a['generate_s']:.2f} s;"
        f" mean turns {traj.turns.mean():.2f}, success {traj.success.mean():.0%},"
        f" invalid calls {int(traj.invalid_tool_calls.sum())}, missing EOS {traj.missing_eos.mean():.0%})"
    )
    print(line("(b) raw generate, 1 call", b) + f"   ({same_tokens} new tokens per row: as many tokens as (a))")
    print(line("(b') raw generate, full", b_full) + f"   ({args.max_new_tokens} new tokens per row)")
    print(line("(c) engine, sequential", c))
    print(line("(c') sequential, generate", c_generate) + "   (one model.generate per turn, no cache reuse)")
    rate = {k: r["tokens"] / r["seconds"] for k, r in (("a", a), ("b", b), ("c", c), ("c_generate", c_generate))}
    print(
        f"engine / raw generate = {rate['a'] / rate['b']:.2f}x (goal >= 0.85) · "
        f"engine / sequential = {rate['a'] / rate['c']:.1f}x (goal >= 10) · "
        f"engine / sequential generate = {rate['a'] / rate['c_generate']:.1f}x"
    )


if __name__ == "__main__":
    main()
