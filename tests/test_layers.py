"""The import layers of the project, checked on the source (AST) so that no test run can hide an import.

    envs  <-  common  <-  reward_models  <-  engine  <-  stages

A layer may import the layers to its left and itself, never one to its right. Every import counts, including those
inside functions: a lazy import is still a dependency. LAYERS below is the source of truth; the README's
"Architecture" section describes it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "rlagent", "reward_models")

# layer -> the modules (or whole packages, written "pkg.*") in it
LAYERS = {
    # Environments, tools, tasks and the scripted experts: plain Python, no training code.
    "envs": {"envs.*"},
    # What the training stages and the reward-model package share: config dataclasses, data reading, model and
    # tokenizer loading, the tiny tokenizer/model, tokenisation and chat-template rendering.
    "common": {
        "rlagent.config",
        "rlagent.data",
        "rlagent.modeling",
        "rlagent.model_sources",
        "rlagent.tiny",
        "rlagent.chat",
        "rlagent.chat_templates",
    },
    # Reward models: heads, losses, preference pairs, scoring.
    "reward_models": {"reward_models.*"},
    # The rollout engine and the PPO building blocks the stages are assembled from (ppo_models loads reward models).
    "engine": {
        "rlagent.decoding",
        "rlagent.policies",
        "rlagent.rollout",
        "rlagent.transcripts",
        "rlagent.ppo_core",
        "rlagent.ppo_models",
        "rlagent.output_head",
        "rlagent.ppo_schedule",
        "rlagent.tracking",
        "rlagent.training",
        "rlagent.fit",
        "rlagent.ppo_config",
    },
    # Entry points: one script per stage, eval, the rollout CLI, the quickstart and the `rlagent` command.
    "stages": {
        "rlagent",
        "rlagent.cli",
        "rlagent.train_sft",
        "rlagent.train_reward",
        "rlagent.train_ppo",
        "rlagent.evaluate",
        "rlagent.rollout_cli",
        "rlagent.quickstart",
    },
}

# layer -> the layers its modules may import (its own included)
MAY_IMPORT = {
    "envs": {"envs"},
    "common": {"envs", "common"},
    "reward_models": {"envs", "common", "reward_models"},
    "engine": {"envs", "common", "reward_models", "engine"},
    "stages": set(LAYERS),
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


def in_layer(module: str, layer: str) -> bool:
    return any(
        module == member or (member.endswith(".*") and (module + ".").startswith(member[:-1]))
        for member in LAYERS[layer]
    )


def layer_of(module: str) -> str:
    homes = [layer for layer in LAYERS if in_layer(module, layer)]
    assert len(homes) == 1, f"{module} is in layers {homes}; add it to exactly one in tests/test_layers.py LAYERS"
    return homes[0]


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


def test_every_module_is_in_exactly_one_layer():
    for module in project_modules():
        layer_of(module)


def test_the_import_graph_sees_lazy_and_relative_imports():
    # Guards the checker itself: tiny.py imports envs inside a function, and evaluate imports the engine at the top.
    graph = import_graph()
    assert "envs.experts" in graph["rlagent.tiny"]
    assert "rlagent.rollout" in graph["rlagent.evaluate"]
    assert "envs.env" in graph["envs"]


def test_no_module_level_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", list(LAYERS))
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
