"""The ``clear`` backend: the integer computation on plaintext codes, without any encryption.

It is the reference the encrypting backends are tested against, and a fast way to run experiments;
the worker sees every code the client sends. Neither side uses it unless it is named explicitly
(``Worker(backend="clear")``, ``EncryptedLinearExecutor(..., backend="clear")``).
"""

from __future__ import annotations

import io

import numpy as np

from veilml.linear.base import ClientSession, LinearBackend, LinearServer, MatrixSpec

__all__ = ["ClearBackend", "pack_integers", "unpack_integers"]


def pack_integers(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(values, dtype=np.int64), allow_pickle=False)
    return buffer.getvalue()


def unpack_integers(data: bytes) -> np.ndarray:
    try:
        values = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # numpy raises EOFError, SyntaxError, ... on garbage
        raise ValueError(f"not a packed integer array ({type(error).__name__}: {error})") from None
    if values.dtype != np.int64 or values.ndim != 2:
        raise ValueError(f"expected a 2-D int64 array, got {values.dtype} with shape {values.shape}")
    return values


class ClearServer(LinearServer):
    """Multiplies the plain integer codes."""

    def __init__(self, matrix: np.ndarray, input_bits: int) -> None:
        super().__init__(matrix, input_bits)
        # float64 BLAS is exact when no partial sum can reach 2**53, and much faster than int64
        bound = self.spec.rows * (2**input_bits - 1) * int(np.abs(self.matrix).max(initial=0))
        self._float_matrix = self.matrix.astype(np.float64) if bound < 2**53 else None

    def product(self, x_q: np.ndarray) -> np.ndarray:
        if self._float_matrix is None:
            return x_q @ self.matrix
        return np.rint(x_q.astype(np.float64) @ self._float_matrix).astype(np.int64)

    def setup(self) -> bytes:
        return b""

    def request_rows(self, ciphertext: bytes) -> int:
        return unpack_integers(ciphertext).shape[0]

    def check_keys(self, evaluation_keys: bytes) -> None:
        if evaluation_keys:
            raise ValueError("the clear backend takes no evaluation keys (an empty body)")

    def run(self, ciphertext: bytes, evaluation_keys: bytes) -> bytes:
        x_q = self.spec.check_input(unpack_integers(ciphertext))
        return pack_integers(self.product(x_q))


class ClearSession(ClientSession):
    keys_shared_across_matrices = True

    def register(self, name: str, spec: MatrixSpec, setup: bytes) -> bytes:
        self.specs[name] = spec
        return b""

    def encrypt(self, name: str, x_q: np.ndarray) -> bytes:
        return pack_integers(self.spec(name).check_input(x_q))

    def decrypt(self, name: str, result: bytes) -> np.ndarray:
        values = unpack_integers(result)
        if values.shape[1] != self.spec(name).cols:
            raise ValueError(f"result for {name!r} has {values.shape[1]} columns, expected {self.spec(name).cols}")
        return values


class ClearBackend(LinearBackend):
    name = "clear"
    encrypts = False

    def server(self, matrix: np.ndarray, input_bits: int) -> LinearServer:
        return ClearServer(matrix, input_bits)

    def session(self) -> ClientSession:
        return ClearSession()
