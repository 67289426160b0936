"""`rlagent plot`: curves drawn from synthetic metrics.jsonl files match the data; bad folders are one-line errors."""

import json

import pytest

from rlagent.cli.plot import PlotError, plot_runs, read_run
from tests.conftest import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(folder, rows):
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder)


def ppo_rows(offset):
    rows = [{"step": s, "env/success_rate": 0.1 * s + offset, "env/episode_reward": s - 1.0 + offset,
             "objective/kl": 0.01 * s, "objective/entropy": 2.0 - 0.1 * s} for s in range(1, 6)]  # fmt: skip
    rows[1]["eval/success_rate"] = 0.25 + offset  # held-out success, evaluated at iterations 2 and 4 only
    rows[3]["eval/success_rate"] = 0.5 + offset
    return rows


def line_data(axis, label):
    (line,) = [line for line in axis.get_lines() if line.get_label() == label]
    return list(line.get_xdata()), list(line.get_ydata())


def test_two_runs_overlaid_and_the_lines_are_the_data(tmp_path):
    a, b = write_run(tmp_path / "a", ppo_rows(0.0)), write_run(tmp_path / "b", ppo_rows(0.05))
    out = tmp_path / "curves.png"
    figure = plot_runs([a, b], str(out))
    assert out.read_bytes()[:8] == PNG_SIGNATURE and out.stat().st_size > 10_000
    success, reward, kl, entropy = figure.axes[:4]
    steps = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert line_data(success, "a") == (steps, pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert line_data(success, "b") == (steps, pytest.approx([0.15, 0.25, 0.35, 0.45, 0.55]))
    assert line_data(success, "b held-out (eval/success_rate)") == ([2.0, 4.0], pytest.approx([0.3, 0.55]))
    assert line_data(reward, "a") == (steps, pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0]))
    assert line_data(kl, "b") == (steps, pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05]))
    assert line_data(entropy, "a") == (steps, pytest.approx([1.9, 1.8, 1.7, 1.6, 1.5]))
    # one colour per run across panels, and a legend entry for every line
    assert line_data(success, "a") and success.get_lines()[0].get_color() == kl.get_lines()[0].get_color()
    assert {t.get_text() for t in success.get_legend().get_texts()} >= {"a", "b", "a held-out (eval/success_rate)"}


def test_labels_and_a_panel_nobody_logged(tmp_path):
    rows = [{"step": 1, "env/success_rate": 0.5}, {"step": 2, "env/success_rate": float("nan")}]
    figure = plot_runs([write_run(tmp_path / "run", rows)], str(tmp_path / "x.png"), labels=["mine"])
    assert line_data(figure.axes[0], "mine") == ([1.0], [0.5])  # the NaN point is left out
    assert not figure.axes[2].get_lines() and "not logged" in figure.axes[2].texts[0].get_text()
    with pytest.raises(PlotError, match="--label"):
        plot_runs([str(tmp_path / "run")], str(tmp_path / "y.png"), labels=["a", "b"])


def test_bad_runs_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlotError, match="no metrics.jsonl"):
        read_run(str(tmp_path / "empty"))
    broken = write_run(tmp_path / "broken", [{"step": 1}])
    with open(f"{broken}/metrics.jsonl", "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(PlotError, match="line 2"):
        read_run(broken)
    proc = run_cli("rlagent", "plot", str(tmp_path / "empty"), "--out", str(tmp_path / "z.png"), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no metrics.jsonl" in proc.stderr
    assert not (tmp_path / "z.png").exists()
