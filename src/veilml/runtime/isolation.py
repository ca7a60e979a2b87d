"""Run native work on untrusted input in child processes, with a time limit and bounded output.

A worker hands bytes from the network to concrete-python's native code. Malformed bytes can keep
that code busy for minutes, make it write millions of log lines to stderr, or segfault it, and a
segfault in the server process takes every client down with it. :class:`IsolatedRunner` runs such
calls in a small pool of long-lived child processes, so a crash or a stall costs one request an
:class:`IsolatedTaskError` and the worker keeps serving.

How it works:

- Children are started with the ``multiprocessing`` "spawn" context (a fresh interpreter: no
  forked copy of the server's threads, locks or native state). A child imports this module and,
  when a task arrives, the task function's module; caches kept in that module (loaded circuits,
  keys) persist from one call to the next on the same child. As always with spawn, the child also
  imports the parent's main module when that is a script (as ``__mp_main__``): a script that
  creates a runner at import time needs the ``if __name__ == "__main__":`` guard.
- Tasks and results travel pickled over a ``multiprocessing`` pipe; tens of MB are fine.
- Output: native code writes to file descriptors 1 and 2, not through Python's ``logging``. A child
  points both at one pipe whose other end a parent thread drains without pause into a buffer that
  keeps only the last ``max_log_bytes`` bytes of the current task, so a flood of any size costs a
  few copies of each chunk and is never held whole, in memory or on disk. After each task the child
  writes a random end marker into that pipe, which tells the parent where one task's output ends.
  Output of successful tasks is dropped; after a failed task one WARNING record on the logger
  ``veilml.isolation`` (at most 2 KB) quotes the tail.
- A timeout kills the child (SIGKILL); a dead child (signal, ``os._exit``) is reaped. Either way the
  slot starts a new child on its next use.
- Children ignore SIGINT (Ctrl-C is the parent's to handle) and die with the parent: on Linux
  through ``PR_SET_PDEATHSIG``, elsewhere through a thread that watches ``os.getppid()``. Because
  Linux sends that signal when the *thread* that started the child ends, children are always
  started from one long-lived thread of the runner, not from short-lived request threads.

This is fault isolation, not a security sandbox: children run as the same user as the server and
their replies are unpickled by it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import pickle
import queue
import secrets
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

__all__ = ["IsolatedRunner", "IsolatedTaskError"]

logger = logging.getLogger("veilml.isolation")

_T = TypeVar("_T")

_READ_CHUNK = 1 << 20  # bytes per read of a child's output pipe
_PIPE_SIZE = 1 << 20  # requested capacity of that pipe (Linux; best effort)
_LOG_TAIL_BYTES = 1200  # bytes of a failed task's output quoted in its log record
_LOG_LABEL_CHARS = 200
_OUTPUT_GRACE_S = 2.0  # how long a failed task waits for the rest of its output
_REAP_S = 5.0  # how long to wait for a killed or exiting child to be reaped
_PICKLE = pickle.HIGHEST_PROTOCOL
_PR_SET_PDEATHSIG = 1


class IsolatedTaskError(RuntimeError):
    """The isolated computation did not return: it ran out of time or its process died.

    ``reason`` is ``"timeout"`` or ``"crashed"``; ``exitcode`` is the child's exit status as
    :attr:`multiprocessing.Process.exitcode` reports it (``-11`` for SIGSEGV), ``None`` for a
    timeout.
    """

    def __init__(self, message: str, reason: Literal["timeout", "crashed"], exitcode: int | None = None) -> None:
        super().__init__(message)
        self.reason: Literal["timeout", "crashed"] = reason
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.reason, self.exitcode))


class _RemoteTraceback(Exception):
    """Carries the child's traceback text as the ``__cause__`` of a re-raised exception."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------------
# Child side


def _noop() -> None:
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
            blob = pickle.dumps((number, "error", exc, tb), protocol=_PICKLE)
            pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt from their args
            return blob
    try:
        message = str(exc)[:10_000]
    except BaseException:  # noqa: BLE001 - a broken __str__ must not kill the child
        message = "<message unavailable>"
    return pickle.dumps((number, "foreign", _describe_type(exc), message, tb), protocol=_PICKLE)


def _execute(number: int, data: bytes) -> bytes:
    """Run one pickled ``(function, args)`` task; always return a pickled reply."""
    try:
        function, args = pickle.loads(data)
        del data
        result = function(*args)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        return _error_reply(number, exc)
    try:
        return pickle.dumps((number, "ok", result), protocol=_PICKLE)
    except BaseException as exc:  # noqa: BLE001
        return _error_reply(number, TypeError(f"the result ({type(result).__name__}) could not be pickled: {exc}"))


def _child_main(tasks: Any, output: Any, marker: bytes, parent_pid: int) -> None:
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


# --------------------------------------------------------------------------------------------------
# Parent side


class _OutputCollector:
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


class _Outcome(Exception):
    """Internal: a task that did not return (timeout or crash), with the child's output."""

    def __init__(self, reason: Literal["timeout", "crashed"], exitcode: int | None, output: tuple[bytes, int]) -> None:
        super().__init__(reason)
        self.reason: Literal["timeout", "crashed"] = reason
        self.exitcode = exitcode
        self.output = output


class _Worker:
    """One child process, its task pipe and its output collector. Used by one thread at a time."""

    def __init__(self, context: Any, name: str, limit: int) -> None:
        parent_end, child_end = context.Pipe(duplex=True)
        out_reader, out_writer = context.Pipe(duplex=False)
        marker = b"\x00\x1eveilml-task-end-" + secrets.token_hex(16).encode() + b"\x1e\x00"
        self.process = context.Process(
            target=_child_main, args=(child_end, out_writer, marker, os.getpid()), name=name, daemon=True
        )
        try:
            self.process.start()
        except BaseException:
            for end in (parent_end, child_end, out_reader, out_writer):
                end.close()
            raise
        child_end.close()  # so that the child's death reads as EOF here
        out_writer.close()
        self.pid: int = self.process.pid
        self.conn = parent_end
        self.collector = _OutputCollector(out_reader, marker, limit, name)
        self.sent = 0
        self._lock = threading.Lock()  # serialises kill/join, which close() may call from another thread
        self._stopped = False

    def alive(self) -> bool:
        try:
            return not self._stopped and self.process.is_alive()
        except ValueError:  # closed by stop() in another thread meanwhile
            return False

    def call(self, payload: bytes, timeout: float | None) -> tuple[Any, ...]:
        """Send one task and return the child's reply tuple; raise :class:`_Outcome` if none comes."""
        self.sent += 1
        try:
            self.conn.send_bytes(payload)
            if not self.conn.poll(timeout):
                self.kill()
                raise _Outcome("timeout", None, self.collector.at_eof(_OUTPUT_GRACE_S))
            data = self.conn.recv_bytes()
        except (EOFError, OSError):
            with self._lock:
                self.process.join(_REAP_S)
                if self.process.exitcode is None:  # the pipe broke but the process lives on
                    self.process.kill()
                    self.process.join(_REAP_S)
                code = self.process.exitcode
            raise _Outcome("crashed", code, self.collector.at_eof(_OUTPUT_GRACE_S)) from None
        reply = pickle.loads(data)
        if not isinstance(reply, tuple) or not reply or reply[0] != self.sent:
            raise RuntimeError("isolated process answered out of turn; it was replaced")
        return reply

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        with self._lock:
            if not self._stopped and self.process.exitcode is None:
                self.process.kill()
                self.process.join(_REAP_S)

    def stop(self, graceful: bool) -> None:
        """End the child (asking it to exit first if ``graceful``) and release the pipes."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if graceful and self.process.exitcode is None:
                with contextlib.suppress(OSError):
                    self.conn.close()  # the child's loop reads EOF and returns
                self.process.join(1.0)
            if self.process.exitcode is None:
                self.process.kill()
                self.process.join(_REAP_S)
            with contextlib.suppress(OSError):
                self.conn.close()
            with contextlib.suppress(ValueError):  # still running (unkillable): leave it to GC
                self.process.close()


def _stop_workers(workers: set[_Worker]) -> None:
    for worker in list(workers):
        with contextlib.suppress(Exception):
            worker.stop(graceful=False)


_CLOSED = object()  # in the idle queue: the runner is closed (each waiter puts it back for the next)


def _check_timeout(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return None if math.isinf(value) else value


def _label(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or repr(function)
    return f"{module}.{name}"[:_LOG_LABEL_CHARS]


def _printable(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)


class IsolatedRunner:
    """A bounded pool of long-lived child processes that run module-level functions.

    ``run(function, *args)`` calls ``function(*args)`` in a free child and returns its result.
    Several threads may call :meth:`run` at once; each waits for a free child, so at most
    ``processes`` tasks run at a time. Children start on first use (or at :meth:`warm`) and are
    reused; one that timed out or died is replaced on the next use of its slot.

    ``timeout`` (seconds) limits each task, counted from the moment it is handed to a child;
    ``max_log_bytes`` bounds what is kept of a task's stdout/stderr (the tail). ``function`` and its
    arguments must pickle: a function defined at module level in an importable module. The child
    process cannot itself start ``multiprocessing`` children (it is a daemon process).
    """

    def __init__(
        self,
        processes: int = 1,
        timeout: float = 60.0,
        max_log_bytes: int = 64 * 1024,
        name: str = "veilml-isolated",
    ) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be a positive integer, got {processes!r}")
        if isinstance(max_log_bytes, bool) or not isinstance(max_log_bytes, int) or max_log_bytes < 0:
            raise ValueError(f"max_log_bytes must be a non-negative integer, got {max_log_bytes!r}")
        self.processes = processes
        self.timeout = _check_timeout(timeout, "timeout")
        self.max_log_bytes = max_log_bytes
        self.name = name
        self._context = multiprocessing.get_context("spawn")
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(processes):
            self._idle.put(None)  # a slot whose child is not started yet
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._started = 0
        self._starter: ThreadPoolExecutor | None = None
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)

    # ---------------------------------------------------------------- public API

    def run(self, function: Callable[..., _T], *args: Any, timeout: float | None = None) -> _T:
        """Call ``function(*args)`` in a child process and return its result.

        An exception raised by ``function`` is re-raised here as the same type when it pickles, else
        as :class:`RuntimeError` naming its type; the child keeps serving. Raises
        :class:`IsolatedTaskError` when the task runs past ``timeout`` (default: the runner's) or
        its process dies, and :class:`RuntimeError` once the runner is closed.
        """
        limit = self.timeout if timeout is None else _check_timeout(timeout, "timeout")
        label = _label(function)
        try:
            payload = pickle.dumps((function, args), protocol=_PICKLE)
        except Exception as exc:
            raise TypeError(
                f"cannot send {label} to an isolated process: the function must be defined at module level "
                f"in an importable module and its arguments must pickle ({exc})"
            ) from exc
        worker = self._acquire()
        try:
            worker = self._ready(worker)
            reply = worker.call(payload, limit)
            # Read a failed task's output before the worker goes back to the pool.
            output = (b"", 0) if reply[1] == "ok" else worker.collector.finished(reply[0], _OUTPUT_GRACE_S)
        except _Outcome as outcome:
            self._discard(worker)
            worker = None
            if self._closed:
                raise RuntimeError("the IsolatedRunner was closed while the computation ran") from None
            raise self._failure(label, limit, outcome) from None
        except BaseException:
            # Interrupted (Ctrl-C) or out of step: the child's state is unknown, so replace it.
            self._discard(worker)
            worker = None
            raise
        finally:
            self._release(worker)
        if reply[1] == "ok":
            return reply[2]
        if reply[1] == "error":
            exc, tb = reply[2], reply[3]
            self._log_output(label, f"raised {type(exc).__name__}", output)
            exc.__cause__ = _RemoteTraceback(f"\n(in the isolated process)\n{tb}")
            raise exc
        type_name, message, tb = reply[2], reply[3], reply[4]
        self._log_output(label, f"raised {type_name}", output)
        raise RuntimeError(f"{type_name}: {message}") from _RemoteTraceback(f"\n(in the isolated process)\n{tb}")

    def warm(self) -> None:
        """Start every child now and wait until each answers, so the first request skips start-up.

        Slots busy with a task are left alone.
        """
        slots: list[Any] = []
        with contextlib.suppress(queue.Empty):
            while len(slots) < self.processes:
                slots.append(self._idle.get_nowait())
        try:
            if _CLOSED in slots:
                raise RuntimeError("the IsolatedRunner is closed")
            payload = pickle.dumps((_noop, ()), protocol=_PICKLE)
            for index, slot in enumerate(slots):
                slots[index] = self._ready(slot)
            for index, slot in enumerate(slots):
                try:
                    slot.call(payload, self.timeout)
                except BaseException as exc:
                    self._discard(slot)
                    slots[index] = None
                    if isinstance(exc, _Outcome):
                        raise self._failure("isolated process start-up", self.timeout, exc) from None
                    raise
        finally:
            for slot in slots:
                if slot is not _CLOSED:
                    self._release(slot)
            if _CLOSED in slots:
                self._idle.put(_CLOSED)

    def pids(self) -> list[int]:
        """Process ids of the children now alive (for monitoring and tests)."""
        with self._lock:
            return sorted(w.pid for w in self._workers if w.alive())

    def close(self) -> None:
        """Stop the children (idle ones are asked to exit, busy ones are killed) and refuse new tasks.

        A task running in another thread ends with :class:`RuntimeError`. Calling it twice is fine.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        idle: list[_Worker] = []
        with contextlib.suppress(queue.Empty):
            while True:
                slot = self._idle.get_nowait()
                if isinstance(slot, _Worker):
                    idle.append(slot)
        self._idle.put(_CLOSED)
        for worker in idle:
            worker.stop(graceful=True)
        with self._lock:
            busy = [w for w in self._workers if w not in idle]
            self._workers.difference_update(idle)
        for worker in busy:
            worker.kill()  # its thread sees EOF, raises, and stops it
        self._finalizer.detach()
        with self._lock:
            starter, self._starter = self._starter, None
        if starter is not None:
            starter.shutdown(wait=False)

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _acquire(self) -> _Worker | None:
        if self._closed:
            raise RuntimeError("the IsolatedRunner is closed")
        slot = self._idle.get()
        if slot is _CLOSED:
            self._idle.put(_CLOSED)  # wake the next waiter too
            raise RuntimeError("the IsolatedRunner is closed")
        return slot

    def _release(self, worker: _Worker | None) -> None:
        if self._closed:
            if worker is not None:
                self._discard(worker)
            return
        self._idle.put(worker)

    def _ready(self, worker: _Worker | None) -> _Worker:
        """Return ``worker`` if its child is alive, else a freshly started one."""
        if worker is not None:
            if worker.alive():
                return worker
            self._discard(worker)  # died while idle (for instance, killed by the OOM killer)
        with self._lock:
            if self._closed:
                raise RuntimeError("the IsolatedRunner is closed")
            if self._starter is None:
                self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-starter")
            starter = self._starter
            self._started += 1
            name = f"{self.name}-{self._started}"
        # Started from the runner's own long-lived thread: PR_SET_PDEATHSIG fires when the thread
        # that started a child ends, and request threads come and go.
        worker = starter.submit(_Worker, self._context, name, self.max_log_bytes).result()
        with self._lock:
            self._workers.add(worker)
            closed = self._closed
        if closed:
            self._discard(worker)
            raise RuntimeError("the IsolatedRunner is closed")
        return worker

    def _discard(self, worker: _Worker | None) -> None:
        if worker is None:
            return
        worker.stop(graceful=False)
        with self._lock:
            self._workers.discard(worker)

    def _failure(self, label: str, limit: float | None, outcome: _Outcome) -> IsolatedTaskError:
        if outcome.reason == "timeout":
            message = (
                f"the computation ({label}) did not finish within {limit:g} s and was stopped; a malformed or "
                "corrupted input, or evaluation keys that do not belong to it, can keep native code busy for "
                "minutes. Check the input, or raise the timeout if this model is legitimately slower. "
                "The next request runs in a new process."
            )
            self._log_output(label, "timed out", outcome.output)
            return IsolatedTaskError(message, "timeout")
        code = outcome.exitcode
        if code is not None and code < 0:
            number = -code
            try:
                signame = signal.Signals(number).name
            except ValueError:
                signame = "unknown signal"
            what = f"signal {number}: {signame}"
            described = signal.strsignal(number) if hasattr(signal, "strsignal") else None
            if described:
                what += f", {described}"
        elif code is None:
            what = "it stopped answering"
        else:
            what = f"it exited with code {code}"
        message = (
            f"the computation ({label}) crashed the process that ran it ({what}); this usually means a "
            "malformed input or evaluation keys that do not match the ciphertexts: check that the client "
            "sent keys and data from the same session. The next request runs in a new process."
        )
        self._log_output(label, f"crashed ({what})", outcome.output)
        return IsolatedTaskError(message, "crashed", code)

    def _log_output(self, label: str, what: str, output: tuple[bytes, int]) -> None:
        """Emit the one warning record of a failed task, quoting the tail of what it printed."""
        kept, total = output
        if not total:
            return
        tail = _printable(kept[-_LOG_TAIL_BYTES:]).encode("utf-8")[-_LOG_TAIL_BYTES:].decode("utf-8", "ignore")
        logger.warning(
            "isolated computation %s %s; it wrote %d bytes to stdout/stderr (%s); the end:\n%s",
            label,
            what[:_LOG_LABEL_CHARS],
            total,
            f"the last {len(kept)} kept, the rest discarded" if total > len(kept) else "all kept",
            tail,
            extra={"isolation_output_bytes": total, "isolation_output_kept": len(kept)},
        )
