"""`rlagent rollout`: play episodes with a policy and print coloured transcripts (optionally save them as JSONL).

    rlagent rollout --env rlagent/Calculator-v0 --policy scripted --episodes 4 --seed 0
    rlagent rollout --env rlagent/KBSearch-v0 --policy runs/quickstart/sft/final --episodes 8 --show-tokens
    rlagent rollout --env rlagent/Calculator-v0 --policy scripted --noise 0.3 --episodes 500 --save demos.jsonl

--policy is a local Hugging Face model folder (e.g. an SFT output `runs/.../final`), `tiny` (the untrained tiny
default), `scripted` (the scripted expert; mistakes with probability --noise per episode) or `random` (random text and
often malformed tool calls). Episode i is reset with seed S+i. `--save` writes one JSON object per episode (messages,
tools, reward and its components, success, turns, token ids and policy mask); scripted episodes are directly usable
as SFT data (`rlagent sft data.source=file data.path=FILE`).
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time
from collections.abc import Callable

import torch

from rlagent.rollout import ModelPolicy, TextPolicy, Trajectory, make_envs, run_episodes

PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlagent rollout", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="Environment id, e.g. rlagent/Calculator-v0.")
    parser.add_argument("--policy", required=True, help="Model folder, 'tiny', 'scripted' or 'random'.")
    parser.add_argument("--episodes", type=int, default=4, help="Number of episodes.")
    parser.add_argument("--seed", type=int, default=0, help="Episode i is reset with seed SEED+i.")
    parser.add_argument("--split", choices=["train", "test"], default="train", help="Task split.")
    parser.add_argument("--save", metavar="FILE.jsonl", help="Write one JSON object per episode.")
    parser.add_argument("--show-tokens", action="store_true", help="Show every token; policy tokens highlighted.")
    parser.add_argument("--quiet", action="store_true", help="Only the stats line (no transcripts).")
    add_policy_arguments(parser, greedy_default=False)
    return parser.parse_args(argv)


def add_policy_arguments(parser: argparse.ArgumentParser, greedy_default: bool) -> None:
    """Options shared by `rlagent rollout` and `rlagent eval`."""
    parser.add_argument("--tokenizer", help="Tokenizer folder for scripted/random policies (default: tiny).")
    parser.add_argument("--noise", type=float, default=0.0, help="Scripted expert: mistake probability per episode.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (model policies).")
    if not greedy_default:
        parser.add_argument("--greedy", action="store_true", help="Greedy decoding instead of sampling.")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="Longest assistant turn in tokens.")
    parser.add_argument("--max-total-tokens", type=int, default=1024, help="Longest episode in tokens.")
    parser.add_argument("--batch-size", type=int, default=64, help="Episodes played at once by the engine.")


# ---------------------------------------------------------------------------------------------------------------------
# Policies


def random_actor(seed: int) -> Callable[[list[dict], dict], str]:
    """A per-episode random policy: printable noise, tool calls (often malformed) and random final answers."""
    from envs.experts import TOOL_OF_FAMILY
    from envs.parsing import format_tool_call

    rng = random.Random(seed)

    def noise(n: int) -> str:
        return "".join(rng.choice(PRINTABLE) for _ in range(rng.randint(1, n)))

    def act(messages: list[dict], task: dict) -> str:
        name, argument = TOOL_OF_FAMILY.get(task.get("family"), ("calculator", "expression"))
        roll = rng.random()
        if roll < 0.15:
            return noise(40)
        if roll < 0.4:
            return format_tool_call(name, {argument: noise(12)})
        if roll < 0.85:  # the usual breakages: cut-off JSON, unclosed tag, wrong name
            return rng.choice(
                [
                    "<tool_call>{" + noise(20),
                    "<tool_call>" + noise(20) + "</tool_call>",
                    format_tool_call(noise(6), {argument: noise(8)}),
                ]
            )
        return f"The answer is {rng.randint(-100, 10_000)}."

    return act


def scripted_actor(noise: float) -> Callable[[int], Callable]:
    """make(seed) -> a fresh scripted expert's act(); seeded per episode, so batching never changes an episode."""
    from envs.experts import ScriptedExpert

    return lambda seed: ScriptedExpert(noise=noise, seed=seed).act


def load_policy(spec: str, args: argparse.Namespace, greedy: bool):
    """(policy, tokenizer) for a model folder, 'tiny', 'scripted' or 'random'."""
    from rlagent.modeling import load_tokenizer

    if spec in ("scripted", "random"):
        tokenizer = load_tokenizer(args.tokenizer or "tiny")
        make = scripted_actor(args.noise) if spec == "scripted" else random_actor
        return TextPolicy(make, tokenizer, per_episode=True), tokenizer
    from transformers.utils import logging

    from rlagent.config import ModelConfig
    from rlagent.modeling import load_causal_lm

    logging.disable_progress_bar()  # no "Loading weights" bar in transcripts
    tokenizer = load_tokenizer(spec)
    model = load_causal_lm(ModelConfig(name_or_path=spec), tokenizer, seed=args.seed)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    policy = ModelPolicy(model, tokenizer, args.max_new_tokens, args.temperature, greedy=greedy)
    return policy, tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# Playing and recording episodes


def play(
    policy,
    tokenizer,
    env_id: str,
    episodes: int,
    seed: int,
    split: str,
    batch_size: int = 64,
    max_total_tokens: int = 1024,
) -> list[Trajectory]:
    """Episodes seed, seed+1, ... in engine batches of `batch_size` (the environments are reused across batches)."""
    envs = make_envs(env_id, min(batch_size, episodes), split=split)
    batches = []
    for start in range(0, episodes, batch_size):
        seeds = [seed + i for i in range(start, min(start + batch_size, episodes))]
        batches.append(run_episodes(policy, envs[: len(seeds)], seeds, tokenizer, max_total_tokens=max_total_tokens))
    for env in envs:
        env.close()
    return batches


def episode_records(traj: Trajectory, env_id: str) -> list[dict]:
    """One JSON-ready dict per episode: the SFT fields (messages, tools) first, then outcome and tokens."""
    records = []
    for i in range(len(traj)):
        length = int(traj.attention_mask[i].sum())
        records.append(
            {
                "messages": traj.messages[i],
                "tools": traj.tools[i],
                "env": env_id,
                "seed": traj.seeds[i],
                "reward": float(traj.env_reward[i]),
                "reward_components": traj.reward_components[i],
                "success": bool(traj.success[i]),
                "turns": int(traj.turns[i]),
                "tool_calls": int(traj.tool_calls[i]),
                "invalid_tool_calls": int(traj.invalid_tool_calls[i]),
                "tool_call_turns": int(traj.tool_call_turns[i]),
                "truncated": bool(traj.truncated[i]),
                "missing_eos": bool(traj.missing_eos[i]),
                "render_mismatch": bool(traj.render_mismatch[i]),
                "task": traj.tasks[i],
                "input_ids": traj.input_ids[i, :length].tolist(),
                "policy_mask": [int(m) for m in traj.policy_mask[i, :length].tolist()],
                "spans": [list(span) for span in traj.spans[i]],
            }
        )
    return records


def summarize(records: list[dict], generated_tokens: int, seconds: float) -> dict:
    """Aggregate outcome statistics over episodes."""
    n = max(len(records), 1)
    attempts = sum(r["tool_call_turns"] for r in records)
    invalid = sum(r["invalid_tool_calls"] for r in records)
    return {
        "episodes": len(records),
        "success_rate": sum(r["success"] for r in records) / n,
        "mean_reward": sum(r["reward"] for r in records) / n,
        "mean_turns": sum(r["turns"] for r in records) / n,
        "tool_calls_per_episode": sum(r["tool_calls"] for r in records) / n,
        "invalid_tool_calls": invalid,
        "invalid_tool_call_rate": invalid / attempts if attempts else 0.0,
        "truncated_rate": sum(r["truncated"] for r in records) / n,
        "missing_eos_rate": sum(r["missing_eos"] for r in records) / n,
        "render_mismatch_rate": sum(r["render_mismatch"] for r in records) / n,
        "generated_tokens": generated_tokens,
        "seconds": seconds,
        "tokens_per_s": generated_tokens / max(seconds, 1e-9),
        **wording_breakdown(records),
    }


def wording_breakdown(records: list[dict]) -> dict:
    """Success on tasks worded like training prompts vs in a wording held out for the test split.

    Task phrasing ids of held-out templates end in "*" (envs.tasks.task.phrasing_id): the unseen-wording rate measures
    generalisation to new wording, the seen-wording rate what training can reach. Empty for tasks without a phrasing.
    """
    groups: dict[str, list[bool]] = {"seen": [], "unseen": []}
    for record in records:
        phrasing = (record.get("task") or {}).get("phrasing")
        if phrasing:
            groups["unseen" if phrasing.endswith("*") else "seen"].append(bool(record["success"]))
    out = {}
    for name, outcomes in groups.items():
        if outcomes:
            out[f"{name}_wording_episodes"] = len(outcomes)
            out[f"{name}_wording_success_rate"] = sum(outcomes) / len(outcomes)
    return out


def wording_cell(stats: dict) -> str:
    """ "seen % / unseen %" success for a table cell ("" when the tasks carry no phrasing)."""
    rates = [stats.get(f"{name}_wording_success_rate") for name in ("seen", "unseen")]
    if all(rate is None for rate in rates):
        return ""
    return " / ".join("-" if rate is None else f"{rate:.1%}" for rate in rates)


def save_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# Printing (rich renders colour on a terminal and plain text otherwise; model text is never parsed as markup)

ROLE_STYLE = {"system": "dim", "user": "bold", "assistant": "green", "tool": "yellow"}
SPAN_STYLE = {"prompt": "dim", "env": "yellow", "policy": ("black on green", "black on bright_green")}


def console():
    """A rich console; when output is not a terminal (a file, a pipe, tests) tables get 200 columns, not 80."""
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    return out if out.is_terminal else Console(highlight=False, soft_wrap=True, width=200)


def _message_line(message: dict, n_tokens: int | None):
    """One transcript line: the role tag (with the turn's policy-token count) then the text and any tool calls."""
    from rich.text import Text

    role = message["role"]
    tag = f"[{role}" + (f" {message['name']}" if role == "tool" else "")
    tag += f" · {n_tokens} tokens]" if n_tokens is not None else "]"
    line = Text(tag + " ", style=f"bold {ROLE_STYLE.get(role, '')}")
    line.append(message.get("content") or "", style=ROLE_STYLE.get(role, ""))
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call)
        line.append(f"  -> {fn['name']}({json.dumps(fn['arguments'], ensure_ascii=False)})", style="bold cyan")
    return line


def _token_view(record: dict, tokenizer, plain: bool):
    """Every token, styled by span; policy tokens alternate two highlights so token boundaries show.

    Without colour (`plain`, e.g. output to a file), policy spans are wrapped in ⟦ ⟧ with | between tokens instead.
    """
    from rich.text import Text

    view = Text()
    for start, end, kind in record["spans"]:
        view.append("⟦" if plain and kind == "policy" else "")
        for j, token_id in enumerate(record["input_ids"][start:end]):
            style = SPAN_STYLE[kind][j % 2] if kind == "policy" else SPAN_STYLE[kind]
            view.append(("|" if plain and kind == "policy" and j else "") + tokenizer.decode([token_id]), style=style)
        view.append("⟧" if plain and kind == "policy" else "")
    return view


def _spans_line(record: dict):
    from rich.text import Text

    spans = " ".join(f"{kind}[{start}:{end}]" for start, end, kind in record["spans"])
    return Text(f"token spans: {spans}   (policy_mask = 1 exactly on the policy spans)", style="dim")


def _outcome_line(record: dict):
    from rich.text import Text

    ok = record["success"]
    parts = ", ".join(f"{key} {value:+.2f}" for key, value in record["reward_components"].items())
    n_total, n_policy, n_prompt = len(record["input_ids"]), sum(record["policy_mask"]), record["spans"][0][1]
    line = Text(f"reward {record['reward']:+.2f} ({parts}) · ", style="bold")
    line.append("success" if ok else "failure", style="bold green" if ok else "bold red")
    counts = f"turns {record['turns']} · tool calls {record['tool_calls']} · invalid {record['invalid_tool_calls']}"
    line.append(
        f" · {counts} · tokens {n_total} (policy {n_policy}, prompt {n_prompt}, env {n_total - n_policy - n_prompt})"
    )
    flags = [name for name in ("truncated", "missing_eos", "render_mismatch") if record[name]]
    if flags:
        line.append(" · " + ", ".join(flags), style="bold magenta")
    return line


def print_transcript(record: dict, tokenizer, index: int, show_tokens: bool = False) -> None:
    """One episode: header, messages (assistant turns with their token counts), outcome; optionally the tokens."""
    out = console()
    task = record["task"]
    out.rule(f"episode {index} · seed {record['seed']} · {record['env']} · answer {task.get('answer')!r}")
    turn_tokens = [end - start for start, end, kind in record["spans"] if kind == "policy"]
    turn = 0
    for message in record["messages"]:
        n_tokens = turn_tokens[turn] if message["role"] == "assistant" and turn < len(turn_tokens) else None
        turn += message["role"] == "assistant"
        out.print(_message_line(message, n_tokens))
    out.print(_outcome_line(record))
    out.print(_spans_line(record))
    if show_tokens:
        out.print(_token_view(record, tokenizer, plain=out.color_system is None))


def print_stats(stats: dict, title: str) -> None:
    """The one-line summary printed after the transcripts."""
    wording = wording_cell(stats)
    console().print(
        f"[bold]{title}[/bold]: {stats['episodes']} episodes · success {stats['success_rate']:.1%} · "
        f"mean turns {stats['mean_turns']:.2f} · tool calls {stats['tool_calls_per_episode']:.2f}/episode · "
        f"invalid calls {stats['invalid_tool_calls']} ({stats['invalid_tool_call_rate']:.1%} of tool-call turns) · "
        f"mean reward {stats['mean_reward']:+.3f} · {stats['generated_tokens']} generated tokens in "
        f"{stats['seconds']:.2f} s ({stats['tokens_per_s']:,.0f} tokens/s) · "
        f"render mismatches {stats['render_mismatch_rate']:.1%}"
        + (f" · success seen / unseen wording {wording}" if wording else "")
    )


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
