"""One child process of :class:`~veilml._isolation.IsolatedRunner`: start it, send it a task, kill or stop it."""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import threading
from enum import StrEnum
from typing import Any

from veilml._isolation.child import child_main
from veilml._isolation.output import OutputCollector
from veilml.errors import VeilmlError

__all__ = ["OUTPUT_GRACE_S", "ChildProcess", "Failure", "Outcome", "stop_children"]

OUTPUT_GRACE_S = 2.0  # how long a failed task waits for the rest of its output
REAP_S = 5.0  # how long to wait for a killed or exiting child to be reaped


class Failure(StrEnum):
    """How an isolated task failed to return (a string enum: ``reason == "timeout"`` holds)."""

    TIMEOUT = "timeout"  # it ran out of time and its child was killed
    CRASHED = "crashed"  # its child died (a signal, os._exit)


class Outcome(VeilmlError):
    """Internal: a task that did not return (timeout or crash), with the child's output."""

    def __init__(self, reason: Failure, exitcode: int | None, output: tuple[bytes, int]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exitcode = exitcode
        self.output = output


class ChildProcess:
    """One child process, its task pipe and its output collector. Used by one thread at a time."""

    def __init__(self, context: Any, name: str, limit: int) -> None:
        parent_end, child_end = context.Pipe(duplex=True)
        out_reader, out_writer = context.Pipe(duplex=False)
        marker = b"\x00\x1eveilml-task-end-" + secrets.token_hex(16).encode() + b"\x1e\x00"
        self.process = context.Process(
            target=child_main, args=(child_end, out_writer, marker, os.getpid()), name=name, daemon=True
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
        self.collector = OutputCollector(out_reader, marker, limit, name)
        self.sent = 0
        self._lock = threading.Lock()  # serialises kill/join, which close() may call from another thread
        self._stopped = False

    def alive(self) -> bool:
        try:
            return not self._stopped and self.process.is_alive()
        except ValueError:  # closed by stop() in another thread meanwhile
            return False

    def call(self, payload: bytes, timeout: float | None) -> tuple[Any, ...]:
        """Send one task and return the child's reply tuple; raise :class:`Outcome` if none comes."""
        self.sent += 1
        try:
            self.conn.send_bytes(payload)
            if not self.conn.poll(timeout):
                self.kill()
                raise Outcome(Failure.TIMEOUT, None, self.collector.at_eof(OUTPUT_GRACE_S))
            data = self.conn.recv_bytes()
        except (EOFError, OSError):
            with self._lock:
                self.process.join(REAP_S)
                if self.process.exitcode is None:  # the pipe broke but the process lives on
                    self.process.kill()
                    self.process.join(REAP_S)
                code = self.process.exitcode
            raise Outcome(Failure.CRASHED, code, self.collector.at_eof(OUTPUT_GRACE_S)) from None
        reply = pickle.loads(data)
        if not isinstance(reply, tuple) or not reply or reply[0] != self.sent:
            raise RuntimeError("isolated process answered out of turn; it was replaced")
        return reply

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        with self._lock:
            if not self._stopped and self.process.exitcode is None:
                self.process.kill()
                self.process.join(REAP_S)

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
                self.process.join(REAP_S)
            with contextlib.suppress(OSError):
                self.conn.close()
            with contextlib.suppress(ValueError):  # still running (unkillable): leave it to GC
                self.process.close()


def stop_children(workers: set[ChildProcess]) -> None:
    for worker in list(workers):
        with contextlib.suppress(Exception):
            worker.stop(graceful=False)
