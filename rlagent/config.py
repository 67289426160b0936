"""Typed configuration: dataclasses loaded from YAML plus `key.sub=value` overrides, with errors that name the key.

Every stage script declares one dataclass (fields built with `doc(...)`, so each has a one-line help text) and calls
`parse_args(ConfigClass, argv)`. Shared pieces (model, LoRA, optimisation, the keys every stage has) live here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the file and (when known) the line."""


def doc(help: str, default: Any = MISSING, *, factory: Any = MISSING):
    """A dataclass field with a one-line help text (shown by `--help`)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ---------------------------------------------------------------------------------------------------------------------
# Shared config pieces


@dataclass
class TinyModelConfig:
    """Size of the embedded tiny Llama-style model (used when model.name_or_path is 'tiny')."""

    hidden_size: int = doc("Width of the residual stream.", 192)
    num_layers: int = doc("Number of transformer blocks.", 4)
    num_heads: int = doc("Attention heads (hidden_size must divide by it).", 6)
    intermediate_size: int = doc("Width of the MLP.", 512)
    max_position_embeddings: int = doc("Longest sequence the model can see (byte tokens).", 1024)


@dataclass
class LoraConfig:
    """Low-rank adapters through PEFT."""

    enabled: bool = doc("Train LoRA adapters instead of all weights.", False)
    r: int = doc("Adapter rank.", 16)
    alpha: int = doc("Adapter scaling numerator (scale = alpha / r).", 32)
    dropout: float = doc("Dropout on adapter inputs (forced to 0 during PPO).", 0.0)
    target_modules: list[str] = doc(
        "Module names to adapt.", factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
    )


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name_or_path: str = doc(
        "'tiny' = the embedded default built offline; otherwise a local Hugging Face folder.", "tiny"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "Weight dtype; auto = bf16 on a GPU that supports it, else fp32.", "auto"
    )
    tiny: TinyModelConfig = doc("Size of the tiny default model.", factory=TinyModelConfig)
    lora: LoraConfig = doc("LoRA adapters.", factory=LoraConfig)


@dataclass
class OptimConfig:
    """Optimiser, schedule and batch shape."""

    lr: float = doc("Peak learning rate (AdamW).", 1e-3)
    weight_decay: float = doc("AdamW weight decay.", 0.0)
    warmup_ratio: float = doc("Fraction of max_steps spent warming up linearly.", 0.05)
    schedule: Literal["cosine", "constant", "linear"] = doc("Learning-rate schedule after warm-up.", "cosine")
    batch_size: int = doc("GLOBAL batch size (sequences per optimizer step, over all processes).", 16)
    micro_batch_size: int = doc(
        "Sequences per forward pass on one process (gradient accumulation fills the rest).", 16
    )
    max_grad_norm: float = doc("Clip the global gradient norm to this value.", 1.0)


@dataclass
class DataSourceConfig:
    """Where a supervised stage's examples come from: a JSONL file, or the scripted experts of `envs`."""

    source: Literal["file", "expert"] = doc(
        "'file' reads data.path; 'expert' has the scripted experts play.", "expert"
    )
    path: str | None = doc("JSONL file of examples (source: file).", None)
    env_ids: list[str] = doc(
        "Environments the experts play (source: expert).", factory=lambda: ["rlagent/Calculator-v0"]
    )

    def checked_path(self) -> str:
        """data.path when source is 'file': set, and an existing file."""
        if not self.path:
            raise ConfigError("data.path must be set when data.source is 'file'")
        if not os.path.isfile(self.path):
            raise ConfigError(f"data.path: file not found: {self.path}")
        return self.path


@dataclass
class StageConfig:
    """The top-level keys every stage config has (SFT, reward model, PPO), under the same names in every YAML.

    A stage subclasses it and redefines a field only to give it its own default or help text; a redefined field
    keeps its place, so every stage's resolved config.yaml starts with these keys.
    """

    output_dir: str = doc("Where metrics, checkpoints and final/ go.", "runs/stage")
    seed: int = doc(
        "Seed for weight init, data order, generated data and sampling (process k samples with seed+k).", 0
    )
    max_steps: int = doc("Optimizer steps.", 200)
    report_to: list[str] = doc("Any of jsonl, wandb, tensorboard.", factory=lambda: ["jsonl"])
    resume_from: str | None = doc(
        "'auto' = latest checkpoint in output_dir; or a checkpoint path; null = fresh.", None
    )
    model: ModelConfig = doc("Model to start from.", factory=ModelConfig)
    optim: OptimConfig = doc("Optimiser and batch shape.", factory=OptimConfig)
    save_every: int = doc("Checkpoint every N steps (0 = never).", 100)
    keep_checkpoints: int = doc("How many recent checkpoints to keep.", 2)
    progress: bool = doc("Show a rich progress bar.", True)
    wandb_project: str = doc("W&B project name.", "rlagent")


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, allows None) for Optional[X] / X | None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is Literal:
        name = " | ".join(repr(a) for a in typing.get_args(inner))
    elif typing.get_origin(inner) in (list, dict):
        name = str(inner).replace("typing.", "")
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} | None" if optional else name


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check (and gently coerce) one value against a field type; raise ConfigError naming key and file."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: '{key}' must be {type_name(tp)}, got null")
    origin = typing.get_origin(inner)
    bad = ConfigError(f"{where}: '{key}' must be {type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in typing.get_args(inner):
            raise bad
        return value
    if origin is list:
        if isinstance(value, str):  # command-line convenience: a=x,y
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise bad
        (item_tp,) = typing.get_args(inner)
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, val_tp = typing.get_args(inner)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}", where) for k, v in value.items()}
    if inner is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if inner is float:
        # YAML 1.1 reads "1e-4" as a string; accept anything float() accepts, but not bools.
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if inner is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise bad
        return str(value)
    raise ConfigError(f"{where}: '{key}' has an unsupported type {tp}")


def _line_map(node: yaml.Node, prefix: str = "", out: dict | None = None) -> dict[str, int]:
    """Map dotted key -> 1-based line number from a composed YAML node tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            _line_map(value_node, key + ".", out)
    return out


def _build(cls: type, data: dict, prefix: str, source: str, lines: dict[str, int], base: Any = None) -> Any:
    """Recursively build dataclass `cls` from a nested dict on top of `base` (its defaults), checking every key/type.

    Starting from the default instance keeps a stage's own defaults for a shared piece (PPO's constant-lr optimiser)
    when the file sets only some of its keys.
    """
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        where = f"{source}:{lines[full]}" if full in lines else source
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key '{full}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{full}' must be a mapping of {tp.__name__} fields, got {value!r}")
            kwargs[key] = _build(tp, value, full + ".", source, lines, getattr(base, key))
        else:
            kwargs[key] = _coerce(value, tp, full, where)
    try:
        return dataclasses.replace(base, **kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ validation
        raise ConfigError(f"{source}: {prefix or 'config'}: {err}") from None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"command line: '{dotted}': '{part}' is not a mapping")
    node[parts[-1]] = value


def load_config(cls: type, path: str | None = None, overrides: list[str] | tuple = ()) -> Any:
    """Build `cls` from a YAML file and `key.sub=value` overrides (overrides win)."""
    data: dict = {}
    lines: dict[str, int] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        lines = _line_map(node) if node is not None else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
        lines.pop(key.strip(), None)
    source_desc = source if not overrides else f"{source} (+ command-line overrides)"
    return _build(cls, data, "", source_desc if path else "command line", lines)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str) -> None:
    """Write the resolved config as YAML (what actually ran)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config_to_dict(cfg), handle, sort_keys=False)


def help_text(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per field: key (type, default): doc. Defaults come from an instance, so a stage's own defaults for
    a shared piece (e.g. PPO's optimiser) are the ones shown."""
    out = []
    defaults = cls() if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            out.append(f"  {prefix}{f.name}.*: {f.metadata.get('help', '')}")
            out.extend(help_text(tp, f"{prefix}{f.name}.", default))
            continue
        out.append(f"  {prefix}{f.name} ({type_name(tp)}, default {default!r}): {f.metadata.get('help', '')}")
    return out


def run_main(main, argv: list[str] | None = None, prog: str = "rlagent"):
    """Run a stage's main(); input errors (config, data, missing files) exit with one line instead of a traceback."""
    from rlagent.data import DataError

    try:
        return main(argv)
    except (ConfigError, DataError) as err:
        raise SystemExit(f"{prog}: error: {err}") from None


def parse_args(cls: type, argv: list[str] | None = None, prog: str = "rlagent") -> Any:
    """Parse `--config FILE [key=value ...]`; `--help` lists every field. Exits with a one-line error on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(f"usage: {prog} --config FILE [key.sub=value ...]\n\n{(cls.__doc__ or '').strip()}\n\nfields:")
        print("\n".join(help_text(cls)))
        raise SystemExit(0)
    path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit(f"{prog}: error: --config needs a file path")
        path = argv[i + 1]
        del argv[i : i + 2]
    try:
        return load_config(cls, path, argv)
    except ConfigError as err:
        raise SystemExit(f"{prog}: config error: {err}") from None
