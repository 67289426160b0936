"""`rlagent plot`: learning curves of one or more runs, overlaid, from each run's metrics.jsonl.

    rlagent plot runs/quickstart/ppo --out curves.png
    rlagent plot runs/ppo-a runs/ppo-b --label lr=1e-4 --label lr=3e-4 --out compare.png

Four panels against the iteration (`step`): success (`env/success_rate` of the training rollouts, solid; held-out
success, any `eval/...success_rate` key a run logged, dashed), reward (`env/episode_reward`), KL to the reference
(`objective/kl`) and policy entropy (`objective/entropy`). Every run has one colour in every panel and one legend
entry; a panel a run logged nothing for says so instead of drawing an empty line. A folder without metrics.jsonl, or a
line that is not JSON, is a one-line error naming the file (and line).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

PANELS = (
    ("success", ("env/success_rate",)),
    ("reward", ("env/episode_reward",)),
    ("KL to reference", ("objective/kl",)),
    ("entropy", ("objective/entropy",)),
)
HELD_OUT = re.compile(r"^eval/(.+/)?success_rate$")  # e.g. eval/success_rate, eval/rlagent/Calculator-v0/success_rate


class PlotError(ValueError):
    """A run that cannot be plotted; the message names the file."""


def read_run(run_dir: str) -> list[dict]:
    """The rows of RUN/metrics.jsonl (a file path is accepted too), in file order."""
    path = run_dir if run_dir.endswith(".jsonl") else os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise PlotError(f"{run_dir}: no metrics.jsonl there (is it a run's output_dir?)")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PlotError(f"{path}, line {number}: not JSON ({exc.msg})") from None
    return rows


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that logged `key` with a finite number and a step."""
    points = [(row["step"], row[key]) for row in rows if "step" in row and isinstance(row.get(key), (int, float))]
    points = [(step, value) for step, value in points if value == value]  # NaN != NaN
    return [float(step) for step, _ in points], [float(value) for _, value in points]


def held_out_keys(rows: list[dict]) -> list[str]:
    return sorted({key for row in rows for key in row if HELD_OUT.match(key)})


def plot_runs(run_dirs: list[str], out: str, labels: list[str] | None = None):
    """Draw the runs' curves into `out` (format from its suffix, e.g. .png) and return the matplotlib Figure.

    Each line's label is "RUN" or "RUN held-out (KEY)"; `figure.axes[i].get_lines()` holds the plotted data.
    """
    from matplotlib.figure import Figure

    labels = labels or [os.path.basename(os.path.normpath(run)) or run for run in run_dirs]
    if len(labels) != len(run_dirs):
        raise PlotError(f"{len(labels)} --label for {len(run_dirs)} runs: give one per run or none")
    runs = [read_run(run) for run in run_dirs]  # every file is checked before anything is drawn
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2).flatten()
    for ax, (title, keys) in zip(axes, PANELS):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        for index, (rows, label) in enumerate(zip(runs, labels)):
            draw_run(ax, rows, keys, label, f"C{index % 10}", held_out=title == "success")
        if ax.get_lines():
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not logged by " + ", ".join(labels), ha="center", va="center",
                    transform=ax.transAxes, wrap=True)  # fmt: skip
    figure.suptitle("rlagent: " + ", ".join(labels))
    figure.savefig(out, dpi=100)
    return figure


def draw_run(ax, rows: list[dict], keys: tuple[str, ...], label: str, color: str, held_out: bool) -> None:
    """One run's lines in one panel: the panel's key, and (success panel) every held-out success key, dashed."""
    for key in keys:
        steps, values = series(rows, key)
        if steps:
            ax.plot(steps, values, color=color, label=label, marker="." if len(steps) < 30 else None)
    for key in held_out_keys(rows) if held_out else []:
        steps, values = series(rows, key)
        ax.plot(steps, values, color=color, linestyle="--", marker="o", label=f"{label} held-out ({key})")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlagent plot", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="Run folders (each with a metrics.jsonl).")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="Image to write (.png, .svg, .pdf).")
    parser.add_argument("--label", action="append", help="Legend name per run, in order (default: folder names).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    try:
        plot_runs(args.runs, args.out, args.label)
    except PlotError as err:
        print(f"rlagent plot: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
