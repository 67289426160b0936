"""What every benchmark prints besides its numbers: machine load, machine, package versions, and result lines.

A result line is `RESULT {json}` on stdout; `bench/run_all.py` collects them into bench/RESULTS.md. Numbers in a
result line are always measured in that run, never typed in.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata

PACKAGES = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "gymnasium")
RESULT_PREFIX = "RESULT "


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB: VmRSS / VmHWM from /proc (Linux).

    Not ru_maxrss: on Linux that survives fork + exec, so a worker started by a 600 MiB coordinator reports at least
    600 MiB. VmHWM belongs to the process's own address space, which exec replaces. Elsewhere: ru_maxrss for both.
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (see rss_mib)."""
    return rss_mib()[1]


def uptime() -> str:
    """The `uptime` line (1/5/15-minute load averages): the machine is shared, so every timing prints it."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def load_1min() -> float:
    return os.getloadavg()[0]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """nproc, platform and CPU model, plus the GPU when there is one."""
    info = {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def versions(packages: tuple[str, ...] = PACKAGES) -> dict:
    """Installed versions in this interpreter (the TRL 1.12 side reports its own trl version separately)."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def emit(bench: str, **fields) -> None:
    """Print one machine-readable result line (collected by run_all.py)."""
    print(RESULT_PREFIX + json.dumps({"bench": bench, **fields}), flush=True)


def parse_results(text: str) -> list[dict]:
    """Every result line in a benchmark's output."""
    return [json.loads(line[len(RESULT_PREFIX) :]) for line in text.splitlines() if line.startswith(RESULT_PREFIX)]


def banner(title: str) -> None:
    """Header printed at the start of a benchmark: what runs, where, and how busy the machine is."""
    info = machine()
    print(f"== {title}\n   machine: {info['nproc']} CPUs, {info['cpu']}, {info['platform']}", flush=True)
    print(f"   versions: {' '.join(f'{k}={v}' for k, v in versions().items())}", flush=True)
    print(f"   uptime: {uptime()}", flush=True)


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    json.dump({"machine": machine(), "versions": versions(), "uptime": uptime()}, sys.stdout, indent=2)
