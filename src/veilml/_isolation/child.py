"""The child side of :class:`~veilml._isolation.IsolatedRunner`: the loop that runs tasks in a child process.

A child dies with its parent, ignores SIGINT, points file descriptors 1 and 2 at the output pipe,
and for each task runs the pickled ``(function, args)``, writes the task's end marker into the
output pipe and sends back a pickled reply: ``(number, "ok", result)``, ``(number, "error",
exception, traceback)``, or ``(number, "foreign", type name, message, traceback)`` for an exception
that cannot make the trip.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from typing import Any

__all__ = ["PICKLE", "child_main", "noop"]

PICKLE = pickle.HIGHEST_PROTOCOL
_PR_SET_PDEATHSIG = 1


def noop() -> None:
    """Task used by :meth:`IsolatedRunner.warm`: proves a child is up without importing anything."""


def _libc() -> Any:
    with contextlib.suppress(Exception):
        return ctypes.CDLL(None, use_errno=True)
    return None


def _die_with_parent(parent_pid: int, libc: Any) -> None:
    """Make this child end when the parent process ends, even if native code holds the GIL."""
    if sys.platform.startswith("linux") and libc is not None:
        with contextlib.suppress(Exception):
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(0)
                return

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch, name="veilml-parent-watch", daemon=True).start()


def _flush_output(libc: Any) -> None:
    """Push out what Python and C stdio still buffer, so it lands before the task's end marker."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    if libc is not None:
        with contextlib.suppress(Exception):
            libc.fflush(None)


def _describe_type(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _error_reply(number: int, exc: BaseException) -> bytes:
    """Pickle ``exc`` for the parent; an exception that cannot make the trip goes as text."""
    tb = "".join(traceback.format_exception(exc))
    if isinstance(exc, Exception):  # never re-raise SystemExit or KeyboardInterrupt in the parent
        with contextlib.suppress(BaseException):
            blob = pickle.dumps((number, "error", exc, tb), protocol=PICKLE)
            pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt from their args
            return blob
    try:
        message = str(exc)[:10_000]
    except BaseException:  # noqa: BLE001 - a broken __str__ must not kill the child
        message = "<message unavailable>"
    return pickle.dumps((number, "foreign", _describe_type(exc), message, tb), protocol=PICKLE)


def _execute(number: int, data: bytes) -> bytes:
    """Run one pickled ``(function, args)`` task; always return a pickled reply."""
    try:
        function, args = pickle.loads(data)
        del data
        result = function(*args)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        return _error_reply(number, exc)
    try:
        return pickle.dumps((number, "ok", result), protocol=PICKLE)
    except BaseException as exc:  # noqa: BLE001
        return _error_reply(number, TypeError(f"the result ({type(result).__name__}) could not be pickled: {exc}"))


def child_main(tasks: Any, output: Any, marker: bytes, parent_pid: int) -> None:
    """Loop of a child: receive a task, run it, mark the end of its output, send the reply."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = _libc()
    _die_with_parent(parent_pid, libc)
    out_fd = output.fileno()
    _flush_output(libc)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    number = 0
    while True:
        try:
            data = tasks.recv_bytes()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        number += 1
        reply = _execute(number, data)
        del data
        _flush_output(libc)
        with contextlib.suppress(OSError):
            os.write(out_fd, marker)
        try:
            tasks.send_bytes(reply)
        except OSError:
            return
        del reply
