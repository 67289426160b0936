"""`rlagent serve --log DIR`: served conversations and their feedback as JSONL, so traffic can become training data.

    DIR/requests.jsonl  one row per served choice: {"id", "choice", "created", "arm", "version", "user", "messages",
                        "tools", "prompt", "completion"}; `messages` (= prompt + completion) and `tools` are what
                        `rlagent sft` reads (data.path=DIR/requests.jsonl), `prompt`/`completion` TRL's split of it
    DIR/feedback.jsonl  one row per POST /v1/feedback: {"id", "success", "created", "arm", "version"}

`rlagent ab-report DIR` reads both; its --pairs FILE writes preference pairs for `rlagent reward` from responses to the
same prompt that got opposite feedback.
"""

from __future__ import annotations

import json
import os
import threading

REQUESTS = "requests.jsonl"
FEEDBACK = "feedback.jsonl"


class RequestLog:
    """Appends rows to the two files; one lock, one flushed line per row, so a killed server loses at most the row
    being written and every complete line stays valid JSON."""

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self._lock = threading.Lock()

    def _append(self, name: str, rows: list[dict]) -> None:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        with self._lock, open(os.path.join(self.folder, name), "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()

    def served(self, rows: list[dict]) -> None:
        self._append(REQUESTS, rows)

    def feedback(self, row: dict) -> None:
        self._append(FEEDBACK, [row])


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSONL file ([] if it does not exist); a truncated last line (a killed writer) is skipped."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    return rows
