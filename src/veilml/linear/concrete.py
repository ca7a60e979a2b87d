"""Exact encrypted linear layers with concrete-python, through veilml's IR.

The worker compiles one circuit per matrix: an encrypted row in, ``row @ M`` out, leveled only (no
bootstrapping, hence no bootstrap keys and an exact result). Each input element is one LWE
ciphertext (sent compressed); each output element is one uncompressed LWE ciphertext (~12 KiB).
Output bit widths come from the IR's range inference, so every valid input is exact.

Hostile peers on both sides:

- The client does not trust the circuit description a worker hands it: before making a key it
  checks that every encryption the specs ask for reaches 128-bit security by concrete's own
  security curves (:func:`veilml.runtime.security.check_client_specs`), and that the circuit takes
  and returns the shapes of its layer. Rebuilding the circuit on the client instead is not
  possible: the parameters depend on the weights, which the client does not have.
- The worker does not trust the bytes a client sends: keys and ciphertexts come in veilml envelopes
  bound to the circuit (its client-specs fingerprint) and must have the circuit's byte layout
  (:mod:`veilml.runtime.validation`) before concrete sees them; the computation itself runs in an
  isolated child process with a time limit (:mod:`veilml._isolation`), so a crash or a stall
  in native code fails one request, not the worker.
- Compiled circuits are cached on disk (:mod:`veilml.runtime.circuits`), so a worker restarts in
  seconds and serves exactly the circuits its clients already hold keys for.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from veilml._isolation import IsolatedRunner
from veilml.compiler import Configuration, GraphBuilder
from veilml.linear.base import MAX_FRAMES, ClientSession, LinearBackend, LinearServer, MatrixSpec
from veilml.linear.limits import DEFAULT_RUN_TIMEOUT
from veilml.runtime.circuits import CachedCircuit, CircuitCache
from veilml.runtime.client import FHEClient
from veilml.runtime.envelope import pack_batch, pack_envelope, unpack_batch
from veilml.runtime.lru import LRUCache
from veilml.runtime.security import check_client_specs
from veilml.runtime.server import FHEServer

__all__ = ["ConcreteBackend", "ConcreteServer", "ConcreteSession", "matmul_graph"]

#: largest serialized evaluation keys accepted (a leveled circuit's are 64 bytes)
MAX_KEY_BYTES = 1 << 20


def matmul_graph(matrix: np.ndarray, input_bits: int):
    g = GraphBuilder()
    x = g.input("x", np.zeros(matrix.shape[0]), np.full(matrix.shape[0], 2**input_bits - 1))
    g.output(g.matmul(x, matrix), "y")
    return g.build()


def _rows(message: bytes) -> list[bytes]:
    """The envelopes of a ciphertext or result message: a batch of rows, as a tree model's (none is allowed)."""
    return unpack_batch(message, max_items=MAX_FRAMES, what="concrete message", allow_empty=True)


# -- in the isolated child process ---------------------------------------------------------------------

_LOADED: LRUCache[str, Any] = LRUCache(64)  # server path -> concrete Server, in the child


def _run_rows(server_path: str, evaluation_keys: bytes, rows: list[bytes]) -> list[bytes]:
    """Run the circuit at ``server_path`` on each serialized row (in an isolated child process)."""
    from concrete import fhe

    server = _LOADED.get(server_path)
    if server is None:
        server = fhe.Server.load(server_path)
        _LOADED.put(server_path, server)
    keys = fhe.EvaluationKeys.deserialize(evaluation_keys)
    return [server.run(fhe.Value.deserialize(row), evaluation_keys=keys).serialize() for row in rows]


# -- the worker's half ------------------------------------------------------------------------------------


class ConcreteServer(LinearServer):
    def __init__(
        self,
        matrix: np.ndarray,
        input_bits: int,
        configuration: Configuration | None = None,
        cache: CircuitCache | None = None,
        runner: IsolatedRunner | None = None,
        run_timeout: float | None = None,
    ) -> None:
        super().__init__(matrix, input_bits)
        rng = np.random.default_rng(0)
        inputset = rng.integers(0, 2**input_bits, size=(8, self.spec.rows))
        configuration = configuration or Configuration(input_encryption="concrete")
        self.circuit: CachedCircuit = (cache or CircuitCache()).get(
            matmul_graph(self.matrix, input_bits), [inputset], configuration
        )
        self._runner = runner
        self._run_timeout = run_timeout
        self._fhe: FHEServer | None = None

    def setup(self) -> bytes:
        return self.circuit.client_specs

    def request_rows(self, ciphertext: bytes) -> int:
        return len(_rows(ciphertext))

    def _checks(self) -> FHEServer:
        """The runtime's FHEServer of this circuit, for its checks only: concrete runs in a child process."""
        if self._fhe is None:
            template = self.circuit.layout.inputs[0]
            self._fhe = FHEServer(
                None, self.circuit.client_specs, layout=self.circuit.layout, max_bytes=max(MAX_KEY_BYTES, template.length + 4096)
            )
        return self._fhe

    def check_keys(self, evaluation_keys: bytes) -> None:
        self._checks().admit_keys(evaluation_keys)

    def run(self, ciphertext: bytes, evaluation_keys: bytes) -> bytes:
        checks = self._checks()
        keys, identity = checks.admit_keys(evaluation_keys)
        rows = [checks.admit_ciphertext(row, identity) for row in _rows(ciphertext)]
        runner = self._runner or shared_runner()
        results = runner.run(_run_rows, str(self.circuit.server_path), keys, rows, timeout=self._run_timeout)
        fingerprint = self.circuit.fingerprint
        return pack_batch([pack_envelope("result", r, fingerprint=fingerprint, key_id=identity) for r in results])


_SHARED: IsolatedRunner | None = None
_SHARED_LOCK = threading.Lock()


def shared_runner() -> IsolatedRunner:
    """The process-wide isolated runner of concrete computations (two child processes)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = IsolatedRunner(processes=2, timeout=DEFAULT_RUN_TIMEOUT, name="veilml-concrete")
        return _SHARED


# -- the client's half -----------------------------------------------------------------------------------


def _check_circuit_shape(specs: bytes, spec: MatrixSpec, name: str) -> None:
    """Refuse a circuit that does not take a row of ``spec.rows`` and return ``spec.cols`` values."""
    try:
        (circuit,) = json.loads(specs)["circuits"]
        (given,), (returned,) = circuit["inputs"], circuit["outputs"]
        shapes = [tuple(v["typeInfo"]["lweCiphertext"]["abstractShape"]["dimensions"]) for v in (given, returned)]
        width = given["typeInfo"]["lweCiphertext"]["encoding"]["integer"]["width"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"the worker's circuit for {name!r} is not a one-input, one-output matmul ({error})") from None
    if shapes != [(spec.rows,), (spec.cols,)] or width < spec.input_bits:
        raise ValueError(
            f"the worker's circuit for {name!r} takes {shapes[0]} and returns {shapes[1]} ({width}-bit inputs), but the "
            f"layer is ({spec.rows},) -> ({spec.cols},) with {spec.input_bits}-bit inputs; refuse this worker"
        )


class ConcreteSession(ClientSession):
    """Fresh keys per session and matrix, in memory only (never written, never shared)."""

    def __init__(self, min_security_bits: int = 128) -> None:
        super().__init__()
        self.min_security_bits = min_security_bits
        self._clients: dict[str, FHEClient] = {}

    def register(self, name: str, spec: MatrixSpec, setup: bytes) -> bytes:
        from concrete import fhe

        check_client_specs(setup, self.min_security_bits)  # before any key is made from them
        _check_circuit_shape(setup, spec, name)
        client = FHEClient(fhe.ClientSpecs.deserialize(setup), codec=None, max_result_bytes=spec.cols * 16 * 1024 + 4096)
        client.keygen()
        self._clients[name] = client
        self.specs[name] = spec
        return client.evaluation_keys()

    def _client(self, name: str) -> FHEClient:
        self.spec(name)
        return self._clients[name]

    def encrypt(self, name: str, x_q: np.ndarray) -> bytes:
        client = self._client(name)
        rows = self.spec(name).check_input(x_q)
        return pack_batch([client.encrypt_encoded(row) for row in rows])

    def decrypt(self, name: str, result: bytes) -> np.ndarray:
        client, spec = self._client(name), self.spec(name)
        rows = []
        for row in _rows(result):
            value = client.decrypt_integers(row)  # format, model and key set checked first
            if value.shape != (spec.cols,):
                raise ValueError(f"result for {name!r} has {value.size} values per row, expected {spec.cols}")
            rows.append(value)
        return np.stack(rows) if rows else np.zeros((0, spec.cols), np.int64)


class ConcreteBackend(LinearBackend):
    """Exact products through concrete (see the module docstring).

    Args:
        configuration: how circuits are compiled (worker side).
        cache_dir: where compiled circuits are kept (default ``~/.cache/veilml/circuits``).
        run_timeout: seconds one request may compute before its isolated process is stopped.
        min_security_bits: the security the client requires of a worker's parameters (128 or 132).
    """

    name = "concrete"

    def __init__(
        self,
        configuration: Configuration | None = None,
        *,
        cache_dir: str | Path | None = None,
        run_timeout: float = DEFAULT_RUN_TIMEOUT,
        min_security_bits: int = 128,
    ) -> None:
        self.configuration = configuration
        self.cache = CircuitCache(cache_dir)
        self.run_timeout = run_timeout
        self.min_security_bits = min_security_bits

    def server(self, matrix: np.ndarray, input_bits: int) -> LinearServer:
        return ConcreteServer(matrix, input_bits, self.configuration, self.cache, run_timeout=self.run_timeout)

    def session(self) -> ClientSession:
        return ConcreteSession(self.min_security_bits)
