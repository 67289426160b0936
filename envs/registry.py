"""`make_env(spec, **kwargs)`: one environment from any of the three ways in.

1. A registered Gymnasium id: rlagent's own (`rlagent/Calculator-v0`, registered by `import envs`), one the user's code
   registered with `gymnasium.register`, or one a user package declares as an entry point in the `gymnasium.envs`
   group (`[project.entry-points."gymnasium.envs"] mypkg = "mypkg:register_envs"`). Gymnasium >= 1.0 no longer loads
   those entry points itself, so the first unknown id loads them all here (each entry point is imported and, when it
   is a function, called), then looks again.
2. `module:attr`, with `module` importable from the working directory (put on sys.path when missing) or PYTHONPATH,
   and `attr` one of
   - a `gymnasium.Env` subclass: constructed with the kwargs;
   - a factory (any callable) returning a `gymnasium.Env`: called with the kwargs;
   - a TRL-style environment class (not a gymnasium.Env, with a `reset` method and public methods, the tools):
     wrapped in `envs.trl_adapter.TRLEnvironment`, which gets the kwargs (see there);
   - the id of an environment that importing `module` registers (Gymnasium's own `module:Env-v0` form).
3. A TRL-style class given as `module:Class` is point 2's third case; a factory returning such an instance is
   wrapped the same way.

Keyword arguments. Each kwarg goes to the constructor or factory when its signature takes it (or takes **kwargs).
`split` is special: an environment that takes no `split` parameter is built without it and a warning says so,
because then the "train" and "test" episodes come from the same source (held-out evaluation is not held out).
Any other kwarg the environment does not take is an error naming the spec and the kwarg.

Errors are one line that names the spec: a module that cannot be imported, an attribute the module lacks, an
attribute of the wrong kind, a constructor that raised, an unknown id.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
import warnings
from collections.abc import Callable

import gymnasium as gym

from envs.trl_adapter import is_trl_style

ENTRY_POINT_GROUP = "gymnasium.envs"
_entry_points_loaded = False


class EnvSpecError(ValueError):
    """An environment spec that cannot be turned into an environment; the message names the spec."""


def make_env(spec: str, **kwargs) -> gym.Env:
    """The environment `spec` names (a registered id or `module:attr`), built with `kwargs` (see the module doc)."""
    if not isinstance(spec, str) or not spec.strip():
        raise EnvSpecError(f"rlagent: environment spec must be a non-empty string, got {spec!r}")
    if ":" in spec:
        return _from_module(spec, kwargs)
    return _from_registry(spec, spec, kwargs)


def build_envs(spec: str, n: int, split: str = "train", wrappers: str | None = None, wrapper_seed: int = 0,
               **kwargs) -> list[gym.Env]:  # fmt: skip
    """n independent environments for the rollout engine: made, checked against envs.protocol (the first one, reset
    once with seed 0), then wrapped by the `wrappers` spec (envs.wrappers.wrap_env, e.g. "prompt_injection:0.3")."""
    from envs.protocol import check_env
    from envs.wrappers import wrap_env

    made = [make_env(spec, split=split, **kwargs) for _ in range(n)]
    if made:
        check_env(made[0], spec)
    return [wrap_env(env, wrappers, seed=wrapper_seed) for env in made]


# ----- registered ids ------------------------------------------------------------------------------------------------


def _from_registry(env_id: str, spec: str, kwargs: dict) -> gym.Env:
    if env_id not in gym.registry:
        load_entry_points()
    if env_id not in gym.registry:
        known = ", ".join(sorted(i for i in gym.registry if i.startswith("rlagent/")))
        raise EnvSpecError(
            f"rlagent: unknown environment {spec!r}: not a registered Gymnasium id (rlagent's: {known}; yours: "
            f"register it, or declare a '{ENTRY_POINT_GROUP}' entry point) and not 'module:attr'"
        )
    entry_point = gym.spec(env_id).entry_point
    creator = entry_point if callable(entry_point) else gym.envs.registration.load_env_creator(entry_point)
    try:
        return gym.make(env_id, **_accepted(creator, kwargs, spec))
    except EnvSpecError:
        raise
    except Exception as exc:
        raise EnvSpecError(f"rlagent: building environment {spec!r} raised {type(exc).__name__}: {exc}") from exc


def load_entry_points() -> None:
    """Import every `gymnasium.envs` entry point once (calling it when it is a function), as gym < 1.0 did."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry_point.load()
            if inspect.isfunction(loaded):
                loaded()
        except Exception as exc:  # one broken plugin must not hide every other environment
            warnings.warn(f"rlagent: entry point {entry_point.value!r} ({ENTRY_POINT_GROUP}) failed: {exc}",
                          stacklevel=2)  # fmt: skip


# ----- module:attr ---------------------------------------------------------------------------------------------------


def _from_module(spec: str, kwargs: dict) -> gym.Env:
    module_name, _, attr = spec.partition(":")
    module = _import(module_name, spec)
    if not hasattr(module, attr):
        if attr in gym.registry:  # gymnasium's own form: importing the module registered the id
            return _from_registry(attr, spec, kwargs)
        raise EnvSpecError(f"rlagent: environment {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return build_object(getattr(module, attr), spec, kwargs)


def _import(module_name: str, spec: str):
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # `rlagent` is a console script: its sys.path[0] is the venv's bin, not the cwd
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise EnvSpecError(f"rlagent: environment {spec!r}: no module named {exc.name!r} in the working directory "
                               f"({cwd}) or on PYTHONPATH") from exc  # fmt: skip
        raise EnvSpecError(f"rlagent: importing {module_name!r} for environment {spec!r} failed: {exc}") from exc
    except Exception as exc:
        raise EnvSpecError(f"rlagent: importing {module_name!r} for environment {spec!r} raised "
                           f"{type(exc).__name__}: {exc}") from exc  # fmt: skip


def build_object(obj: object, spec: str, kwargs: dict) -> gym.Env:
    """Construct or call `obj` (what `spec` names); wrap TRL-style classes and instances."""
    from envs.trl_adapter import TRLEnvironment

    if is_trl_style(obj):
        return _call(TRLEnvironment, spec, {"environment_factory": obj, **kwargs})
    if inspect.isclass(obj) and not issubclass(obj, gym.Env):
        raise EnvSpecError(f"rlagent: environment {spec!r} is a class that is neither a gymnasium.Env subclass nor a "
                           "TRL-style environment (a `reset` method plus public tool methods)")  # fmt: skip
    if not callable(obj):
        raise EnvSpecError(f"rlagent: environment {spec!r} is a {type(obj).__name__}; expected a gymnasium.Env "
                           "subclass, a factory returning one, or a TRL-style environment class")  # fmt: skip
    env = _call(obj, spec, kwargs)
    if isinstance(env, gym.Env):
        return env
    if is_trl_style(type(env)):  # a TRL environment_factory: wrap the instance it made
        return TRLEnvironment(lambda: env)
    raise EnvSpecError(f"rlagent: environment {spec!r} returned a {type(env).__name__}, not a gymnasium.Env")


def _call(fn: Callable, spec: str, kwargs: dict):
    accepted = _accepted(fn, kwargs, spec)
    try:
        return fn(**accepted)
    except Exception as exc:
        raise EnvSpecError(f"rlagent: building environment {spec!r} raised {type(exc).__name__}: {exc}") from exc


def _accepted(fn: Callable, kwargs: dict, spec: str) -> dict:
    """The kwargs `fn` takes; drops an unaccepted `split` with a warning, errors on any other unaccepted kwarg."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read: pass everything and let the call decide
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(kwargs)
    unknown = sorted(set(kwargs) - set(parameters) - {"split"})
    if unknown:
        raise EnvSpecError(f"rlagent: environment {spec!r} takes no argument(s) {unknown}; it takes "
                           f"{sorted(parameters)}")  # fmt: skip
    if "split" in kwargs and "split" not in parameters:
        warnings.warn(f"rlagent: environment {spec!r} takes no `split`: train and test episodes come from the same "
                      "source, so evaluation is not held out", stacklevel=3)  # fmt: skip
    return {key: value for key, value in kwargs.items() if key in parameters}
