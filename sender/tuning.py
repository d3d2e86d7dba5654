"""Process-wide tunings, made by the ``sender`` command's entry point (``sender.cli.main``),
once per process and never on import: a library user's process is not ours to tune.

- pyarrow (imported on the first Parquet read) allocates from mimalloc by default, which
  keeps what it freed: ~30 MiB more peak memory for the same reads, and no faster. The choice
  is read from the environment when pyarrow first allocates, so it is made before that.
- Arrow buffers are allocated by one thread and freed by others, so glibc's per-thread arenas
  keep growing holes that it would not return on its own: on a 2 GB batch giving the heap's
  free pages back (``malloc_trim``) is ~50 MiB of peak memory. Without ``tune_process``,
  ``release_free_memory`` does nothing.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

__all__ = ["release_free_memory", "tune_process"]

_trim: Callable[[int], object] | None = None
_tuned = False


def tune_process() -> None:
    """Make the tunings above; a second call changes nothing."""
    global _trim, _tuned
    if _tuned:
        return
    _tuned = True
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    try:
        _trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        _trim = None


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (blocking: call it off the event loop);
    nothing unless ``tune_process`` ran in this process."""
    if _trim is not None:
        _trim(0)
