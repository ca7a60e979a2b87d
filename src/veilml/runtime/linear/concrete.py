"""Exact encrypted linear layers with concrete-python, through veilml's IR.

The worker compiles one circuit per matrix: an encrypted row in, ``row @ M`` out, leveled only (no
bootstrapping, hence no bootstrap keys and an exact result). Each input element is one LWE
ciphertext (sent compressed); each output element is one uncompressed LWE ciphertext (~12 KiB).
Output bit widths come from the IR's range inference, so every valid input is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...compiler import Configuration, GraphBuilder, compile_graph
from .base import ClientSession, LinearBackend, LinearServer, MatrixSpec, pack_frames, unpack_frames

__all__ = ["ConcreteBackend"]


def matmul_graph(matrix: np.ndarray, input_bits: int):
    g = GraphBuilder()
    x = g.input("x", np.zeros(matrix.shape[0]), np.full(matrix.shape[0], 2**input_bits - 1))
    g.output(g.matmul(x, matrix), "y")
    return g.build()


class ConcreteServer(LinearServer):
    def __init__(self, matrix: np.ndarray, input_bits: int, configuration: Configuration | None = None) -> None:
        super().__init__(matrix, input_bits)
        rng = np.random.default_rng(0)
        inputset = rng.integers(0, 2**input_bits, size=(8, self.spec.rows))
        configuration = configuration or Configuration(compress_input_ciphertexts=True)
        circuit = compile_graph(matmul_graph(self.matrix, input_bits), [inputset], configuration).circuit
        self._server = circuit.server  # the circuit's key-less client object is not kept
        self._setup = circuit.client.specs.serialize()

    def setup(self) -> bytes:
        return self._setup

    def request_rows(self, ciphertext: bytes) -> int | None:
        return len(unpack_frames(ciphertext))  # one frame per row

    def check_keys(self, evaluation_keys: bytes) -> None:
        from concrete import fhe

        fhe.EvaluationKeys.deserialize(evaluation_keys)

    def run(self, ciphertext: bytes, evaluation_keys: bytes) -> bytes:
        from concrete import fhe

        # Leveled circuits have tiny evaluation keys: deserializing per call keeps runs thread-safe.
        keys = fhe.EvaluationKeys.deserialize(evaluation_keys)
        results = []
        for frame in unpack_frames(ciphertext):
            value = fhe.Value.deserialize(frame)
            results.append(self._server.run(value, evaluation_keys=keys).serialize())
        return pack_frames(results)


class ConcreteSession(ClientSession):
    def __init__(self, key_cache: str | None = None) -> None:
        super().__init__()
        self._key_cache = key_cache
        self._clients: dict[str, Any] = {}

    def register(self, name: str, spec: MatrixSpec, setup: bytes) -> bytes:
        from concrete import fhe

        client = fhe.Client(fhe.ClientSpecs.deserialize(setup), keyset_cache_directory=self._key_cache)
        client.keygen()
        self._clients[name] = client
        self.specs[name] = spec
        return client.evaluation_keys.serialize()

    def _client(self, name: str) -> Any:
        self.spec(name)
        return self._clients[name]

    def encrypt(self, name: str, x_q: np.ndarray) -> bytes:
        client = self._client(name)
        rows = self.spec(name).check_input(x_q)
        return pack_frames([client.encrypt(np.ascontiguousarray(row)).serialize() for row in rows])

    def decrypt(self, name: str, result: bytes) -> np.ndarray:
        from concrete import fhe

        client = self._client(name)
        rows = [np.asarray(client.decrypt(fhe.Value.deserialize(f)), dtype=np.int64).reshape(-1) for f in unpack_frames(result)]
        return np.stack(rows) if rows else np.zeros((0, self.spec(name).cols), np.int64)


class ConcreteBackend(LinearBackend):
    name = "concrete"

    def __init__(self, configuration: Configuration | None = None, key_cache: str | None = None) -> None:
        self.configuration = configuration
        self.key_cache = key_cache

    def server(self, matrix: np.ndarray, input_bits: int) -> LinearServer:
        return ConcreteServer(matrix, input_bits, self.configuration)

    def session(self) -> ClientSession:
        return ConcreteSession(self.key_cache)
