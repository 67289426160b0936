"""Tools an agent can call. Each is one typed Python function whose Google-style docstring gives its schema.

To add a tool, write such a function and name it in the env config: `tools=["calculator", my_fn]` or
`tools=["my_pkg.my_module:my_fn"]`; add it to `TOOLS` to make it available by a short name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from transformers.utils import get_json_schema

from envs.tools.calculator import calculator
from envs.tools.runner import check_arguments, run_tool
from envs.tools.search import search

TOOLS: dict[str, Callable[..., str]] = {"calculator": calculator, "search": search}

__all__ = ["TOOLS", "calculator", "check_arguments", "resolve_tool", "run_tool", "search", "tool_schema"]


def resolve_tool(spec: str | Callable) -> Callable:
    """A tool from a registry name ("calculator"), a "module:function" path, or the callable itself."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"tools: expected a name, 'module:function' or a callable, got {type(spec).__name__}")
    if spec in TOOLS:
        return TOOLS[spec]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        fn = getattr(importlib.import_module(module_name), attr, None)
        if not callable(fn):
            raise ValueError(f"tools: {spec!r} does not name a function")
        return fn
    raise ValueError(f"tools: unknown tool {spec!r}; known tools: {sorted(TOOLS)} (or use 'module:function')")


def tool_schema(fn: Callable) -> dict:
    """The JSON schema chat templates expect, built from the function's signature and docstring."""
    return get_json_schema(fn)
