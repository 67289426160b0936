"""The Python API: `from rlagent import SFTTrainer, RewardTrainer, PPOTrainer` (the README's "Python API").

Each trainer takes the stage's config — a YAML path, a dict (nested or dotted keys) or the stage's config object —
and in-memory objects, then `.train()` runs the stage's own code path (rlagent/train_sft.py, train_reward.py,
train_ppo.py: what `rlagent sft|reward|ppo` runs) and returns its summary dict. The objects become what the config
would have named:
- `model` (and `tokenizer`): a model object is saved with its tokenizer to OUTPUT_DIR/input_model/ and
  `model.name_or_path` points there (PPO's reference and value model start from it too); a string is the path;
- `env` (a gymnasium.Env class, factory or instance, a TRL environment class or instance, or an id): an object is
  registered under a fresh Gymnasium id, which fills `env.ids` (PPO) or `data.env_ids` (the experts of SFT/RM);
  with a TRL-style class, `train_dataset` / `eval_dataset` are its task rows for the train / test split and
  `reward_funcs` score its episodes (as `GRPOTrainer(environment_factory=...)` does);
- `train_dataset` / `eval_dataset` of SFT and the reward model (a `datasets.Dataset` or a list of records): saved
  with `save_to_disk` under OUTPUT_DIR/input_data/ and read as `data.path` / `data.eval_path`;
- `reward_funcs` of PPO with a gymnasium env: added after `reward.functions` (either signature, see
  reward_models.functions).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re

from rlagent.common.config import check_output_dir, load_config


def resolve_config(cls: type, config) -> object:
    """The stage's config object from a YAML path, a dict (nested or dotted keys), a config object, or None."""
    if config is None:
        cfg = load_config(cls)
    elif isinstance(config, cls):
        cfg = copy.deepcopy(config)  # the trainer fills in paths; the caller's object stays as it was
    elif isinstance(config, str | os.PathLike):
        cfg = load_config(cls, str(config))
    elif isinstance(config, dict):
        cfg = load_config(cls, None, [f"{key}={json.dumps(value)}" for key, value in _dotted(config).items()])
    else:
        raise TypeError(f"config must be a YAML path, a dict or a {cls.__name__}, got {type(config).__name__}")
    check_output_dir(cfg.output_dir)
    return cfg


def _dotted(data: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}, 'c.d': 2} -> {'a.b': 1, 'c.d': 2} (the config loader nests dotted keys again)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def use_model(cfg, model, tokenizer) -> None:
    """Point cfg.model.name_or_path at `model`: a path as given, an object saved with its tokenizer first."""
    if model is None:
        if tokenizer is not None:
            raise TypeError("tokenizer= needs model= (the tokenizer is saved with the model it belongs to)")
        return
    if isinstance(model, str | os.PathLike):
        cfg.model.name_or_path = str(model)
        return
    if tokenizer is None:
        raise TypeError("model= is a model object: pass its tokenizer= too (both are saved for the stage to load)")
    from transformers.utils import logging

    logging.disable_progress_bar()  # no "Writing model shards" bar
    folder = os.path.join(cfg.output_dir, "input_model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg.model.name_or_path = os.path.abspath(folder)


def save_dataset(cfg, dataset, name: str) -> str | None:
    """A datasets.Dataset (or a list of records) saved under OUTPUT_DIR/input_data/NAME; its path, or None."""
    if dataset is None:
        return None
    if isinstance(dataset, str | os.PathLike):
        return str(dataset)
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        dataset = Dataset.from_list([dict(row) for row in dataset])
    folder = os.path.abspath(os.path.join(cfg.output_dir, "input_data", name))
    dataset.save_to_disk(folder)
    return folder


def env_id(env, train_dataset=None, eval_dataset=None, reward_funcs=None) -> str:
    """A Gymnasium id for `env` (an id string is kept): a TRL-style class or instance is wrapped in TRLEnvironment
    with the datasets as its task rows and the reward functions as its reward sources."""
    import gymnasium as gym

    from envs.registry import build_object
    from envs.trl_adapter import TRLEnvironment

    if isinstance(env, str):
        if train_dataset is not None or eval_dataset is not None or reward_funcs:
            raise TypeError("train_dataset/eval_dataset/reward_funcs with an env id: pass the environment class")
        return env
    trl_style = is_trl_env(env)
    if not trl_style and (train_dataset is not None or eval_dataset is not None):
        raise TypeError(
            "train_dataset/eval_dataset for PPO are a TRL environment class's task rows; this env is not one"
        )
    name = re.sub(r"[^A-Za-z0-9_]", "", getattr(env, "__name__", type(env).__name__)) or "Env"
    if trl_style:
        factory = env if isinstance(env, type) else (lambda: copy.deepcopy(env))

        def build(split: str = "train", **kwargs):
            rows = train_dataset if split == "train" or eval_dataset is None else eval_dataset
            return TRLEnvironment(factory, tasks=rows, reward_funcs=reward_funcs, split=split, **kwargs)
    elif isinstance(env, gym.Env):

        def build(**_):  # one instance given: every episode slot plays a copy of it
            return copy.deepcopy(env)
    else:

        def build(**kwargs):
            return build_object(env, f"<{name}>", kwargs)

    version = next(v for v in itertools.count() if f"rlagent-api/{name}-v{v}" not in gym.registry)
    new_id = f"rlagent-api/{name}-v{version}"  # a fresh id per trainer: an earlier one keeps its own objects
    gym.register(new_id, entry_point=build)
    return new_id


def is_trl_env(env) -> bool:
    """A TRL-style environment class, or an instance of one."""
    from envs.trl_adapter import is_trl_style

    return not isinstance(env, str) and is_trl_style(env if isinstance(env, type) else type(env))


class _Stage:
    """What the three trainers share: the stage module (`_module`), the resolved config and the model."""

    @staticmethod
    def _module():
        raise NotImplementedError

    def __init__(self, config=None, *, model=None, tokenizer=None):
        self.config = resolve_config(self._module().CONFIG, config)
        use_model(self.config, model, tokenizer)


class _SupervisedStage(_Stage):
    """SFT and the reward model: data from datasets, or the experts of `env`."""

    def __init__(self, config=None, *, model=None, tokenizer=None, env=None, train_dataset=None, eval_dataset=None):
        super().__init__(config, model=model, tokenizer=tokenizer)
        use_data(self.config, env, train_dataset, eval_dataset)

    def train(self) -> dict:
        return self._module().train(self.config)


class SFTTrainer(_SupervisedStage):
    """Stage 1: `SFTTrainer(config, model=, tokenizer=, train_dataset=, eval_dataset=, env=).train()`.

    Without a train_dataset, `env` (or data.env_ids) has the scripted experts play the demonstrations."""

    @staticmethod
    def _module():
        import rlagent.train_sft as train_sft

        return train_sft


class RewardTrainer(_SupervisedStage):
    """Stage 2: `RewardTrainer(config, model=, tokenizer=, train_dataset=, eval_dataset=, env=).train()`; the
    datasets hold preference pairs (TRL's formats)."""

    @staticmethod
    def _module():
        import rlagent.train_reward as train_reward

        return train_reward


def use_data(cfg, env, train_dataset, eval_dataset) -> None:
    """SFT / RM data: datasets become data.path / data.eval_path (source: file), an env the experts' environment."""
    if env is not None:
        cfg.data.env_ids = [env_id(env)]
    train_path, eval_path = save_dataset(cfg, train_dataset, "train"), save_dataset(cfg, eval_dataset, "eval")
    if train_path is not None:
        cfg.data.source, cfg.data.path = "file", train_path
    if eval_path is not None:
        if train_path is None and not cfg.data.path:
            raise TypeError("eval_dataset needs a train_dataset (or data.path): the experts' data has its own split")
        cfg.data.eval_path = eval_path


class PPOTrainer(_Stage):
    """Stage 3: `PPOTrainer(config, model=, tokenizer=, env=, reward_funcs=, train_dataset=, eval_dataset=).train()`.

    `env` replaces env.ids; `callbacks` hook into every iteration (rlagent.train_ppo.Callback)."""

    def __init__(self, config=None, *, model=None, tokenizer=None, env=None, reward_funcs=None, train_dataset=None,
                 eval_dataset=None, callbacks=()):  # fmt: skip
        super().__init__(config, model=model, tokenizer=tokenizer)
        funcs = [] if reward_funcs is None else [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
        self.reward_funcs, self.callbacks = funcs, list(callbacks)
        if env is not None:
            to_env = is_trl_env(env)
            self.config.env.ids = [env_id(env, train_dataset, eval_dataset, funcs if to_env else None)]
            if to_env:
                self.reward_funcs = []  # they score the TRL environment's episodes (its reward components)
        elif train_dataset is not None or eval_dataset is not None:
            raise TypeError("train_dataset/eval_dataset for PPO are the task rows of env= (a TRL environment class)")

    @staticmethod
    def _module():
        import rlagent.train_ppo as train_ppo

        return train_ppo

    def train(self) -> dict:
        return self._module().PPOTrainer(self.config, self.callbacks, reward_funcs=self.reward_funcs).train()
