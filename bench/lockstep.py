"""Run two or more trainers in lock step, so a shared, busy machine slows all of them alike.

Each trainer runs in its own process (the TRL 1.12 side needs its own `trl` on PYTHONPATH). A worker stops at a
gate before its first iteration and after every iteration, reports what it measured as one JSON line, and waits
for the coordinator's "go". The coordinator lets exactly one worker run at a time and alternates them every
iteration (swapping the order each round), so contention from other jobs falls on all sides in turn, and no side
ever competes with another for the CPUs. An iteration's time is measured by the coordinator from "go" to report.

Worker side:    gate = Gate(); gate.ready(); ... gate.done(metric=...) after each iteration
Coordinator:    with Lockstep() as run: run.start("ours", cmd, env, log_path)
                    run.step("ours") -> {"seconds": ..., "cpu_seconds": ..., ...}; ...; run.stop_all()
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import deque

PREFIX = "@@lockstep "
ENV_FLAG = "BENCH_LOCKSTEP"


class Gate:
    """Worker end. Without the coordinator (ENV_FLAG unset) every call is a no-op, so workers also run alone.

    Anything but "go" (the coordinator's "stop", or its end of the pipe closing) ends the worker at once: the run
    is over, and nothing after the last measured iteration (checkpoints, final saves) is worth waiting for.
    """

    def __init__(self) -> None:
        self.enabled = os.environ.get(ENV_FLAG) == "1"
        self._cpu_start = cpu_seconds()

    def ready(self, **fields) -> None:
        """Set-up is done: report, then wait for the first "go"."""
        self._report({"event": "ready", **fields})
        self._wait()

    def done(self, **fields) -> None:
        """One iteration is done: report what it measured (plus this process's CPU seconds), then wait for "go"."""
        self._report({"event": "done", "cpu_seconds": cpu_seconds() - self._cpu_start, **fields})
        self._wait()

    def _report(self, fields: dict) -> None:
        if self.enabled:
            sys.stdout.write(PREFIX + json.dumps(fields) + "\n")
            sys.stdout.flush()

    def _wait(self) -> None:
        if self.enabled and sys.stdin.readline().strip() != "go":
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        self._cpu_start = cpu_seconds()


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: less sensitive to other jobs than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class WorkerFailed(RuntimeError):
    """A worker exited before reporting; the message carries the tail of its log."""


class Worker:
    """Coordinator end of one worker process; its own output goes to `log_path`."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: str) -> None:
        self.name, self.log_path = name, log_path
        self.log = open(log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**env, ENV_FLAG: "1"},
            bufsize=1,
        )

    def next_report(self) -> dict:
        """Read the worker's stdout up to its next report; other lines go to the log."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                raise WorkerFailed(
                    f"{self.name} exited (code {self.proc.returncode}) before reporting:\n{self.tail()}"
                )
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX) :])
            self.log.write(line)
            self.log.flush()

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 60) -> int:
        """Tell the worker to exit (it is waiting at its gate) and reap it."""
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        for line in self.proc.stdout:
            self.log.write(line)
        code = self.proc.wait(timeout=timeout)
        self.log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))


class Lockstep:
    """Start workers one after another (set-up never overlaps), then step them one at a time."""

    def __init__(self) -> None:
        self.workers: dict[str, Worker] = {}

    def __enter__(self) -> Lockstep:
        # A killed coordinator must not leave workers behind: turn SIGTERM into SystemExit, so __exit__ runs.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers.values():
            worker.kill()

    def start(self, name: str, cmd: list[str], env: dict | None, log_path: str) -> dict:
        """Launch a worker and wait until it is ready; returns its ready report (with set-up seconds)."""
        t0 = time.perf_counter()
        worker = Worker(name, cmd, dict(os.environ if env is None else env), log_path)
        self.workers[name] = worker
        report = worker.next_report()
        report["setup_seconds"] = time.perf_counter() - t0
        return report

    def step(self, name: str) -> dict:
        """Let `name` run one iteration; returns its report with the coordinator-measured `seconds`."""
        worker = self.workers[name]
        t0 = time.perf_counter()
        worker.go()
        report = worker.next_report()
        report["seconds"] = time.perf_counter() - t0
        return report

    def stop(self, name: str) -> int:
        """End one worker (it is waiting at its gate)."""
        return self.workers.pop(name).stop()

    def stop_all(self) -> dict[str, int]:
        return {name: self.stop(name) for name in list(self.workers)}


def round_order(names: list[str], round_index: int) -> list[str]:
    """Rotate who goes first each round, so no side always runs right after the same other side."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]
