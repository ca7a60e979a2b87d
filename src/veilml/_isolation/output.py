"""Collecting what a child process writes to stdout and stderr, keeping only the tail of each task's output."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

__all__ = ["OutputCollector"]

_READ_CHUNK = 1 << 20  # bytes per read of a child's output pipe
_PIPE_SIZE = 1 << 20  # requested capacity of that pipe (Linux; best effort)


class OutputCollector:
    """Drains a child's output pipe, keeping at most ``limit`` bytes (the tail) of the current task.

    The child writes ``marker`` after each task; each marker closes one task's output.
    """

    def __init__(self, reader: Any, marker: bytes, limit: int, name: str) -> None:
        self._reader = reader
        self._marker = marker
        self._limit = limit
        self._cond = threading.Condition()
        self._kept = bytearray()
        self._total = 0
        self._pending = b""  # a tail that may be the start of a marker
        self._finished_count = 0
        self._finished: tuple[bytes, int] = (b"", 0)
        self._eof = False
        with contextlib.suppress(Exception):
            import fcntl

            fcntl.fcntl(reader.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._thread = threading.Thread(target=self._drain, name=f"{name}-output", daemon=True)
        self._thread.start()

    def _append(self, view: memoryview) -> None:
        size = len(view)
        if not size:
            return
        self._total += size
        if size >= self._limit:
            self._kept[:] = view[size - self._limit :]
            return
        self._kept += view
        excess = len(self._kept) - self._limit
        if excess > 0:
            del self._kept[:excess]

    def _drain(self) -> None:
        fd = self._reader.fileno()
        keep = len(self._marker) - 1
        try:
            while True:
                try:
                    chunk = os.read(fd, _READ_CHUNK)
                except OSError:
                    break
                if not chunk:
                    break
                with self._cond:
                    data = self._pending + chunk if self._pending else chunk
                    view = memoryview(data)
                    start = 0
                    while (at := data.find(self._marker, start)) >= 0:
                        self._append(view[start:at])
                        self._finished = (bytes(self._kept), self._total)
                        self._kept.clear()
                        self._total = 0
                        self._finished_count += 1
                        self._cond.notify_all()
                        start = at + len(self._marker)
                    cut = max(start, len(data) - keep)
                    self._append(view[start:cut])
                    self._pending = data[cut:]
                    view.release()
                    del data, chunk
        finally:
            with self._cond:
                self._append(memoryview(self._pending))
                self._pending = b""
                self._eof = True
                self._cond.notify_all()
            with contextlib.suppress(OSError):
                self._reader.close()

    def finished(self, count: int, timeout: float) -> tuple[bytes, int]:
        """Output of task number ``count`` (kept tail, total bytes), once its marker has arrived."""
        with self._cond:
            self._cond.wait_for(lambda: self._finished_count >= count or self._eof, timeout)
            if self._finished_count >= count:
                return self._finished
            return bytes(self._kept), self._total

    def at_eof(self, timeout: float) -> tuple[bytes, int]:
        """Output since the last marker, once the child's end of the pipe has closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._eof, timeout)
            return bytes(self._kept), self._total
