"""Helpers of the worker tests: real ``veilml worker`` processes, polling with deadlines, and a probe
for secret-key material in everything a worker holds.

No helper sleeps to synchronize: every wait polls for an observable state (an answer on
``/health``, a marker file, a byte count) until a deadline, and fails with the worker's log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, log: Callable[[], str] = lambda: "") -> Any:
    """Poll ``condition`` until it returns something true (returned) or ``timeout`` seconds pass (test fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached within {timeout} s\n{log()}")
        time.sleep(0.02)


def answers_health(url: str) -> bool:
    """Whether a worker at ``url`` answers ``/health`` with 200 right now (no retry)."""
    import httpx

    try:
        return httpx.get(url + "/health", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def veilml_script() -> Path:
    """The installed ``veilml`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "veilml"
    assert script.is_file() and os.access(script, os.X_OK), f"no veilml console script at {script}; pip install -e ."
    return script


class CLIWorker:
    """``veilml COMMAND ARGS --port PORT`` (the installed console script; ``worker`` unless told) on
    loopback, logging to a file.

    Without a given port it takes a free one; should another process take that port before the
    worker binds it (the worker takes seconds to start), it starts again on another.
    """

    def __init__(
        self, directory: Path, *args: str, port: int | None = None, name: str = "cli-worker", command: str = "worker"
    ) -> None:
        self.directory, self.worker_args, self.name, self.command = directory, args, name, command
        self.fixed_port, self.starts = port is not None, 0
        self._start(port or free_port())

    def _start(self, port: int) -> None:
        self.port, self.url, self.starts = port, f"http://127.0.0.1:{port}", self.starts + 1
        self.args = (str(veilml_script()), self.command, *self.worker_args, "--port", str(port))
        self.log = self.directory / f"{self.name}-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:

        if self.process.poll() is not None:
            if not self.fixed_port and self.starts < 3 and "address already in use" in self.text():
                self._start(free_port())
                return False
            pytest.fail(f"{' '.join(self.args)} exited with {self.process.returncode}:\n{self.text()}")
        return answers_health(self.url)

    def wait_ready(self, timeout: float = 180.0) -> CLIWorker:
        try:
            wait_for(self.ready, timeout, f"{' '.join(self.args)} answering /health", self.text)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


# -- what a worker holds, searched for a client's secret key -------------------------------------------


def key_windows(serialized_secret_key: bytes, size: int = 1024, count: int = 6) -> list[bytes]:
    """Distinctive slices of a serialized secret key (concrete LWE, GLWE private key), past its header.

    Both store one 64-bit word per binary coefficient, so a 1024-byte slice holds 128 key bits: a
    chance match in unrelated bytes is out of the question, and each slice is checked to hold enough
    set bits to be distinctive at all.
    """
    body = serialized_secret_key[len(serialized_secret_key) // 8 :]
    assert len(body) >= size * count, f"a secret key of {len(serialized_secret_key)} bytes is too short to probe"
    step = (len(body) - size) // max(count - 1, 1)
    windows = [body[i * step : i * step + size] for i in range(count)]
    for window in windows:
        assert sum(1 for b in window if b) >= 16, "a secret-key slice with almost no set bits is no evidence"
    return windows


_OPAQUE = (
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    type,
    str,
    int,
    float,
    bool,
    type(None),
)


def reachable(*roots: Any) -> Iterator[Any]:
    """Every object reachable from ``roots`` through attributes, slots and containers (each once)."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, _OPAQUE) or isinstance(obj, (bytes, bytearray, memoryview, np.ndarray)):
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        else:
            stack.extend(getattr(obj, "__dict__", {}).values())
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if isinstance(slot, str) and hasattr(obj, slot):
                        stack.append(getattr(obj, slot))


def held_bytes(*roots: Any) -> Iterator[bytes]:
    """The bytes held by everything reachable from ``roots``: byte strings, arrays, and the serialized
    form of native objects (concrete keys and servers, extension keys) that offer ``serialize()``."""
    for obj in reachable(*roots):
        if isinstance(obj, (bytes, bytearray, memoryview)):
            yield bytes(obj)
        elif isinstance(obj, np.ndarray):
            yield obj.tobytes()
        elif not isinstance(obj, _OPAQUE) and callable(getattr(obj, "serialize", None)):
            try:
                data = obj.serialize()
            except (TypeError, ValueError, RuntimeError):  # needs arguments, or has nothing to serialize
                continue
            if isinstance(data, (bytes, bytearray)):
                yield bytes(data)


def files_bytes(directory: Path) -> Iterator[bytes]:
    """The content of every file under ``directory``, zip archives also read member by member."""
    import zipfile

    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield data
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    yield archive.read(member)


def holding(blobs: Iterator[bytes], windows: list[bytes]) -> list[int]:
    """Indices of the blobs that contain any of ``windows``."""
    return [i for i, blob in enumerate(blobs) if any(window in blob for window in windows)]
