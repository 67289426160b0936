"""Give freed heap memory back to the OS between training steps, so a process's peak RSS is its live tensors rather
than glibc's retained free chunks.

glibc serves the many 1-8 MiB activation tensors of a forward/backward from its heap and keeps the freed chunks
resident (it returns only the heap's top, and its dynamic mmap threshold rises to 32 MiB after the first large
frees); a LoRA SFT step on SmolLM2 then held ~6.6 GiB where its tensors need under 2. `malloc_trim(0)` releases
every whole free page of every arena (madvise) in milliseconds; unlike a low MALLOC_MMAP_THRESHOLD_, it keeps the
heap's fast reuse within a step. RLAGENT_MALLOC_TRIM=0 turns it off; a no-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


@functools.cache
def _libc():
    """glibc's handle when this process runs on it (it has malloc_trim), else None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_heap() -> bool:
    """malloc_trim(0) unless RLAGENT_MALLOC_TRIM=0; True when memory was given back."""
    if os.environ.get("RLAGENT_MALLOC_TRIM", "1") == "0" or _libc() is None:
        return False
    return bool(_libc().malloc_trim(0))
