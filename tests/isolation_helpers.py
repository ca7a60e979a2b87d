"""Functions that tests/test_isolation.py runs in IsolatedRunner's child processes.

They live in their own light module because a spawned child imports the module of each function
it runs (the test module would drag pytest and the fixtures' imports into every child).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

_calls = 0


def add(a: int, b: int) -> int:
    return a + b


def echo(value: object) -> object:
    return value


def square_with_pid(x: int) -> tuple[int, int]:
    time.sleep(0.05)  # overlap the calls of several threads
    return x * x, os.getpid()


def getpid() -> int:
    return os.getpid()


def count() -> tuple[int, int]:
    """Increment a module-level counter: state that must persist between calls on one child."""
    global _calls
    _calls += 1
    return os.getpid(), _calls


def fail(message: str) -> None:
    raise ValueError(message)


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt from its args: must come back as RuntimeError."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def fail_unpicklable() -> None:
    raise TwoArgError("left", "right")


def segfault() -> None:
    sys.stderr.write("about to read address zero\n")
    ctypes.string_at(0)


def exit_hard(code: int) -> None:
    os._exit(code)


def spin() -> None:
    while True:
        pass


def flood_then_fail(megabytes: int) -> None:
    """Write ``megabytes`` MB straight to fd 2 (as native code would), then raise."""
    block = b"x" * 1023 + b"\n"
    chunk = block * 1024
    for _ in range(megabytes):
        os.write(2, chunk)
    os.write(2, b"END OF FLOOD\n")
    raise ValueError("failed after the flood")


def print_then_succeed() -> str:
    print("chatty but fine")
    os.write(2, b"native noise\n")
    return "done"


def interrupt_self() -> str:
    """Send SIGINT to this process: the child ignores it, so this returns."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    return "survived"


def heavy_modules() -> list[str]:
    """Heavy modules already imported in this child."""
    heavy = ("concrete", "torch", "sklearn", "fastapi", "uvicorn")
    return sorted(name for name in heavy if name in sys.modules)
