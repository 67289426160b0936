"""Typed configuration: dataclasses loaded from YAML plus `key.sub=value` overrides, with errors that name the key.

Every stage script declares one dataclass (fields built with `doc(...)`, so each has a one-line help text) and calls
`parse_args(ConfigClass, argv)`. Shared pieces (model, LoRA, optimisation, the keys every stage has) live here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from rlagent.common.fields import AT_LEAST_ONE as AT_LEAST_ONE
from rlagent.common.fields import DEFAULT_RANGES, FRACTION, LEARNING_RATE, NON_NEGATIVE, POSITIVE, Range, doc
from rlagent.common.fields import FINITE as FINITE


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the file and (when known) the line."""


class TrainingError(RuntimeError):
    """A run that cannot go on without losing work (non-finite weights, too many skipped steps); one line, exit 1."""


INPUT_ERROR_STATUS = 2  # bad config, data or paths: the command line's fault, as argparse and most CLIs exit


def exit_with(message: str, status: int = INPUT_ERROR_STATUS):
    """Print one error line to stderr and exit with `status` (no traceback)."""
    print(" ".join(message.split("\n")), file=sys.stderr, flush=True)
    raise SystemExit(status)


def field_range(f: dataclasses.Field, tp: Any) -> Range | None:
    """The declared range of a numeric field (or of a list of numbers' items), else its type's default; None for
    non-numeric fields."""
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is list:
        (inner,) = typing.get_args(inner)
    return f.metadata.get("range") or DEFAULT_RANGES.get(inner)


def check_range(value: Any, f: dataclasses.Field, tp: Any, key: str, where: str) -> None:
    """A ConfigError naming the key (and item) and the allowed values when a number is outside its field's range."""
    allowed = field_range(f, tp)
    if allowed is None or value is None:
        return
    for index, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
        if not allowed.allows(item):
            name = key if index is None else f"{key}[{index}]"
            raise ConfigError(f"{where}: '{name}' must be {allowed.describe()}, got {item!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Shared config pieces


@dataclass
class TinyModelConfig:
    """Size of the embedded tiny Llama-style model (used when model.name_or_path is 'tiny')."""

    hidden_size: int = doc("Width of the residual stream.", 192, range=AT_LEAST_ONE)
    num_layers: int = doc("Number of transformer blocks.", 4, range=AT_LEAST_ONE)
    num_heads: int = doc("Attention heads (hidden_size must divide by it).", 6, range=AT_LEAST_ONE)
    intermediate_size: int = doc("Width of the MLP.", 512, range=AT_LEAST_ONE)
    max_position_embeddings: int = doc("Longest sequence the model can see (byte tokens).", 1024, range=AT_LEAST_ONE)


@dataclass
class LoraConfig:
    """Low-rank adapters through PEFT."""

    enabled: bool = doc("Train LoRA adapters instead of all weights.", False)
    r: int = doc("Adapter rank.", 16, range=AT_LEAST_ONE)
    alpha: int = doc("Adapter scaling numerator (scale = alpha / r).", 32, range=AT_LEAST_ONE)
    dropout: float = doc(
        "Dropout on adapter inputs (forced to 0 during PPO).", 0.0, range=Range(0, 1, high_inclusive=False)
    )
    target_modules: list[str] = doc(
        "Module names to adapt.", factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
    )


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name_or_path: str = doc(
        "'tiny' = the embedded default built offline; a local Hugging Face folder (a LoRA final/ too), a .gguf "
        "file, or a shipped short name (smollm2-135m-instruct).",
        "tiny",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "auto = fp32 weights, training under bf16 autocast and bf16 generation where the hardware has native bf16 "
        "(bf16 GPUs, AVX512-BF16/AMX CPUs), else plain fp32; float32 = no autocast; bfloat16/float16 = weights "
        "and optimizer updates in that dtype.",
        "auto",
    )
    tiny: TinyModelConfig = doc("Size of the tiny default model.", factory=TinyModelConfig)
    lora: LoraConfig = doc("LoRA adapters.", factory=LoraConfig)
    selective_head: bool = doc(
        "Apply the output head only at the positions a loss uses, in chunks (false = full B x T x V logits).", True
    )
    gradient_checkpointing: bool = doc(
        "Recompute each decoder layer in the backward pass instead of keeping its activations (less memory, ~30 % "
        "more compute); applies to the trained policy, reward model and critic.",
        False,
    )


@dataclass
class OptimConfig:
    """Optimiser, schedule and batch shape."""

    lr: float = doc("Peak learning rate (AdamW).", 1e-3, range=LEARNING_RATE)
    weight_decay: float = doc("AdamW weight decay.", 0.0, range=NON_NEGATIVE)
    warmup_ratio: float = doc("Fraction of max_steps spent warming up linearly.", 0.05, range=FRACTION)
    schedule: Literal["cosine", "constant", "linear"] = doc("Learning-rate schedule after warm-up.", "cosine")
    batch_size: int = doc(
        "GLOBAL batch size (sequences per optimizer step, over all processes).", 16, range=AT_LEAST_ONE
    )
    micro_batch_size: int = doc(
        "Sequences per forward pass on one process (gradient accumulation fills the rest).", 16, range=AT_LEAST_ONE
    )
    max_grad_norm: float = doc("Clip the global gradient norm to this value.", 1.0, range=POSITIVE)
    max_skipped_steps: int = doc(
        "Stop the run (exit 1) after this many optimizer steps in a row were skipped for a non-finite loss or "
        "gradient.",
        10,
        range=AT_LEAST_ONE,
    )


@dataclass
class DataSourceConfig:
    """Where a supervised stage's examples come from: a data file or Hub dataset, or the scripted experts of `envs`."""

    source: Literal["file", "expert"] | None = doc(
        "'file' reads data.path; 'expert' has the scripted experts play; null = 'file' when data.path is set.", None
    )
    path: str | None = doc("Data file, save_to_disk folder or Hub dataset id (source: file).", None)
    eval_path: str | None = doc("Held-out examples (like data.path); null = hold out data.eval_fraction.", None)
    env_ids: list[str] = doc(
        "Environments the experts play (source: expert).", factory=lambda: ["rlagent/Calculator-v0"]
    )

    def resolve_source(self, prog: str) -> None:
        """data.source, inferred from data.path when unset (said in one line); a path under source=expert: error."""
        if self.source == "expert" and self.path:
            raise ConfigError(f"data.path={self.path} is set but data.source=expert ignores it; drop data.source")
        if self.source is None and self.path:
            print(f"{prog}: data: reading data.path={self.path} (data.source=file, inferred from data.path)")
        self.source = self.source or ("file" if self.path else "expert")

    def checked_path(self, key: str = "data.path") -> str:
        """data.path (or data.eval_path) when source is 'file': set, and an existing file, folder or Hub id."""
        path = self.path if key == "data.path" else self.eval_path
        if not path:
            raise ConfigError(f"{key} must be set when data.source is 'file'")
        from rlagent.common.data import check_input_file  # lazily: data imports torch, the CLI's precheck must not

        check_input_file(path, key)
        return path


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
    max_steps: int = doc("Optimizer steps.", 200, range=AT_LEAST_ONE)
    report_to: list[Literal["jsonl", "wandb", "tensorboard"]] = doc(
        "Any of jsonl, wandb, tensorboard.", factory=lambda: ["jsonl"]
    )
    resume_from: str | None = doc(
        "'auto' = latest checkpoint in output_dir; or a checkpoint path; null = fresh.", None
    )
    model: ModelConfig = doc("Model to start from.", factory=ModelConfig)
    optim: OptimConfig = doc("Optimiser and batch shape.", factory=OptimConfig)
    save_every: int = doc("Checkpoint every N steps (0 = never).", 100)
    keep_checkpoints: int = doc("How many recent checkpoints to keep.", 2, range=AT_LEAST_ONE)
    progress: bool = doc("Show a rich progress bar.", True)
    wandb_project: str = doc("W&B project name.", "rlagent")
    run_name: str | None = doc("Run name: W&B's, and the TensorBoard run folder OUTPUT_DIR/tensorboard/NAME.", None)
    tags: list[str] = doc("Tags for the run (W&B tags; TensorBoard text and hparams).", factory=list)


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
    bad = ConfigError(f"{where}: '{key}' must be {type_name(tp)}, got {type(value).__name__} {value!r:.80}")
    if origin is Literal:
        if value not in typing.get_args(inner):
            raise bad
        return value
    if dataclasses.is_dataclass(inner):  # an item of a list or dict of sections (e.g. a sweep's search space)
        if not isinstance(value, dict):
            raise bad
        return _build(inner, value, key + ".", where, {})
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


def _line_map(node: yaml.Node, source: str, prefix: str = "", out: dict | None = None) -> dict[str, str]:
    """Map dotted key -> "file:line" from a composed YAML node tree. A key set twice in one mapping is an error:
    YAML loaders keep the last value silently, so the first one would be lost without a word."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            where = f"{source}:{key_node.start_mark.line + 1}"
            if key in out:
                raise ConfigError(f"{where}: key '{key}' is set twice (first at {out[key]}); keep one")
            out[key] = where
            _line_map(value_node, source, key + ".", out)
    return out


def _yaml_problem(err: yaml.YAMLError, text: str) -> tuple[str, str]:
    """(":line:column" or "", one-line description) of a YAML error; PyYAML's own text spans several lines."""
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML forbids (NUL, other controls): a bare offset
        line = text.count("\n", 0, err.position) + 1
        column = err.position - text.rfind("\n", 0, err.position)
        char = chr(err.character) if isinstance(err.character, int) else err.character
        return f":{line}:{column}", f"character {char!r} is not allowed ({err.reason})"
    if not isinstance(err, yaml.MarkedYAMLError):
        return "", " ".join(str(err).split())
    mark = err.problem_mark or err.context_mark
    position = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    text = ", ".join(part for part in (err.context, err.problem) if part)
    return position, " ".join(text.split())


def _build(cls: type, data: dict, prefix: str, source: str, lines: dict[str, str], base: Any = None) -> Any:
    """Recursively build dataclass `cls` from a nested dict on top of `base` (its defaults), checking every key/type.

    Starting from the default instance keeps a stage's own defaults for a shared piece (PPO's constant-lr optimiser)
    when the file sets only some of its keys.
    """
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        where = lines.get(full, source)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key '{full}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{full}' must be a mapping of {tp.__name__} fields, got {value!r:.80}")
            kwargs[key] = _build(tp, value, full + ".", source, lines, getattr(base, key))
        else:
            kwargs[key] = _coerce(value, tp, full, where)
            check_range(kwargs[key], fields[key], tp, full, where)
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


def _read_text(path: str) -> str:
    """The config file's text; every way it can be unreadable becomes one ConfigError that says what the path is."""
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a config file (pass a .yaml file)")
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    try:
        return raw.decode("utf-8-sig")  # -sig: a byte-order mark from a Windows editor is not part of the YAML
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = len(raw[raw.rfind(b"\n", 0, err.start) + 1 : err.start].decode("utf-8", errors="replace")) + 1
        raise ConfigError(
            f"{path}:{line}:{column}: not valid UTF-8 (byte 0x{raw[err.start]:02x}); save it as UTF-8"
        ) from None


def _parse_yaml(text: str, where: str, in_file: bool = True) -> Any:
    """yaml.safe_load with its failures as one-line ConfigErrors: syntax (file:line:column, or the column within an
    override's value), integers over Python's digit limit, nesting too deep to read."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        position, problem = _yaml_problem(err, text)
        if not in_file:
            column = position.rsplit(":", 1)[-1]
            raise ConfigError(
                f"{where}: invalid YAML value{f' at column {column}' if column else ''}: {problem}"
            ) from None
        raise ConfigError(f"{where}{position}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply to read") from None
    except ValueError as err:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise ConfigError(f"{where}: unreadable YAML value: {str(err).split(';')[0]}") from None


def _load_file(path: str) -> tuple[dict, dict[str, str]]:
    """(nested dict, dotted key -> "file:line") of a YAML config file; the top level must be a mapping."""
    text = _read_text(path)
    data = _parse_yaml(text, path)
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys (key: value lines), got {type(data).__name__}"
        )
    try:
        return data, _line_map(yaml.compose(text), path)
    except RecursionError:  # a recursive alias (a: &x {b: *x}) loads, but cannot be walked
        raise ConfigError(f"{path}: invalid YAML: nested too deeply to read") from None


def _shorten(text: str, width: int = 80) -> str:
    """An override as typed, cut to fit on the error line (a pasted 5000-digit value would bury the message)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _parse_override(item: str) -> tuple[str, Any]:
    """`key.sub=value` -> (key, value parsed as YAML; empty = empty string)."""
    if "=" not in item:
        raise ConfigError(f"command line: '{_shorten(item)}' is neither an option nor a key.sub=value override")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"command line: override '{item}' has no key before '='")
    where = f"command line: override '{_shorten(item)}'"
    value = _parse_yaml(raw, where, in_file=False) if raw.strip() else ""
    return key, value


def apply_overrides(data: dict, overrides: list[str] | tuple, lines: dict[str, str] | None = None) -> None:
    """Set each `key.sub=value` override (value parsed as YAML) in the nested dict `data` (in place)."""
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        if lines is not None:
            lines[key] = f"command line ('{_shorten(item)}')"


def load_config(cls: type, path: str | None = None, overrides: list[str] | tuple = ()) -> Any:
    """Build `cls` from a YAML file and `key.sub=value` overrides (overrides win)."""
    data, lines = _load_file(path) if path is not None else ({}, {})
    apply_overrides(data, overrides, lines)
    source = str(path) if path is not None else "command line"
    if path is not None and overrides:
        source += " (+ command-line overrides)"
    return _build(cls, data, "", source, lines)


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
        allowed = field_range(f, tp)
        limits = f", {allowed.describe()}" if allowed is not None else ""
        out.append(f"  {prefix}{f.name} ({type_name(tp)}{limits}, default {default!r}): {f.metadata.get('help', '')}")
    return out


def run_main(main, argv: list[str] | None = None, prog: str = "rlagent"):
    """Run a stage's main(); input errors (config, data, missing files) exit with one line instead of a traceback."""
    from rlagent.common.data import DataError

    try:
        return main(argv)
    except (ConfigError, DataError) as err:
        exit_with(f"{prog}: error: {err}")
    except TrainingError as err:
        exit_with(f"{prog}: error: {err}", status=1)


def precheck_args(argv: list[str], prog: str = "rlagent") -> None:
    """Read the --config file and parse the key=value overrides before a stage imports torch: an unreadable file or
    malformed YAML is reported in a fraction of a second. Keys and types are checked later, against the stage's
    dataclass, by parse_args."""
    if "-h" in argv or "--help" in argv:
        return
    try:
        if "--config" in argv and argv.index("--config") + 1 < len(argv):
            _load_file(argv[argv.index("--config") + 1])
        for item in argv:
            if "=" in item and not item.startswith("-"):
                _parse_override(item)
    except ConfigError as err:
        exit_with(f"{prog}: config error: {err}")


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
            exit_with(f"{prog}: error: --config needs a file path")
        path = argv[i + 1]
        del argv[i : i + 2]
    try:
        cfg = load_config(cls, path, argv)
        if hasattr(cfg, "output_dir"):
            check_output_dir(cfg.output_dir)
        return cfg
    except ConfigError as err:
        exit_with(f"{prog}: config error: {err}")


def arg_type(cast: type, allowed: Range):
    """An argparse `type=` for a number within `allowed` (argparse then exits 2 with one error line naming it)."""
    import argparse

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {cast.__name__} {allowed.describe()}, got {text!r}") from None
        if not allowed.allows(value):
            raise argparse.ArgumentTypeError(f"must be {allowed.describe()}, got {value}")
        return value

    parse.__name__ = cast.__name__  # argparse names the type in its messages
    return parse


@contextlib.contextmanager
def env_spec_errors(key: str):
    """An environment spec that cannot be built (envs.EnvSpecError / EnvProtocolError): a ConfigError naming `key`."""
    from envs import EnvProtocolError, EnvSpecError

    try:
        yield
    except (EnvSpecError, EnvProtocolError) as err:
        raise ConfigError(f"{key}: {str(err).removeprefix('rlagent: ')}") from None


def check_output_dir(path: str) -> None:
    """output_dir exists as a writable folder (created if missing), else one ConfigError naming the path."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"output_dir='{path}' is a file, not a folder; pick another output_dir")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output_dir='{path}' cannot be created ({err.strerror}: {err.filename})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir='{path}' is not writable; pick another output_dir")
