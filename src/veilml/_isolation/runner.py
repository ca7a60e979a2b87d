"""A bounded pool of child processes that run functions with a time limit: :class:`IsolatedRunner`.

See :mod:`veilml._isolation` for how it works.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import pickle
import queue
import signal
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from veilml._isolation.child import PICKLE, noop
from veilml._isolation.process import OUTPUT_GRACE_S, ChildProcess, Failure, Outcome, stop_children
from veilml.errors import VeilmlError

__all__ = ["Failure", "IsolatedRunner", "IsolatedTaskError"]

logger = logging.getLogger("veilml.isolation")

_T = TypeVar("_T")

_LOG_TAIL_BYTES = 1200  # bytes of a failed task's output quoted in its log record
_LOG_LABEL_CHARS = 200


class IsolatedTaskError(VeilmlError, RuntimeError):
    """The isolated computation did not return: it ran out of time or its process died.

    ``reason`` is :attr:`Failure.TIMEOUT` or :attr:`Failure.CRASHED` (``"timeout"``, ``"crashed"``); ``exitcode`` is the child's exit status as
    :attr:`multiprocessing.Process.exitcode` reports it (``-11`` for SIGSEGV), ``None`` for a
    timeout.
    """

    def __init__(self, message: str, reason: Failure | str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.reason = Failure(reason)
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.reason, self.exitcode))


class _RemoteTraceback(VeilmlError):
    """Carries the child's traceback text as the ``__cause__`` of a re-raised exception."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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
    ``max_log_bytes`` bounds what is kept of a task's stdout/stderr (the tail). ``initializer(*initargs)``
    runs once in each new child before its first task, within ``init_timeout`` seconds (loading a
    compiled model there keeps start-up out of every task's time limit). ``function`` and its
    arguments must pickle: a function defined at module level in an importable module. The child
    process cannot itself start ``multiprocessing`` children (it is a daemon process).
    """

    def __init__(
        self,
        processes: int = 1,
        timeout: float = 60.0,
        max_log_bytes: int = 64 * 1024,
        name: str = "veilml-isolated",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        init_timeout: float | None = 300.0,
    ) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be a positive integer, got {processes!r}")
        if isinstance(max_log_bytes, bool) or not isinstance(max_log_bytes, int) or max_log_bytes < 0:
            raise ValueError(f"max_log_bytes must be a non-negative integer, got {max_log_bytes!r}")
        self.processes = processes
        self.timeout = _check_timeout(timeout, "timeout")
        self.max_log_bytes = max_log_bytes
        self.name = name
        self._init = None if initializer is None else pickle.dumps((initializer, initargs), protocol=PICKLE)
        self.init_timeout = _check_timeout(init_timeout, "init_timeout")
        self._context = multiprocessing.get_context("spawn")
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(processes):
            self._idle.put(None)  # a slot whose child is not started yet
        self._workers: set[ChildProcess] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._started = 0
        self._starter: ThreadPoolExecutor | None = None
        self._finalizer = weakref.finalize(self, stop_children, self._workers)

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
            payload = pickle.dumps((function, args), protocol=PICKLE)
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
            output = (b"", 0) if reply[1] == "ok" else worker.collector.finished(reply[0], OUTPUT_GRACE_S)
        except Outcome as outcome:
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
            payload = pickle.dumps((noop, ()), protocol=PICKLE)
            for index, slot in enumerate(slots):
                slots[index] = self._ready(slot)
            for index, slot in enumerate(slots):
                try:
                    slot.call(payload, self.timeout)
                except BaseException as exc:
                    self._discard(slot)
                    slots[index] = None
                    if isinstance(exc, Outcome):
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
        idle: list[ChildProcess] = []
        with contextlib.suppress(queue.Empty):
            while True:
                slot = self._idle.get_nowait()
                if isinstance(slot, ChildProcess):
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

    def _acquire(self) -> ChildProcess | None:
        if self._closed:
            raise RuntimeError("the IsolatedRunner is closed")
        slot = self._idle.get()
        if slot is _CLOSED:
            self._idle.put(_CLOSED)  # wake the next waiter too
            raise RuntimeError("the IsolatedRunner is closed")
        return slot

    def _release(self, worker: ChildProcess | None) -> None:
        if self._closed:
            if worker is not None:
                self._discard(worker)
            return
        self._idle.put(worker)

    def _ready(self, worker: ChildProcess | None) -> ChildProcess:
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
        worker = starter.submit(ChildProcess, self._context, name, self.max_log_bytes).result()
        with self._lock:
            self._workers.add(worker)
            closed = self._closed
        if closed:
            self._discard(worker)
            raise RuntimeError("the IsolatedRunner is closed")
        if self._init is not None:
            try:
                reply = worker.call(self._init, self.init_timeout)
            except Outcome as outcome:
                self._discard(worker)
                raise self._failure("the isolated process's initializer", self.init_timeout, outcome) from None
            if reply[1] != "ok":
                self._discard(worker)
                raise RuntimeError(f"the isolated process's initializer failed: {reply[2]!r}")
        return worker

    def _discard(self, worker: ChildProcess | None) -> None:
        if worker is None:
            return
        worker.stop(graceful=False)
        with self._lock:
            self._workers.discard(worker)

    def _failure(self, label: str, limit: float | None, outcome: Outcome) -> IsolatedTaskError:
        if outcome.reason is Failure.TIMEOUT:
            message = (
                f"the computation ({label}) did not finish within {limit:g} s and was stopped; a malformed or "
                "corrupted input, or evaluation keys that do not belong to it, can keep native code busy for "
                "minutes. Check the input, or raise the timeout if this model is legitimately slower. "
                "The next request runs in a new process."
            )
            self._log_output(label, "timed out", outcome.output)
            return IsolatedTaskError(message, Failure.TIMEOUT)
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
        return IsolatedTaskError(message, Failure.CRASHED, code)

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
