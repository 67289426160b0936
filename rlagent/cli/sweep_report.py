"""What `rlagent sweep` leaves when its trials are done: the trials table (printed and OUTPUT_DIR/trials.csv), the best
values as a ready stage config (best.yaml), Optuna's history and parameter-importance plots (history.png,
importance.png) and summary.json."""

from __future__ import annotations

import csv
import json
import os
import warnings

import yaml

from rlagent.common.config import apply_overrides


def trial_rows(study, objective_key: str) -> list[dict]:
    """One row per trial: number, state, objective, last reported step, seconds, run folder, then every parameter."""
    names = sorted({name for trial in study.trials for name in trial.params})
    rows = []
    for trial in study.trials:
        last_step = max(trial.intermediate_values, default=None)
        rows.append({
            "trial": trial.number,
            "state": trial.state.name.lower(),
            objective_key: trial.value,
            "last_step": last_step,
            "seconds": round(trial.duration.total_seconds(), 1) if trial.duration else None,
            **{name: trial.params.get(name) for name in names},
            "run_dir": trial.user_attrs.get("run_dir"),
        })  # fmt: skip
    return rows


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)


def print_table(rows: list[dict]) -> None:
    """The trials as an aligned text table (run_dir left out: it is trials/trial-NNN)."""
    if not rows:
        return
    columns = [key for key in rows[0] if key != "run_dir"]

    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(row[key]) for key in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
    for line in cells:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)))


def best_config(cfg, best, overrides: list[str]) -> str:
    """The stage config file with the sweep's fixed overrides and the best trial's values, as YAML text, with a
    header saying where it came from and how to run it; output_dir points into the sweep's folder."""
    data = {}
    if cfg.config:  # read once already, without error, when the space was checked against it
        with open(cfg.config, encoding="utf-8-sig") as handle:
            data = yaml.safe_load(handle) or {}
    apply_overrides(data, overrides)
    for key, value in best.params.items():
        apply_overrides(data, [f"{key}={json.dumps(value)}"])
    data["output_dir"] = os.path.join(cfg.output_dir, "best")
    program = " ".join(cfg.command) if cfg.command else f"rlagent {cfg.stage}"
    header = (
        f"# Best of the sweep in {cfg.output_dir}: {cfg.objective.key} = {best.value:.6g} "
        f"({cfg.objective.direction}), trial {best.number}.\n"
        f"# Stage config {cfg.config or '(defaults)'} with the sweep's overrides and the best values.\n"
        f"# Run: {program} --config {os.path.join(cfg.output_dir, 'best.yaml')}\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def save_plots(study, output_dir: str) -> list[str]:
    """Optuna's optimisation history and parameter importances (fANOVA) as PNG files; importance needs at least two
    complete trials, and is left out (with a note) otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    saved = []
    plots = {"history.png": optuna_plots.plot_optimization_history}
    plots["importance.png"] = optuna_plots.plot_param_importances
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as err:
                print(f"rlagent sweep: {name} left out: {err}")
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(os.path.join(output_dir, name), dpi=120)
        plt.close(figure)
        saved.append(name)
    return saved


def write_report(cfg, study, overrides: list[str]) -> dict:
    """Table, CSV, best.yaml, plots and summary.json of the study; returns the summary."""
    from optuna.trial import TrialState

    rows = trial_rows(study, cfg.objective.key)
    write_csv(os.path.join(cfg.output_dir, "trials.csv"), rows)
    print_table(rows)
    states = [trial.state for trial in study.trials]
    summary = {
        "trials": len(states),
        **{f"trials/{state.name.lower()}": states.count(state) for state in TrialState},
        "objective": cfg.objective.key,
        "direction": cfg.objective.direction,
    }
    if states.count(TrialState.COMPLETE):
        best = study.best_trial
        with open(os.path.join(cfg.output_dir, "best.yaml"), "w", encoding="utf-8") as handle:
            handle.write(best_config(cfg, best, overrides))
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params)
        print(f"rlagent sweep: best {cfg.objective.key}={best.value:.6g} (trial {best.number}) -> "
              f"{os.path.join(cfg.output_dir, 'best.yaml')}")  # fmt: skip
    summary["plots"] = save_plots(study, cfg.output_dir)
    with open(os.path.join(cfg.output_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary
