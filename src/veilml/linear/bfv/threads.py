"""The threads the ``bfv`` engine's kernels run on: one process-wide pool, a kernel's range split across it.

The numba kernels release the GIL, so a range of independent columns or slots split in ``threads()`` parts
runs on as many cores. The calling thread runs one part itself, so a pool shared by several callers (the
worker's scheduler threads, a client) never waits on itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["set_threads", "split", "threads"]

_POOL: ThreadPoolExecutor | None = None
_THREADS: int | None = None
_LOCK = threading.Lock()


def threads() -> int:
    """Threads a kernel call may use: ``set_threads``'s value, else the CPUs this process may run on (at most 16)."""
    if _THREADS is not None:
        return _THREADS
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, 16))


def set_threads(count: int | None) -> None:
    """Use ``count`` threads per kernel call from now on (None: the available CPUs)."""
    global _THREADS, _POOL
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError(f"threads must be a positive integer or None, got {count!r}")
    with _LOCK:
        _THREADS = count
        if _POOL is not None:
            _POOL.shutdown(wait=False)
            _POOL = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(1, threads() - 1), thread_name_prefix="veilml-bfv")
        return _POOL


def split(total: int, run: Callable[[int, int], None], minimum: int = 1) -> None:
    """``run(lo, hi)`` over ``range(total)`` cut into at most ``threads()`` parts of at least ``minimum`` each."""
    parts = max(1, min(threads(), total // max(1, minimum)))
    if parts == 1:
        if total:
            run(0, total)
        return
    bounds = [total * i // parts for i in range(parts + 1)]
    pool = _pool()
    futures = [pool.submit(run, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    run(bounds[0], bounds[1])
    for future in futures:
        future.result()
