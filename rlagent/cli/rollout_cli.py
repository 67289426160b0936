"""`rlagent rollout`: play episodes with a policy and print coloured transcripts (optionally save them as JSONL).

    rlagent rollout --env rlagent/Calculator-v0 --policy scripted --episodes 4 --seed 0
    rlagent rollout --env rlagent/KBSearch-v0 --policy runs/quickstart/sft/final --episodes 8 --show-tokens
    rlagent rollout --env rlagent/Calculator-v0 --policy scripted --noise 0.3 --episodes 500 --save demos.jsonl

--policy is a local Hugging Face model folder (e.g. an SFT output `runs/.../final`), `tiny` (the untrained tiny
default), `scripted` (the scripted expert; mistakes with probability --noise per episode) or `random` (random text and
often malformed tool calls). Episode i is reset with seed S+i. `--save` writes one JSON object per episode (messages,
tools, reward and its components, success, turns, token ids and policy mask); scripted episodes are directly usable
as SFT data (`rlagent sft data.path=FILE`).
"""

from __future__ import annotations

import argparse
import time

import torch

from rlagent.common.config import AT_LEAST_ONE, arg_type
from rlagent.rollout.engine import play
from rlagent.rollout.policies import add_policy_arguments, load_policy
from rlagent.rollout.transcripts import episode_records, print_stats, print_transcript, save_jsonl, summarize


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlagent rollout", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="Environment id, e.g. rlagent/Calculator-v0.")
    parser.add_argument("--policy", required=True, help="Model folder, 'tiny', 'scripted' or 'random'.")
    parser.add_argument("--episodes", type=arg_type(int, AT_LEAST_ONE), default=4, help="Number of episodes.")
    parser.add_argument("--seed", type=int, default=0, help="Episode i is reset with seed SEED+i.")
    parser.add_argument("--split", choices=["train", "test"], default="train", help="Task split.")
    parser.add_argument("--save", metavar="FILE.jsonl", help="Write one JSON object per episode.")
    parser.add_argument("--show-tokens", action="store_true", help="Show every token; policy tokens highlighted.")
    parser.add_argument("--quiet", action="store_true", help="Only the stats line (no transcripts).")
    add_policy_arguments(parser, greedy_default=False)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.manual_seed(args.seed)  # sampling is reproducible for a given seed and batch size
    policy, tokenizer = load_policy(args.policy, args, greedy=args.greedy)
    t0 = time.time()
    batches = play(
        policy, tokenizer, args.env, args.episodes, args.seed, args.split, args.batch_size, args.max_total_tokens
    )
    seconds = time.time() - t0
    records = [record for traj in batches for record in episode_records(traj, args.env)]
    stats = summarize(records, sum(traj.generated_tokens for traj in batches), seconds)
    if not args.quiet:
        for i, record in enumerate(records):
            print_transcript(record, tokenizer, index=i, show_tokens=args.show_tokens)
    print_stats(stats, title=f"{args.env} · policy {args.policy} · {args.split} split")
    if args.save:
        save_jsonl(args.save, records)
        print(f"saved {len(records)} episodes to {args.save}")
    return stats


if __name__ == "__main__":
    main()
