"""Metrics to metrics.jsonl, W&B and TensorBoard (any subset), sample tables, and a rich progress bar."""

from __future__ import annotations

import json
import math
import os
import time

from rlagent.common.config import config_to_dict

REPORTERS = ("jsonl", "wandb", "tensorboard")


def _clean(value):
    """JSON-safe scalar: tensors to floats, NaN/inf kept as strings JSON can carry."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _keep_rows_up_to(path: str, step: int) -> None:
    """On resume, drop rows logged after the checkpoint (they will be logged again); a fresh run starts empty.

    The trimmed file replaces the old one atomically: a kill during the rewrite must not lose the rows before the
    checkpoint. A torn last line (a kill inside a write) is dropped with the rows after the checkpoint.
    """
    if not os.path.isfile(path):
        return
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if row is not None and row.get("step", 0) <= step:
                rows.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(rows)
    os.replace(tmp, path)


class Tracker:
    """Logs on the main process only; other ranks get a no-op tracker."""

    def __init__(
        self,
        output_dir: str,
        report_to: list[str],
        config: dict,
        project: str,
        enabled: bool = True,
        resume_step: int | None = None,
        run_name: str | None = None,
        tags: list[str] | tuple = (),
    ):
        unknown = set(report_to) - set(REPORTERS)
        if unknown:
            raise ValueError(f"report_to: unknown reporter(s) {sorted(unknown)}; choose from {list(REPORTERS)}")
        self.enabled = enabled
        self.output_dir = output_dir
        self.report_to = list(report_to)
        self._jsonl = self._wandb = self._tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        # Sample tables are appended by log_table whatever report_to says, so they are trimmed the same way.
        _keep_rows_up_to(os.path.join(output_dir, "samples.jsonl"), resume_step or 0)
        if "jsonl" in report_to:
            _keep_rows_up_to(os.path.join(output_dir, "metrics.jsonl"), resume_step or 0)
            self._jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a", encoding="utf-8")
        if "wandb" in report_to:
            import wandb

            # WANDB_MODE=offline works with no network; `wandb sync OUTPUT_DIR/wandb/offline-run-*` uploads later.
            self._wandb = wandb.init(
                project=project, dir=output_dir, config=config, reinit="finish_previous", name=run_name,
                tags=list(tags) or None,
            )  # fmt: skip
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard", *([run_name] if run_name else [])))
            log_config_to_tensorboard(self._tb, config, tags)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        if self._jsonl:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        if self._wandb:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if self._tb:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "step":
                    self._tb.add_scalar(key, value, step)

    def log_table(
        self, name: str, columns: list[str], rows: list[list], step: int, split_by: str | None = None
    ) -> None:
        """Sample trajectories: a W&B table, a TensorBoard text block, and OUTPUT_DIR/samples.jsonl. `split_by` (a
        column) adds one W&B table per value, `NAME/VALUE` (the PPO samples: one table per environment)."""
        if not self.enabled:
            return
        with open(os.path.join(self.output_dir, "samples.jsonl"), "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps({"step": step, "table": name, **dict(zip(columns, row))}) + "\n")
        if self._wandb:
            import wandb

            tables = {name: wandb.Table(columns=columns, data=rows)}
            if split_by is not None:
                at = columns.index(split_by)
                for value in dict.fromkeys(row[at] for row in rows):
                    part = [row for row in rows if row[at] == value]
                    tables[f"{name}/{value}"] = wandb.Table(columns=columns, data=part)
            self._wandb.log(tables, step=step)
        if self._tb:
            text = "\n\n".join(" | ".join(str(c) for c in row) for row in rows)
            self._tb.add_text(name, text, step)

    def finish(self, summary: dict) -> None:
        if not self.enabled:
            return
        summary = {k: _clean(v) for k, v in summary.items()}
        tmp = os.path.join(self.output_dir, "summary.json.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        os.replace(tmp, os.path.join(self.output_dir, "summary.json"))
        if self._jsonl:
            self._jsonl.close()
        if self._wandb:
            self._wandb.summary.update(summary)
            self._wandb.finish()
        if self._tb:
            self._tb.close()

    @classmethod
    def for_run(cls, cfg, enabled: bool, resume_step: int) -> Tracker:
        """The tracker of a stage run from its config's common keys (output_dir, report_to, wandb_project)."""
        return cls(
            cfg.output_dir, cfg.report_to, config_to_dict(cfg), cfg.wandb_project, enabled, resume_step=resume_step,
            run_name=cfg.run_name, tags=cfg.tags,
        )  # fmt: skip


def flat_config(config: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a nested config; lists and None as strings (what TensorBoard's hparams accept)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, bool | int | float | str) else str(value)
    return out


def log_config_to_tensorboard(writer, config: dict, tags) -> None:
    """The resolved config as a YAML text block and as hparams (the HPARAMS tab), and the tags, in the run itself."""
    import yaml
    from torch.utils.tensorboard.summary import hparams

    writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
    if tags:
        writer.add_text("tags", ", ".join(tags), 0)
    flat = flat_config(config)
    if tags:
        flat["tags"] = ", ".join(tags)
    for summary in hparams(flat, {}):
        writer.file_writer.add_summary(summary)


class Progress:
    """A rich progress bar showing a few live metrics; silent when disabled or not a terminal-worthy run."""

    def __init__(self, total: int, description: str, enabled: bool = True, start: int = 0):
        self.enabled = enabled
        self._t0 = time.time()
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, completed=start, stats="")

    def update(self, step: int, **stats) -> None:
        if not self.enabled:
            return
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items())
        self._bar.update(self._task, completed=step, stats=text)

    def close(self) -> None:
        if self.enabled:
            self._bar.stop()
