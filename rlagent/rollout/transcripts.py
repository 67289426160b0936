"""Episode records and how they are shown: JSON-ready per-episode records, summary statistics (with the
seen/unseen-wording breakdown), JSONL saving, coloured transcripts for `rlagent rollout`, and the sample-trajectory
table PPO logs.
"""

from __future__ import annotations

import json

from rlagent.rollout.engine import Trajectory

# ---------------------------------------------------------------------------------------------------------------------
# Records and summaries


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


RESULT_COLUMNS = ("success", "95% CI", "seen / unseen", "turns", "tool calls/ep", "invalid calls")


def result_table(title: str, lead: tuple[str, ...], tail: tuple[str, ...], rows: list[tuple[list, dict, list]]):
    """The one results table (`rlagent eval`, the quickstart): `lead` columns, RESULT_COLUMNS, `tail` columns; each
    row is (lead cells, evaluation result, tail cells)."""
    from rich.table import Table

    table = Table(title=title)
    for column in (*lead, *RESULT_COLUMNS, *tail):
        table.add_column(column)
    for lead_cells, r, tail_cells in rows:
        lo, hi = r["success_ci95"]
        cells = [f"{r['success_rate']:.1%} ({r['successes']}/{r['episodes']})", f"[{lo:.1%}, {hi:.1%}]",
                 wording_cell(r), f"{r['mean_turns']:.2f}", f"{r['tool_calls_per_episode']:.2f}",
                 f"{r['invalid_tool_call_rate']:.1%}"]  # fmt: skip
        table.add_row(*lead_cells, *cells, *tail_cells)
    return table


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


# ---------------------------------------------------------------------------------------------------------------------
# The sample-trajectory table logged by PPO (W&B table, TensorBoard text, samples.jsonl)


def render_transcript(tokenizer, input_ids, policy_mask, attention_mask) -> str:
    """Decode one episode with policy tokens wrapped in [[...]] so a reader sees exactly what was trained on."""
    parts, current, current_is_policy = [], [], None
    for token, is_policy, real in zip(input_ids.tolist(), policy_mask.tolist(), attention_mask.tolist()):
        if not real:
            break
        if current and bool(is_policy) != current_is_policy:
            text = tokenizer.decode(current, skip_special_tokens=False)
            parts.append(f"[[{text}]]" if current_is_policy else text)
            current = []
        current.append(token)
        current_is_policy = bool(is_policy)
    if current:
        text = tokenizer.decode(current, skip_special_tokens=False)
        parts.append(f"[[{text}]]" if current_is_policy else text)
    return "".join(parts)


def sample_rows(traj, tokenizer, env_names: list[str], scores, n: int = 4) -> tuple[list[str], list[list]]:
    """(columns, rows) for the sample-trajectory table: the first n episodes of each environment in the batch."""
    columns = ["env", "task", "transcript", "score", "env_reward", "success", "turns"]
    rows, shown = [], {}
    for i in range(len(traj)):
        shown[env_names[i]] = shown.get(env_names[i], 0) + 1
        if shown[env_names[i]] > n:
            continue
        task = traj.tasks[i].get("prompt", "") if isinstance(traj.tasks[i], dict) else str(traj.tasks[i])
        transcript = render_transcript(tokenizer, traj.input_ids[i], traj.policy_mask[i], traj.attention_mask[i])
        rows.append(
            [
                env_names[i],
                task,
                transcript,
                float(scores[i]),
                float(traj.env_reward[i]),
                bool(traj.success[i]),
                int(traj.turns[i]),
            ]
        )
    return columns, rows
