"""Field declarations for the typed configs: `doc(...)` (a field with its one-line help and allowed range) and
`Range`, with the ranges the configs share. Re-exported by rlagent.common.config, where callers import them from."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Range:
    """The values a numeric field allows: `low`/`high` bounds (None = unbounded), each inclusive or not.

    Every int and float field has one: a field that declares none gets the default for its type (ints >= 0, floats
    finite), so a negative count or an inf/nan learning rate never reaches the training loop."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return self.high is None or value < self.high or (value == self.high and self.high_inclusive)

    def describe(self) -> str:
        """'> 0', '>= 0', 'in [0, 1]', 'in (0, 1]', 'finite'."""
        if self.low is not None and self.high is not None:
            left, right = "[" if self.low_inclusive else "(", "]" if self.high_inclusive else ")"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        if self.high is not None:
            return f"{'<=' if self.high_inclusive else '<'} {self.high:g}"
        return "finite"


POSITIVE = Range(0, None, low_inclusive=False)  # > 0
NON_NEGATIVE = Range(0, None)  # >= 0
AT_LEAST_ONE = Range(1, None)  # >= 1 (counts and sizes)
FRACTION = Range(0, 1)  # in [0, 1]
# AdamW's first step moves a weight by ~lr, which must fit in float32 (max 3.4e38): beyond that torch raises.
LEARNING_RATE = Range(0, 1e38)  # 0 allowed: a run that only measures (gradients, metrics) without moving
FINITE = Range()
DEFAULT_RANGES = {int: NON_NEGATIVE, float: FINITE}


def doc(help: str, default: Any = MISSING, *, factory: Any = MISSING, range: Range | None = None):
    """A dataclass field with a one-line help text (shown by `--help`) and, for numbers, the values it allows."""
    metadata = {"help": help, "range": range}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)
