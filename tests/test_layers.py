"""The import layers of the project, checked on the source (AST) so that no test run can hide an import.

    envs <- rlagent/common <- reward_models <- rlagent/algorithms <- rlagent/rollout <- rlagent/training
         <- rlagent/train_*.py <- rlagent/serving <- rlagent/cli

A layer is a package, so the folders show the layers. A layer may import the layers MAY_IMPORT grants it (never one
to its right). Every import counts, including those inside functions: a lazy import is still a dependency.
LAYER_ORDER and MAY_IMPORT below are the source of truth; the README's "Architecture" section draws them.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "rlagent", "reward_models")

# The layers, left to right, ARE the packages: a module's layer is its top-level package, or for rlagent the
# subpackage it lives in (the stage scripts rlagent/train_*.py, the Python API over them, rlagent/api.py, and the
# package root are the "stages" layer).
LAYER_ORDER = ("envs", "common", "reward_models", "algorithms", "rollout", "training", "stages", "serving", "cli")
LAYER_DOCS = {
    "envs": "environments, tools, tasks and the scripted experts: plain Python, no training code",
    "common": "rlagent/common: config, data reading, model/tokenizer loading, tiny default, chat templates",
    "reward_models": "reward models: heads, losses, preference pairs, scoring",
    "algorithms": "rlagent/algorithms: the RL math, pure tensor functions",
    "rollout": "rlagent/rollout: the multi-turn engine, generation, policies, episode schedule, transcripts",
    "training": "rlagent/training: the supervised loop, PPO's models and update, checkpoints, tracking",
    "stages": "rlagent/train_{sft,reward,ppo,distill}.py (users launch them by path) and api.py over them",
    "serving": "rlagent/serving: export (HF, ONNX, INT8), the OpenAI-compatible server, A/B arms, request log",
    "cli": "rlagent/cli: the `rlagent` command, eval, rollout, quickstart, sweep, export, serve",
}

# layer -> the layers its modules may import (its own included); the math imports nothing of the project
MAY_IMPORT = {
    "envs": {"envs"},
    "common": {"envs", "common"},
    "reward_models": {"envs", "common", "reward_models"},
    "algorithms": {"algorithms"},
    "rollout": {"envs", "common", "rollout"},
    "training": {"envs", "common", "reward_models", "algorithms", "training"},
    "stages": set(LAYER_ORDER) - {"serving", "cli"},
    "serving": {"envs", "common", "rollout", "serving"},  # serves policies through the rollout backends
    "cli": set(LAYER_ORDER),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported dotted name refers to (its longest known prefix), or None if third-party."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_names(module: str, path: Path) -> list[str]:
    """Every dotted name the file imports, at any depth (functions and classes included)."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: anchored at this module's package
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names += [f"{base}.{alias.name}" for alias in node.names] + [base]
    return names


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        targets = {resolve(name, modules) for name in imported_names(module, path)}
        graph[module] = {target for target in targets if target is not None and target != module}
    return graph


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "rlagent":
        return parts[0]
    layer = parts[1] if len(parts) > 1 and parts[1] in LAYER_ORDER else "stages"
    assert layer != "stages" or len(parts) == 1 or parts[1].startswith("train_") or parts[1] == "api", (
        f"{module} sits at the top of rlagent/: only the stage scripts train_*.py and their Python API (api.py) do; "
        "move it into a layer's package"
    )
    return layer


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_every_module_is_in_a_known_layer():
    for module in project_modules():
        assert layer_of(module) in LAYER_ORDER, module


def test_the_layer_order_is_the_import_order():
    # each layer may import only itself and layers to its left
    for i, layer in enumerate(LAYER_ORDER):
        assert MAY_IMPORT[layer] <= set(LAYER_ORDER[: i + 1]), layer


def test_the_import_graph_sees_lazy_and_relative_imports():
    # Guards the checker itself: tiny.py imports envs inside a function, and evaluate imports the engine at the top.
    graph = import_graph()
    assert "envs.experts" in graph["rlagent.common.tiny"]
    assert "rlagent.rollout.engine" in graph["rlagent.cli.evaluate"]
    assert "envs.env" in graph["envs"]


def test_no_module_level_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", LAYER_ORDER)
def test_layer_imports_only_what_it_may(layer):
    bad = [
        f"{module} imports {target} ({layer_of(target)})"
        for module, targets in sorted(import_graph().items())
        if layer_of(module) == layer
        for target in sorted(targets)
        if layer_of(target) not in MAY_IMPORT[layer]
    ]
    assert not bad, f"layer '{layer}' may import only {sorted(MAY_IMPORT[layer])}:\n" + "\n".join(bad)


def test_envs_import_nothing_from_rlagent_or_reward_models():
    graph = import_graph()
    bad = [(m, t) for m, targets in graph.items() if m.startswith("envs") for t in targets if not t.startswith("envs")]
    assert not bad, bad
