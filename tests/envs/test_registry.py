"""envs.registry.make_env: registered ids, entry points, and `module:attr` imported from the working directory."""

import importlib.metadata
import sys
import textwrap
import uuid

import gymnasium as gym
import pytest

from envs import EnvProtocolError, EnvSpecError, PromptInjection, ToolUseEnv, TRLEnvironment, build_envs, make_env
from envs import registry as registry_module

USER_MODULE = """
import gymnasium as gym
from gymnasium import spaces
from envs import ToolUseEnv


class EchoEnv(gym.Env):
    action_space = observation_space = spaces.Text(64)

    def __init__(self, split="train", greeting="hi"):
        self.split, self.greeting = split, greeting

    def reset(self, *, seed=None, options=None):
        return self.greeting, {"messages": [{"role": "user", "content": self.greeting}]}

    def step(self, action):
        return "", 0.0, True, False, {"messages": []}


class NoMessagesEnv(EchoEnv):
    def reset(self, *, seed=None, options=None):
        return "", {"prompt": self.greeting}


class NoSplitEnv(EchoEnv):
    def __init__(self):
        super().__init__()


def factory(split="train"):
    return ToolUseEnv(task_family="knowledge", split=split)


def not_an_env(split="train"):
    return 42


def broken(split="train"):
    raise RuntimeError("no API key")


class Counter:
    def reset(self, **kwargs):
        self.count = 0
        return "Count to 2 with increment, then say done."

    def increment(self) -> str:
        \"\"\"Add one to the counter.\"\"\"
        self.count += 1
        return str(self.count)

    def get_reward(self) -> float:
        return float(self.count == 2)


def trl_factory():
    return Counter()


class PlainClass:
    pass


gym.register(id="UserEcho-v0", entry_point=EchoEnv)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A fresh module in the working directory (not on sys.path until make_env puts the cwd there)."""
    name = f"user_envs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)
    gym.registry.pop("UserEcho-v0", None)


def test_registered_id_gets_the_split():
    env = make_env("rlagent/KBSearch-v0", split="test", max_turns=2)
    assert env.unwrapped.split == "test" and env.unwrapped.max_turns == 2


def test_env_subclass_with_kwargs(user_module):
    env = make_env(f"{user_module}:EchoEnv", split="test", greeting="hello")
    assert env.split == "test" and env.reset()[0] == "hello"


def test_factory_returning_an_env(user_module):
    env = make_env(f"{user_module}:factory", split="test")
    assert isinstance(env, ToolUseEnv) and env.split == "test" and env.task_family == "knowledge"


def test_gymnasium_module_colon_id_form(user_module):
    env = make_env(f"{user_module}:UserEcho-v0", split="test")
    assert env.unwrapped.split == "test"


def test_trl_style_class_and_factory_are_wrapped(user_module):
    for attr, kwargs in (("Counter", {"split": "test"}), ("trl_factory", {})):
        env = make_env(f"{user_module}:{attr}", **kwargs)
        assert isinstance(env, TRLEnvironment), attr
        _, info = env.reset(seed=0)
        assert info["messages"] == [{"role": "user", "content": "Count to 2 with increment, then say done."}]
        assert [schema["function"]["name"] for schema in info["tools"]] == ["increment"]


def test_env_without_split_is_built_with_a_warning(user_module):
    with pytest.warns(UserWarning, match="takes no `split`: train and test episodes come from the same source"):
        env = make_env(f"{user_module}:NoSplitEnv", split="test")
    assert env.split == "train"


@pytest.mark.parametrize(
    ("attr", "kwargs", "expected"),
    [
        ("EchoEnv", {"colour": "red"}, "takes no argument(s) ['colour']; it takes ['greeting', 'split']"),
        ("nope", {}, "has no attribute 'nope'"),
        ("PlainClass", {}, "neither a gymnasium.Env subclass nor a TRL-style environment"),
        ("not_an_env", {}, "returned a int, not a gymnasium.Env"),
        ("broken", {}, "raised RuntimeError: no API key"),
        ("gym", {}, "is a module; expected a gymnasium.Env subclass"),
    ],
)
def test_bad_attributes_are_named(user_module, attr, kwargs, expected):
    spec = f"{user_module}:{attr}"
    with pytest.raises(EnvSpecError) as error:
        make_env(spec, **kwargs)
    assert f"'{spec}'" in str(error.value) and expected in str(error.value)


def test_missing_and_broken_modules_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "typo_module_x1.py").write_text("import no_such_dependency_x1\n")
    (tmp_path / "syntax_module_x1.py").write_text("def f(:\n")
    with pytest.raises(EnvSpecError, match=r"no module named 'absent_module_x1' in the working directory \("):
        make_env("absent_module_x1:Env")
    with pytest.raises(EnvSpecError, match="importing 'typo_module_x1' for environment .* No module named 'no_such"):
        make_env("typo_module_x1:Env")
    with pytest.raises(EnvSpecError, match="importing 'syntax_module_x1' .* raised SyntaxError"):
        make_env("syntax_module_x1:Env")


def test_unknown_id_and_bad_spec():
    with pytest.raises(EnvSpecError, match="unknown environment 'nobody/Nothing-v0': not a registered Gymnasium id"):
        make_env("nobody/Nothing-v0")
    with pytest.raises(EnvSpecError, match="non-empty string"):
        make_env("")


def test_entry_points_are_loaded_for_an_unknown_id(tmp_path, monkeypatch):
    """gymnasium >= 1.0 ignores `gymnasium.envs` entry points; make_env loads them (and calls functions) once."""
    name = f"plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import gymnasium as gym\nCALLS = []\n\n\ndef register():\n    CALLS.append(1)\n"
        "    gym.register(id='PluginEnv-v0', entry_point='envs.env:ToolUseEnv')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    point = importlib.metadata.EntryPoint("user", f"{name}:register", "gymnasium.envs")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [point] if group == "gymnasium.envs" else [])
    monkeypatch.setattr(registry_module, "_entry_points_loaded", False)
    try:
        env = make_env("PluginEnv-v0", split="test")
        make_env("PluginEnv-v0")
        assert env.unwrapped.split == "test" and sys.modules[name].CALLS == [1]
    finally:
        gym.registry.pop("PluginEnv-v0", None)
        sys.modules.pop(name, None)


def test_build_envs_checks_and_wraps(user_module):
    built = build_envs("examples.unit_conversion:make_env", 3, split="test", wrappers="prompt_injection:1")
    assert len(built) == 3 and len({id(env) for env in built}) == 3
    assert all(isinstance(env, PromptInjection) and env.unwrapped.split == "test" for env in built)
    with pytest.raises(EnvProtocolError, match="info lacks 'messages'"):
        build_envs(f"{user_module}:NoMessagesEnv", 2)
