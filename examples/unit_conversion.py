"""A new task family in ~30 lines: length unit conversion with one typed tool, on rlagent's ToolUseEnv.

rlagent rollout --env examples.unit_conversion:make_env --policy scripted --episodes 2 --seed 0
python -c "from envs.registry import make_env; print(make_env('examples.unit_conversion:make_env').reset(seed=0))"
"""

import random

from envs import Task, ToolUseEnv
from envs.tasks.task import draw_item

METRES_PER_UNIT = {"km": 1000.0, "m": 1.0, "cm": 0.01, "mi": 1609.344, "ft": 0.3048, "in": 0.0254}


def convert(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a length from one unit to another.

    Args:
        value: The length to convert, e.g. 3.5.
        from_unit: Its unit: km, m, cm, mi, ft or in.
        to_unit: The unit wanted: km, m, cm, mi, ft or in.
    """
    if from_unit not in METRES_PER_UNIT or to_unit not in METRES_PER_UNIT:
        return f"Error: units must be among {', '.join(METRES_PER_UNIT)}"
    return f"{value * METRES_PER_UNIT[from_unit] / METRES_PER_UNIT[to_unit]:.6g}"


def sample_task(rng: random.Random, split: str) -> Task:
    """One question; draw_item keeps train and test items apart by a stable hash of the key."""
    value, source, target = draw_item(rng, split, _draw, key=lambda item: f"{item[0]}:{item[1]}>{item[2]}")
    call = {"name": "convert", "arguments": {"value": value, "from_unit": source, "to_unit": target}}
    prompt = f"How many {target} are {value} {source}?"
    return Task(prompt, convert(value, source, target), family="units", split=split, key=prompt, solution=[call])


def _draw(rng: random.Random) -> tuple[int, str, str]:
    return rng.randint(1, 999), *rng.sample(sorted(METRES_PER_UNIT), 2)


def make_env(split: str = "train", **kwargs) -> ToolUseEnv:
    """The environment: `module:attr` specs (`examples.unit_conversion:make_env`) call this with the split."""
    return ToolUseEnv(task_family="units", task_source=sample_task, tools=[convert], split=split, **kwargs)
