"""`rlagent eval`: held-out success on the TEST split, with 95 % Wilson intervals; --compare adds significance.

    rlagent eval --policy runs/quickstart/ppo/final --env rlagent/Calculator-v0 --episodes 200 --seed 0 --out eval.json
    rlagent eval --compare runs/quickstart/sft/final runs/quickstart/ppo/final --env rlagent/Calculator-v0 \\
        --env rlagent/KBSearch-v0 --episodes 200
    rlagent eval --policy scripted --env rlagent/KBSearch-v0 --episodes 100     # the scripted expert, for reference
    rlagent eval --policy scripted --env examples.unit_conversion:make_env --wrapper tool_faults:0.2:timeout

--env takes a registered id or `module:attr` (envs.registry). --wrapper SPEC (envs.wrappers.wrap_env, e.g.
"prompt_injection:0.3") evaluates every policy on every env twice, without and with the wrappers, on the same
episodes; each result then has "wrapper" (null or the spec), and the table shows "ENV + SPEC" rows.

Episode i is reset with seed S+i on the test split, so every policy sees the same tasks. Decoding is greedy unless
--sample is given (then plain temperature sampling, seeded with S). Episodes run in engine batches (--batch-size).

Output JSON (also printed as a table):
- one policy, one env: the result object itself;
- several --env: {"envs": [result, ...]};
- --compare: per env {"env", "seed", "episodes", "test", "results": [result per policy]}, where every result after
  the first has "baseline" (the first policy), "difference" (its success rate minus the baseline's), "p_value"
  (two-sided Fisher exact test on the 2x2 table successes/failures x policy, scipy.stats.fisher_exact) and the paired
  test: "p_value_mcnemar" (two-sided exact McNemar test on the same episodes) from "discordant" = [episodes only the
  baseline solved, episodes only this policy solved] (the table shows them as "p (a:b)"); with several --env,
  {"envs": [that, ...]}.

A result has success_rate, success_ci95 ([lo, hi], Wilson score interval, z = 1.96), mean_reward, mean_turns,
tool_calls_per_episode, invalid_tool_call_rate, episodes, successes, env, policy, seed, diagnostic rates, and (for
tasks that carry a phrasing id) seen_/unseen_wording_success_rate and _episodes: success on test tasks worded with
the training templates vs with templates held out for the test split; and, per episode (sorted by seed),
episode_seeds and episode_successes (0/1), which the paired test matches up.
invalid_tool_call_rate = invalid tool-call turns / turns that attempted a tool call: a turn counts as invalid when
the environment rejected its call (malformed JSON or tags, unknown tool, too many calls, arguments that do not fit
the schema); it is 0 when no turn attempted a call.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from rlagent.common.config import AT_LEAST_ONE, arg_type
from rlagent.rollout.decoding import ModelPolicy
from rlagent.rollout.engine import play
from rlagent.rollout.policies import add_policy_arguments, load_policy
from rlagent.rollout.transcripts import console, episode_records, result_table, summarize

FISHER_TEST = "Fisher exact test, two-sided (scipy.stats.fisher_exact) on successes/failures x policy"
MCNEMAR_TEST = "exact McNemar test, two-sided, on the episodes only one of the two policies solved (same seeds)"


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n; (0, 1) when n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at k = 0 or k = n.
    """
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: episodes only policy A solved (`only_a`) and
    episodes only policy B solved (`only_b`). Under "no difference" each discordant episode is a fair coin, so
    p = min(1, 2 * P(Binomial(only_a + only_b, 1/2) <= min(only_a, only_b))); 1 when there is no discordant pair.

    Episodes both or neither policy solved carry no information about which is better, which is why this paired
    test resolves differences that Fisher's test (treating the two samples as independent) cannot.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_a}, {only_b}")
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def discordant_pairs(results_a: dict, results_b: dict) -> tuple[int, int] | None:
    """(episodes only A solved, episodes only B solved), matched by episode seed; None when either result lacks the
    per-episode outcomes. Results on different episodes are an error: a paired test needs the same episodes."""
    if "episode_successes" not in results_a or "episode_successes" not in results_b:
        return None
    a = dict(zip(results_a["episode_seeds"], results_a["episode_successes"]))
    b = dict(zip(results_b["episode_seeds"], results_b["episode_successes"]))
    if a.keys() != b.keys():
        raise ValueError("McNemar's test needs both policies evaluated on the same episodes (same seeds)")
    only_a = sum(a[seed] and not b[seed] for seed in a)
    only_b = sum(b[seed] and not a[seed] for seed in a)
    return only_a, only_b


def compare(results_a: dict, results_b: dict) -> dict:
    """Difference in success rate (b - a), the two-sided Fisher exact p-value on the 2x2 table (`p_value`) and, when
    both results carry per-episode outcomes, the paired exact McNemar p-value (`p_value_mcnemar`) with the
    discordant counts `discordant` = [only a solved, only b solved]."""
    from scipy.stats import fisher_exact

    k_a, n_a = results_a["successes"], results_a["episodes"]
    k_b, n_b = results_b["successes"], results_b["episodes"]
    p_value = float(fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="two-sided").pvalue)
    out = {"difference": results_b["success_rate"] - results_a["success_rate"], "p_value": p_value,
           "test": FISHER_TEST}  # fmt: skip
    pairs = discordant_pairs(results_a, results_b)
    if pairs is not None:
        out.update(p_value_mcnemar=mcnemar_exact(*pairs), discordant=list(pairs), test_mcnemar=MCNEMAR_TEST)
    return out


def evaluate_policy(
    model,
    tokenizer,
    env_id: str,
    episodes: int,
    seed: int,
    batch_size: int = 64,
    greedy: bool = True,
    temperature: float = 1.0,
    max_new_tokens: int = 96,
    max_total_tokens: int = 1024,
    wrappers: str | None = None,
    dtype: str = "auto",
) -> dict:
    """Success statistics of `model` on `episodes` test-split episodes (episode i reset with seed + i).

    `model` is an HF causal LM (wrapped in a ModelPolicy on the hf backend whose weights are in `dtype`, 'auto' =
    bf16 where the hardware has it) or anything with `act(episodes)` (e.g. a TextPolicy).
    """
    policy = (
        model
        if hasattr(model, "act")
        else ModelPolicy(model, tokenizer, max_new_tokens, temperature, greedy, dtype=dtype)
    )
    t0 = time.time()
    batches = play(policy, tokenizer, env_id, episodes, seed, "test", batch_size, max_total_tokens, wrappers)
    records = [record for traj in batches for record in episode_records(traj, env_id)]
    result = result_from(records, sum(traj.generated_tokens for traj in batches), time.time() - t0, env_id, seed)
    return {**result, "wrapper": wrappers}


def result_from(records: list[dict], generated_tokens: int, seconds: float, env_id: str, seed: int) -> dict:
    stats = summarize(records, generated_tokens, seconds)
    successes = sum(record["success"] for record in records)
    lo, hi = wilson_interval(successes, len(records))
    ordered = sorted(records, key=lambda record: record["seed"])
    return {
        "env": env_id,
        "policy": None,
        "seed": seed,
        "split": "test",
        "successes": successes,
        "success_ci95": [lo, hi],
        **stats,
        # per episode, for the paired test: episode i of every policy is reset with the same seed
        "episode_seeds": [record["seed"] for record in ordered],
        "episode_successes": [int(record["success"]) for record in ordered],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlagent eval", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--policy", help="Model folder, 'tiny', 'scripted' or 'random'.")
    which.add_argument("--compare", nargs="+", metavar="POLICY", help="Two or more policies on the same episodes.")
    parser.add_argument("--env", action="append", required=True, help="Environment id or module:attr; repeatable.")
    parser.add_argument(
        "--wrapper",
        metavar="SPEC",
        help="Also evaluate under robustness wrappers, e.g. prompt_injection:0.3 or tool_faults:0.2:timeout.",
    )
    parser.add_argument(
        "--episodes", type=arg_type(int, AT_LEAST_ONE), default=200, help="Test-split episodes per environment."
    )
    parser.add_argument("--seed", type=int, default=0, help="Episode i is reset with seed SEED+i.")
    parser.add_argument("--sample", action="store_true", help="Temperature sampling instead of greedy decoding.")
    parser.add_argument("--out", metavar="FILE.json", help="Write the results as JSON.")
    add_policy_arguments(parser, greedy_default=True)
    args = parser.parse_args(argv)
    if args.compare is not None and len(args.compare) < 2:
        parser.error("--compare needs at least two policies")
    if args.wrapper:
        from envs.wrappers import parse_wrappers

        try:  # a malformed spec fails here, before any model is loaded
            parse_wrappers(args.wrapper)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def variants(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(env, wrapper) pairs to evaluate: every env plain, then (with --wrapper) every env under the wrappers."""
    return [(env_id, None) for env_id in args.env] + [(env_id, args.wrapper) for env_id in args.env if args.wrapper]


def evaluate_spec(spec: str, env_ids: list[str], args: argparse.Namespace) -> list[dict]:
    """Load a policy from its command-line spec once, then evaluate it on every (environment, wrapper) pair."""
    policy, tokenizer = load_policy(spec, args, greedy=not args.sample)
    results = []
    for env_id, wrapper in env_ids:
        torch.manual_seed(args.seed)  # --sample: every policy and env starts from the same seeded stream
        result = evaluate_policy(
            policy,
            tokenizer,
            env_id,
            args.episodes,
            args.seed,
            args.batch_size,
            max_total_tokens=args.max_total_tokens,
            wrappers=wrapper,
        )
        results.append({**result, "policy": spec, "greedy": not args.sample})
    return results


def compare_blocks(args: argparse.Namespace) -> list[dict]:
    """Per env: every policy's result; each after the first gets its difference from the first and a p-value."""
    pairs = variants(args)
    per_policy = [evaluate_spec(spec, pairs, args) for spec in args.compare]
    blocks = []
    for i, (env_id, wrapper) in enumerate(pairs):
        results = [policy_results[i] for policy_results in per_policy]
        for result in results[1:]:
            result.update(baseline=args.compare[0], **compare(results[0], result))
        blocks.append({"env": env_id, "wrapper": wrapper, "seed": args.seed, "episodes": args.episodes,
                       "test": FISHER_TEST, "test_mcnemar": MCNEMAR_TEST, "results": results})  # fmt: skip
    return blocks


def print_table(rows: list[dict]) -> None:
    lines = []
    for r in rows:
        diff, p = (f"{r['difference']:+.1%}", f"{r['p_value']:.3g}") if "p_value" in r else ("", "")
        p_mcnemar = (
            f"{r['p_value_mcnemar']:.3g} ({r['discordant'][0]}:{r['discordant'][1]})" if "discordant" in r else ""
        )
        env = r["env"] + (f" + {r['wrapper']}" if r.get("wrapper") else "")
        lines.append(([env, str(r["policy"])], r, [f"{r['mean_reward']:+.3f}", diff, p, p_mcnemar]))
    tail = ("reward", "diff vs first", "p Fisher", "p McNemar")
    console().print(result_table("rlagent eval (test split)", ("env", "policy"), tail, lines))


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.compare:
        blocks = compare_blocks(args)
        rows = [result for block in blocks for result in block["results"]]
    else:
        blocks = rows = evaluate_spec(args.policy, variants(args), args)
    output = blocks[0] if len(blocks) == 1 else {"envs": blocks}
    print_table(rows)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(output, handle, indent=2)
        print(f"wrote {args.out}")
    return output


if __name__ == "__main__":
    main()
