"""GSM8K-format grade-school math with the calculator tool: a task family read from data, for GPU users.

A record has `question` and `answer`; the answer's worked solution marks each computation as `<<expr=result>>`
and ends with `#### N` (GSM8K's format, e.g. "She sold 48/2 = <<48/2=24>>24 clips.\\n#### 72"). The task is the
question; the target is N; the scripted expert replays the annotations as calculator calls, one per turn, then
answers N (that is the demonstration SFT imitates and the "chosen" side of preference pairs).

Sources (`path`), always read through `datasets`:
  - a .jsonl / .json / .parquet file: its records are split into train and test by a stable hash of the question
    (envs.tasks.task.item_split, ~20 % test), so no question is in both;
  - a folder: files whose names contain "train" / "test" are those splits (e.g. GSM8K's own train.jsonl and
    test.jsonl); a folder without such names is read whole and split by hash like a file;
  - anything else is a Hugging Face Hub dataset id with GSM8K's "main" config and train/test splits (e.g.
    "openai/gsm8k"); offline, that is a one-line error saying so.
The default `path` is $RLAGENT_GSM8K (so CLIs that only take an environment spec can point at the data), else
"openai/gsm8k".

Records the expert could not replay are left out and counted (`GSM8KSource.skipped`): an annotation the calculator
rejects or computes differently from the annotated result (e.g. "%" or "^" operators), a missing "#### N", more
calculator steps than `max_turns - 1`, or a question longer than the environment's prompt limit.

    env = make_env(path="data/gsm8k", split="test")                   # or gym.make("rlagent/GSM8K-v0", path=...)
    RLAGENT_GSM8K=data/gsm8k rlagent eval --policy scripted --env envs.gsm8k:make_env --episodes 50
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import random
import re
from dataclasses import dataclass

from envs.env import MAX_PROMPT_CHARS, ToolUseEnv
from envs.grading import numbers_match
from envs.tasks.task import Task, check_split, item_split
from envs.tools.calculator import CalculatorError, calculator, evaluate

FAMILY = "gsm8k"
DEFAULT_SOURCE = "openai/gsm8k"
SOURCE_ENV_VAR = "RLAGENT_GSM8K"
DEFAULT_MAX_TURNS = 10
ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]*)>>")
FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class GSM8KError(ValueError):
    """A GSM8K source that cannot be read; the message names it."""


@dataclass(frozen=True)
class GSM8KSource:
    """One split's usable tasks, and how many records were left out (see the module doc)."""

    tasks: tuple[Task, ...]
    skipped: int


def record_to_task(record: dict, split: str, max_steps: int = DEFAULT_MAX_TURNS - 1) -> Task | None:
    """The Task of one GSM8K record: the question, the `#### N` answer and the annotations as calculator calls;
    None when the expert could not replay it (see the module doc)."""
    question, answer = str(record.get("question") or "").strip(), str(record.get("answer") or "")
    final = FINAL.search(answer)
    if not question or len(question) > MAX_PROMPT_CHARS or final is None:
        return None
    steps = ANNOTATION.findall(answer)
    if len(steps) > max_steps or not all(_replays(expression, result) for expression, result in steps):
        return None
    solution = [{"name": "calculator", "arguments": {"expression": expression.strip()}} for expression, _ in steps]
    target = final.group(1).replace(",", "")
    return Task(question, target, "number", 1, FAMILY, split, key=question, solution=solution)


def _replays(expression: str, result: str) -> bool:
    """Whether the calculator computes the annotated result from the annotated expression."""
    try:
        value = evaluate(expression.strip())
        return numbers_match(float(value), float(result.strip().replace(",", "")))
    except (CalculatorError, ValueError, ArithmeticError):
        return False


@functools.lru_cache(maxsize=16)
def load_source(path: str, split: str, max_steps: int = DEFAULT_MAX_TURNS - 1) -> GSM8KSource:
    """One split of a GSM8K source (cached: every environment of a batch shares it)."""
    check_split(split)
    records, by_hash = _read_records(path, split)
    tasks, skipped = [], 0
    for record in records:
        if by_hash and item_split(str(record.get("question", "")).strip()) != split:
            continue
        task = record_to_task(record, split, max_steps)
        skipped += task is None
        tasks += [] if task is None else [task]
    if not tasks:
        raise GSM8KError(f"GSM8K source {path!r}: no usable {split} records ({skipped} left out; see envs/gsm8k.py)")
    return GSM8KSource(tuple(tasks), skipped)


def _read_records(path: str, split: str) -> tuple[list[dict], bool]:
    """(records, whether they still need splitting by hash): a local file or folder, or a Hub dataset's split."""
    import datasets

    if os.path.isfile(path):
        return _read_files([path]), True
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if _suffix(f) in LOCAL_SUFFIXES)
        named = [f for f in files if split in os.path.basename(f).lower()]
        if not files:
            raise GSM8KError(f"GSM8K source {path!r}: a folder with no .jsonl, .json or .parquet file")
        return (_read_files(named), False) if named else (_read_files(files), True)
    try:
        return list(datasets.load_dataset(path, "main", split=split)), False
    except Exception as exc:  # datasets raises many types for "not found" and "offline"; all mean the same here
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise GSM8KError(f"GSM8K source {path!r}: not a local file or folder, and not loadable from the Hugging Face "
                         f"Hub{offline}: {reason}") from None  # fmt: skip


def _read_files(files: list[str]) -> list[dict]:
    import datasets

    builder = LOCAL_SUFFIXES[_suffix(files[0])]
    if any(LOCAL_SUFFIXES[_suffix(f)] != builder for f in files):
        raise GSM8KError(f"GSM8K files {files}: mix JSON and Parquet; keep one format per split")
    try:
        return list(datasets.load_dataset(builder, data_files=files, split="train"))
    except Exception as exc:
        raise GSM8KError(f"GSM8K file(s) {files}: unreadable by datasets ({type(exc).__name__})") from None


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def make_env(
    path: str | None = None, split: str = "train", max_turns: int = DEFAULT_MAX_TURNS, **kwargs
) -> ToolUseEnv:
    """A ToolUseEnv over one split of a GSM8K source with the calculator tool (`path`: see the module doc).

    Episode seed s picks the task: a test-split environment draws from the test records only."""
    source = load_source(path or os.environ.get(SOURCE_ENV_VAR) or DEFAULT_SOURCE, split, max_turns - 1)

    def sample_task(rng: random.Random, split: str) -> Task:
        return dataclasses.replace(source.tasks[rng.randrange(len(source.tasks))])  # a copy: the cache is shared

    return ToolUseEnv(task_family=FAMILY, task_source=sample_task, tools=[calculator], split=split,
                      max_turns=max_turns, **kwargs)  # fmt: skip
