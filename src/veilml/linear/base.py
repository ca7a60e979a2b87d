"""Encrypted linear layers: ``x_q @ M`` for encrypted integer rows ``x_q`` and a clear integer matrix ``M``.

A backend has two halves that only exchange bytes, so that the same code runs in one process or
across an HTTP worker:

- :class:`LinearServer` (the worker, one per matrix): holds ``M``, publishes ``setup()`` (public
  data the client needs to encrypt for it), and ``run``s encrypted rows with evaluation keys.
- :class:`ClientSession` (the data owner, one per session and backend): holds every secret key;
  ``register``s each matrix from its setup and returns the evaluation keys to send for it,
  ``encrypt``s integer rows and ``decrypt``s results.

Integer semantics are the contract: ``decrypt(run(encrypt(x_q)))`` equals ``x_q @ M`` exactly for
exact backends, and within the backend's documented ``error_bound`` otherwise.

Bounded work: ``LinearServer.work`` validates a request and cuts it into :class:`Work` (independent units,
then a finish), so that a scheduler can interleave the requests of several clients and stop one at a
deadline; :func:`run_work` runs them in order and raises :class:`WorkTimeout` once its deadline has passed.
"""

from __future__ import annotations

import abc
import importlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from veilml.errors import VeilmlError
from veilml.runtime.envelope import pack_batch, unpack_batch

__all__ = [
    "BACKENDS",
    "MALFORMED",
    "MAX_FRAMES",
    "MAX_JSON_MESSAGE_BYTES",
    "ClientSession",
    "LinearBackend",
    "LinearServer",
    "MatrixSpec",
    "Work",
    "WorkTimeout",
    "check_deadline",
    "get_backend",
    "json_message",
    "pack_frames",
    "run_work",
    "unpack_frames",
]


#: most frames one message may hold (a concrete message has one per row, the others a few)
MAX_FRAMES = 2**20


def pack_frames(frames: Sequence[bytes]) -> bytes:
    """A message's frames (a header, then data) in veilml's one framing of byte strings, the batch of
    :func:`veilml.runtime.envelope.pack_batch`."""
    return pack_batch(frames)


#: longest JSON message (a header, a setup, parameters) a backend reads; an honest one is under 300 bytes
MAX_JSON_MESSAGE_BYTES = 4096
#: what reading a malformed JSON message can raise (deep nesting included), all turned into ValueError
MALFORMED = (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError, RecursionError)


def json_message(data: bytes, fmt: str, max_bytes: int = MAX_JSON_MESSAGE_BYTES, what: str = "message") -> dict[str, Any]:
    """The JSON object of a message whose ``"format"`` is ``fmt``, read only within ``max_bytes``.

    Raises ValueError for anything else: too long, not UTF-8 JSON, nested past the parser's depth, not
    an object, another format. Callers check the fields and say whose message it was.
    """
    if len(data) > max_bytes:
        raise ValueError(f"a {fmt} {what} of at most {max_bytes} bytes expected, got {len(data)}")
    try:
        document = json.loads(bytes(data).decode())
    except MALFORMED as error:
        raise ValueError(f"not JSON ({type(error).__name__}: {str(error)[:100]})") from None
    if not isinstance(document, dict) or document.get("format") != fmt:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"format {found!r}, not {fmt!r}")
    return document


def unpack_frames(data: bytes, max_frames: int = MAX_FRAMES) -> list[bytes]:
    """The frames of :func:`pack_frames` (none is allowed); a ValueError on other, truncated or padded data."""
    return unpack_batch(data, max_items=max_frames, what="message", item="frame", allow_empty=True)


@dataclass(frozen=True)
class MatrixSpec:
    """What both sides agree on for one matrix: its shape and the input precision."""

    rows: int  # d_in: length of an input row
    cols: int  # d_out: length of an output row
    input_bits: int  # inputs are unsigned integers in [0, 2**input_bits - 1]

    def check_input(self, x_q: np.ndarray) -> np.ndarray:
        x_q = np.asarray(x_q)
        if x_q.ndim != 2 or x_q.shape[1] != self.rows:
            raise ValueError(f"expected integer rows of shape (n, {self.rows}), got {x_q.shape}")
        if x_q.dtype.kind not in "iu":
            raise TypeError(f"expected integer codes, got dtype {x_q.dtype}")
        if x_q.size and (x_q.min() < 0 or x_q.max() >= 2**self.input_bits):
            raise ValueError(f"codes must be in [0, {2**self.input_bits - 1}] for {self.input_bits}-bit inputs")
        return np.ascontiguousarray(x_q, dtype=np.int64)


class WorkTimeout(VeilmlError, RuntimeError):
    """A computation passed its deadline; it was stopped between two units of work (nothing is left running)."""


@dataclass(frozen=True)
class Work:
    """A validated request cut into independent units (run in any order, each bounded), then finished."""

    units: tuple[Callable[[], None], ...]
    finish: Callable[[], bytes]


def check_deadline(deadline: float | None, done: int, total: int) -> None:
    """WorkTimeout if ``deadline`` (a :func:`time.monotonic` value; None: no limit) has passed, after ``done`` of ``total`` units."""
    if deadline is not None and time.monotonic() > deadline:
        raise WorkTimeout(
            f"stopped after {done} of {total} units of work, {time.monotonic() - deadline:.1f} s past the time limit; "
            "send fewer rows per request (or give the worker a longer run timeout)"
        )


def run_work(work: Work, deadline: float | None = None) -> bytes:
    """Every unit of ``work`` in order, then its result; the deadline is checked before each unit and the finish."""
    total = len(work.units)
    for done, unit in enumerate(work.units):
        check_deadline(deadline, done, total)
        unit()
    check_deadline(deadline, total, total)
    return work.finish()


class LinearServer(abc.ABC):
    """The worker's half for one clear integer matrix ``M`` (rows, cols)."""

    def __init__(self, matrix: np.ndarray, input_bits: int) -> None:
        matrix = np.ascontiguousarray(matrix, dtype=np.int64)  # a transposed view breaks concrete
        if matrix.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {matrix.shape}")
        self.matrix = matrix
        self.spec = MatrixSpec(matrix.shape[0], matrix.shape[1], input_bits)

    @abc.abstractmethod
    def setup(self) -> bytes:
        """Public data the client needs to register this matrix (may be empty)."""

    @abc.abstractmethod
    def run(self, ciphertext: bytes, evaluation_keys: bytes) -> bytes:
        """The encrypted product of the encrypted rows in ``ciphertext`` with ``M``.

        Must be safe to call from several threads at once (a worker serves sessions in parallel).
        """

    def work(self, ciphertext: bytes, evaluation_keys: bytes) -> Work:
        """``run`` cut into units: validates cheaply (ValueError on bad input) before returning them.

        This default is one unit that calls :meth:`run` (validation and all) and keeps its result for
        ``finish``; a backend whose work divides overrides it with smaller, bounded units.
        """
        result: list[bytes] = []

        def unit() -> None:
            result[:] = [self.run(ciphertext, evaluation_keys)]

        def finish() -> bytes:
            if not result:
                raise RuntimeError("finish() called before the work's unit ran")
            return result.pop()

        return Work((unit,), finish)

    @abc.abstractmethod
    def request_rows(self, ciphertext: bytes) -> int:
        """Rows in a request, read cheaply from its framing before any native code sees it.

        Raises ValueError on framing that cannot be read; the worker refuses requests over its
        ``max_rows`` with this count, so every backend must answer it.
        """

    def check_keys(self, evaluation_keys: bytes) -> None:  # noqa: B027 - optional: backends without keys accept any
        """Raise ValueError if ``evaluation_keys`` cannot be this server's keys (checked at registration)."""


class ClientSession(abc.ABC):
    """The data owner's half for every matrix of a session; the only holder of secret keys."""

    #: True when one evaluation key serves every matrix (send it once per worker)
    keys_shared_across_matrices: ClassVar[bool] = False

    def __init__(self) -> None:
        self.specs: dict[str, MatrixSpec] = {}

    @abc.abstractmethod
    def register(self, name: str, spec: MatrixSpec, setup: bytes) -> bytes:
        """Prepare keys for matrix ``name``; return the evaluation keys its server needs."""

    @abc.abstractmethod
    def encrypt(self, name: str, x_q: np.ndarray) -> bytes:
        """Encrypt integer rows (n, rows) for matrix ``name``."""

    @abc.abstractmethod
    def decrypt(self, name: str, result: bytes) -> np.ndarray:
        """Decrypt a result into integer rows (n, cols) (int64)."""

    def spec(self, name: str) -> MatrixSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(f"matrix {name!r} is not registered in this session; call register() first") from None


class LinearBackend(abc.ABC):
    """A named pair of factories."""

    name: ClassVar[str]
    exact: ClassVar[bool] = True
    #: False for a backend that sends the client's codes in plaintext (only ``clear``)
    encrypts: ClassVar[bool] = True

    @abc.abstractmethod
    def server(self, matrix: np.ndarray, input_bits: int) -> LinearServer: ...

    @abc.abstractmethod
    def session(self) -> ClientSession: ...

    def error_bound(self, spec: MatrixSpec, matrix_abs_max: int) -> float:
        """Largest absolute error of one output integer (0 for exact backends)."""
        return 0.0


# name -> "module:Class", loaded on first use so that each backend's dependency stays optional; the one
# list of backend names (the worker's --backend choices, in this order: exact, approximate, plaintext)
BACKENDS: dict[str, str] = {
    "bfv": "veilml.linear.bfv:BFVBackend",
    "bfv-seal": "veilml.linear.bfv.seal:SealBFVBackend",
    "concrete": "veilml.linear.concrete:ConcreteBackend",
    "glwe": "veilml.linear.glwe:GLWEBackend",
    "clear": "veilml.linear.clear:ClearBackend",
}


def get_backend(name: str | LinearBackend, **options: object) -> LinearBackend:
    """The backend called ``name`` (``"bfv"``, ``"bfv-seal"``, ``"concrete"``, ``"glwe"``, or ``"clear"`` for plaintext)."""
    if isinstance(name, LinearBackend):
        return name
    if name == "simulate":
        raise ValueError(
            "the plaintext encrypted-linear backend is now called 'clear' (in veilml 'simulate' means concrete's "
            "simulation of a circuit); use backend='clear', knowing that it sends data unencrypted"
        )
    if name not in BACKENDS:
        raise ValueError(f"unknown encrypted-linear backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)
