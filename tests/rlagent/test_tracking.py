"""rlagent.training.tracking: run names and tags, the config in TensorBoard (text and hparams), and W&B tables per
environment — read back from the files each backend wrote."""

import glob
import os
import re

from rlagent.training.tracking import Tracker, flat_config

CONFIG = {"output_dir": "runs/x", "algo": {"kl_coef": 0.05, "estimator": "gae"}, "env": {"ids": ["a", "b"]}}
COLUMNS = ["env", "transcript", "score"]
ROWS = [["rlagent/Calculator-v0", "t1", 1.0], ["rlagent/KBSearch-v0", "t2", 0.0], ["rlagent/Calculator-v0", "t3", 0.5]]


def tensorboard_events(folder) -> list:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (path,) = glob.glob(os.path.join(folder, "events.out.tfevents.*"))
    return list(EventFileLoader(path).Load())


def test_flat_config_gives_tensorboard_scalars_and_strings():
    flat = flat_config({"a": {"b": 1, "c": [1, 2], "d": None}, "e": True})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "a.d": "None", "e": True}


def test_tensorboard_run_folder_config_text_and_hparams(tmp_path):
    tracker = Tracker(str(tmp_path), ["tensorboard"], CONFIG, "p", run_name="kl-0.05", tags=["ablation", "kl"])
    tracker.log({"env/success_rate": 0.5}, step=1)
    tracker.finish({})
    events = tensorboard_events(tmp_path / "tensorboard" / "kl-0.05")
    values = [value for event in events for value in event.summary.value]
    plugins = {value.metadata.plugin_data.plugin_name for value in values}
    assert {"text", "hparams", "scalars"} <= plugins
    texts = {v.tag: v.tensor.string_val[0].decode() for v in values if v.tag.startswith(("config", "tags"))}
    assert "kl_coef: 0.05" in texts["config/text_summary"] and texts["tags/text_summary"] == "ablation, kl"
    from tensorboard.plugins.hparams import plugin_data_pb2

    (start,) = [v for v in values if v.tag == "_hparams_/session_start_info"]
    session = plugin_data_pb2.HParamsPluginData.FromString(start.metadata.plugin_data.content).session_start_info
    assert session.hparams["algo.kl_coef"].number_value == 0.05
    assert session.hparams["tags"].string_value == "ablation, kl"
    assert session.hparams["env.ids"].string_value == "['a', 'b']"


def test_wandb_gets_name_tags_and_one_sample_table_per_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(str(tmp_path), ["jsonl", "wandb"], CONFIG, "p", run_name="named", tags=["t1"])
    assert tracker._wandb.name == "named" and list(tracker._wandb.tags) == ["t1"]
    tracker.log_table("samples", COLUMNS, ROWS, step=1, split_by="env")
    tracker.finish({})
    tables = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "table" / "**" / "*.json"),
                       recursive=True)  # fmt: skip
    (files,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files"))
    names = sorted(re.sub(r"_\d+_[0-9a-f]+\.table\.json$", "", os.path.relpath(path, files)) for path in tables)
    assert names == ["media/table/samples", "media/table/samples/rlagent/Calculator-v0",
                     "media/table/samples/rlagent/KBSearch-v0"]  # fmt: skip
    jsonl_rows = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(jsonl_rows) == 3  # samples.jsonl holds each row once, whatever the W&B split
