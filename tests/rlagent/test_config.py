"""Config loading: YAML + overrides, and errors that name the key, the type, the file and the line."""

import pytest

from rlagent.common.config import ConfigError, load_config
from rlagent.train_sft import SFTConfig


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "seed: 3\noptim:\n  lr: 1e-4\nmodel:\n  tiny:\n    num_layers: 3\n")
    cfg = load_config(SFTConfig, path, ["optim.batch_size=32", "report_to=[jsonl,tensorboard]", "max_steps=7"])
    assert (cfg.seed, cfg.optim.lr, cfg.model.tiny.num_layers) == (3, 1e-4, 3)
    assert (cfg.optim.batch_size, cfg.max_steps, cfg.report_to) == (32, 7, ["jsonl", "tensorboard"])


def test_unknown_key_names_key_closest_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\noptim:\n  lr: 0.1\n  bacth_size: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path)
    assert str(err.value) == f"{path}:4: unknown key 'optim.bacth_size'; did you mean 'optim.batch_size'?"


def test_wrong_type_names_key_type_and_file(tmp_path):
    path = write(tmp_path, "max_steps: ten\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path)
    assert str(err.value) == f"{path}:1: 'max_steps' must be int, got str 'ten'"


def test_wrong_type_in_override_and_literal(tmp_path):
    with pytest.raises(ConfigError, match=r"'optim.schedule' must be 'cosine' \| 'constant' \| 'linear'"):
        load_config(SFTConfig, None, ["optim.schedule=square"])
    with pytest.raises(ConfigError, match="'seed' must be int, got bool True"):
        load_config(SFTConfig, None, ["seed=true"])


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: /nope/c.yaml"):
        load_config(SFTConfig, "/nope/c.yaml")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"seed: 1\nmax_steps: 5\nseed: 2\n", ":3: key 'seed' is set twice (first at {path}:1)"),
        (b"model:\n  tiny:\n    num_layers: 2\n    num_layers: 3\n", ":4: key 'model.tiny.num_layers' is set twice"),
        (b"seed: 1\nmax_steps: \xc3\xa9\xff\n", ":2:13: not valid UTF-8 (byte 0xff)"),
        (b"seed: [1\n", ":2:1: invalid YAML: while parsing a flow sequence"),
        (b"seed: 1\x00\n", ":1:8: invalid YAML: character '\\x00' is not allowed"),
        (b"- seed\n", ": the top level must be a mapping of keys (key: value lines), got list"),
        (b"seed: " + b"1" * 4301 + b"\n", ": unreadable YAML value: Exceeds the limit (4300 digits)"),
    ],
)
def test_unreadable_config_names_file_line_and_column(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, str(path))
    assert str(err.value).startswith(f"{path}{message.format(path=path)}")
    assert "\n" not in str(err.value)


def test_byte_order_mark_is_not_part_of_the_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbfseed: 4\n")
    assert load_config(SFTConfig, str(path)).seed == 4


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: is a directory, not a config file"):
        load_config(SFTConfig, str(tmp_path))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.env_ids=[oops", "command line: override 'data.env_ids=[oops': invalid YAML value at column 6"),
        ("max_steps", "command line: 'max_steps' is neither an option nor a key.sub=value override"),
        ("=3", "command line: override '=3' has no key before '='"),
        ("data.pathh=x", "command line ('data.pathh=x'): unknown key 'data.pathh'; did you mean 'data.path'?"),
        ("max_steps=ten", "command line ('max_steps=ten'): 'max_steps' must be int, got str 'ten'"),
    ],
)
def test_bad_override_names_the_override(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, None, [override])
    assert str(err.value) == message or str(err.value).startswith(message)


def test_help_lists_every_field(capsys):
    from rlagent.train_sft import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "optim.lr (float, in [0, 1e+38], default 0.001): Peak learning rate (AdamW)." in out
    assert "model.tiny.hidden_size (int, >= 1, default 192)" in out
    assert "report_to (list[Literal['jsonl', 'wandb', 'tensorboard']], default ['jsonl'])" in out


def test_partial_nested_override_keeps_stage_defaults():
    """Setting one optimiser key keeps PPO's own optimiser defaults (constant schedule), not the class defaults."""
    from rlagent.train_ppo import PPOConfig

    cfg = load_config(PPOConfig, None, ["optim.lr=1e-5"])
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_ratio) == (1e-5, "constant", 0.0)


def test_every_stage_config_has_the_common_keys_with_its_own_defaults():
    """The keys every stage has come from StageConfig; a stage's own defaults (output folder, length) survive."""
    from rlagent.common.config import StageConfig
    from rlagent.train_ppo import PPOConfig
    from rlagent.train_reward import RewardConfig

    common = ["report_to=[jsonl,tensorboard]", "resume_from=auto", "model.name_or_path=tiny", "keep_checkpoints=3"]
    for cls, output_dir, max_steps, save_every in [
        (SFTConfig, "runs/sft", 200, 100),
        (RewardConfig, "runs/reward", 200, 100),
        (PPOConfig, "runs/ppo", 30, 10),
    ]:
        cfg = load_config(cls, None, common)
        assert isinstance(cfg, StageConfig)
        assert (cfg.output_dir, cfg.max_steps, cfg.save_every) == (output_dir, max_steps, save_every)
        assert (cfg.report_to, cfg.resume_from, cfg.keep_checkpoints) == (["jsonl", "tensorboard"], "auto", 3)


def test_every_numeric_field_has_a_range_its_default_is_in():
    """Every int/float field (and list of numbers) of every stage has a range — declared, or its type's default
    (ints >= 0, floats finite) — and the stage's own default lies inside it."""
    import dataclasses
    import math
    import typing

    from rlagent.common.config import Range, field_range
    from rlagent.train_ppo import PPOConfig
    from rlagent.train_reward import RewardConfig
    from rlagent.train_sft import SFTConfig

    def walk(cls, instance, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp, value = hints[f.name], getattr(instance, f.name)
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", f, tp, value

    numeric = 0
    for cls in (SFTConfig, RewardConfig, PPOConfig):
        for key, f, tp, default in walk(cls, cls()):
            allowed = field_range(f, tp)
            if allowed is None:
                continue
            numeric += 1
            assert isinstance(allowed, Range), key
            for item in default if isinstance(default, list) else [] if default is None else [default]:
                assert allowed.allows(item), f"{cls.__name__}.{key}: default {item!r} is not {allowed.describe()}"
    assert numeric > 60
    assert not Range().allows(math.nan) and not Range().allows(math.inf) and Range().allows(-1e300)


def test_a_list_of_numbers_is_checked_item_by_item():
    from rlagent.common.config import ConfigError
    from rlagent.training.ppo_config import PPOConfig

    with pytest.raises(ConfigError, match=r"'reward.function_weights\[1\]' must be finite, got nan"):
        load_config(PPOConfig, None, ["reward.function_weights=[1.0,.nan]"])
    assert load_config(PPOConfig, None, ["reward.function_weights=[1.0,-2]"]).reward.function_weights == [1.0, -2.0]
