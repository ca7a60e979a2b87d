"""The worker core: holds frozen weights, keeps sessions and evaluation keys, runs encrypted requests.

:class:`Worker` is transport-agnostic: it quantizes each weight once, builds one backend server per
(layer, direction) — ``forward`` multiplies by ``q``, ``backward`` by ``q.T`` — opens sessions,
keeps the evaluation keys each session registers, and runs requests. It never holds a secret key.
:class:`LocalTransport` calls a Worker in-process; the HTTP service around it is
:mod:`veilml.runtime.linear.service`, its client :mod:`veilml.runtime.linear.transport`.

Sessions belong to their client: opening one returns an unguessable secret (kept by the transport)
that every later request of the session carries; only a digest of it is stored by the worker. The
evaluation keys registered for a matrix cannot be replaced (only sent again, identical), so no
other client can swap them under the session's owner.

What a client learns is inherent to the service: anyone allowed to query a worker can recover its
quantized weights (``x @ W`` for the identity rows ``x``). A worker-wide access token (see
:mod:`veilml.runtime.linear.service`) decides who may query at all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ...quantization import QuantizedWeight
from .base import LinearBackend, LinearServer, get_backend
from .errors import WorkerError
from .layers import ALL, DIRECTIONS, LayerInfo
from .limits import DEFAULT_BACKEND, DEFAULT_INPUT_BITS, DEFAULT_MAX_ROWS, DEFAULT_WEIGHT_BITS

__all__ = ["LocalTransport", "SessionGrant", "Worker"]


@dataclass(frozen=True)
class SessionGrant:
    """A new session: its id (not secret, may appear in URLs) and the secret that proves ownership."""

    id: str
    secret: str = field(repr=False)


@dataclass(eq=False)
class _Session:
    secret_digest: bytes
    keys: dict[tuple[str, str], bytes] = field(default_factory=dict)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass
class Worker:
    """Holds frozen base weights and answers encrypted per-layer requests.

    Args:
        weights: layer name -> float weight (d_in, d_out), oriented so that the layer computes
            ``x @ W`` (GPT-2 ``Conv1D`` as stored; ``nn.Linear`` weights transposed).
        biases: optional layer name -> (d_out,) bias, published to clients (added in the clear).
        backend: ``"bfv"`` (exact and fast, the default), ``"concrete"`` (exact, compiled through the IR),
            ``"glwe"`` (approximate, compact), ``"clear"``
            (plaintext: the worker sees the client's codes; testing only), or a backend object.
        weight_bits / input_bits: precision of the quantized weights and of the client's rows.
        max_rows: largest number of rows accepted in one request, for every backend; published to
            clients, which split larger inputs.
    """

    weights: Mapping[str, np.ndarray]
    biases: Mapping[str, np.ndarray] = field(default_factory=dict)
    backend: str | LinearBackend = DEFAULT_BACKEND
    weight_bits: int = DEFAULT_WEIGHT_BITS
    input_bits: int = DEFAULT_INPUT_BITS
    max_rows: int = DEFAULT_MAX_ROWS
    infos: dict[str, LayerInfo] = field(init=False)
    servers: dict[tuple[str, str], LinearServer] = field(init=False)
    sessions: dict[str, _Session] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._backend = get_backend(self.backend)
        self.backend = self._backend.name
        self.infos, self.servers = {}, {}
        self._lock = threading.Lock()
        for name, weight in self.weights.items():
            quantized = QuantizedWeight.from_float(np.asarray(weight, dtype=np.float64), self.weight_bits)
            bias = self.biases.get(name)
            self.infos[name] = LayerInfo(
                name,
                quantized.q.shape[0],
                quantized.q.shape[1],
                self.input_bits,
                self.weight_bits,
                quantized.scale,
                quantized.col_sums,
                quantized.row_sums,
                None if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1),
            )
            self.servers[(name, "forward")] = self._backend.server(quantized.q, self.input_bits)
            self.servers[(name, "backward")] = self._backend.server(np.ascontiguousarray(quantized.q.T), self.input_bits)

    def layers(self) -> dict[str, LayerInfo]:
        return dict(self.infos)

    def check(self, layer: str, direction: str) -> LinearServer:
        """The server of ``layer``/``direction``; WorkerError 400 or 404 if there is none."""
        if direction not in DIRECTIONS:
            raise WorkerError(400, f"unknown direction {direction!r}; use 'forward' or 'backward'")
        if layer not in self.infos:
            served = sorted(self.infos)
            shown = served if len(served) <= 20 else served[:20] + [f"... {len(served) - 20} more (GET /layers)"]
            raise WorkerError(404, f"this worker does not serve layer {layer!r}; it serves {shown}")
        return self.servers[(layer, direction)]

    def setup(self, layer: str, direction: str) -> bytes:
        return self.check(layer, direction).setup()

    @property
    def session_keys(self) -> dict[tuple[str, str, str], bytes]:
        """Every stored evaluation key, by (session, layer, direction): what the worker holds."""
        with self._lock:
            return {(sid, *scope): keys for sid, session in self.sessions.items() for scope, keys in session.keys.items()}

    def open_session(self) -> SessionGrant:
        """A new session with an unguessable secret; only the secret's digest is kept."""
        grant = SessionGrant(secrets.token_hex(16), secrets.token_urlsafe(32))
        with self._lock:
            self.sessions[grant.id] = _Session(_digest(grant.secret))
        return grant

    def close_session(self, session: str) -> None:
        """Drop a session and all its keys (eviction, or a client that is done)."""
        with self._lock:
            self.sessions.pop(session, None)

    def _session(self, session: str, secret: str | None) -> _Session:
        with self._lock:
            found = self.sessions.get(session)
        if found is None:
            raise WorkerError(
                401,
                "unknown session: the worker restarted or evicted it, or never opened it; open a new session",
                "unknown-session",
            )
        if secret is None or not hmac.compare_digest(found.secret_digest, _digest(secret)):
            raise WorkerError(403, "this session belongs to another client: the session secret does not match", "forbidden")
        return found

    def register(self, session: str, secret: str | None, layer: str, direction: str, evaluation_keys: bytes) -> None:
        """Keep a session's evaluation keys for one matrix, or for all (``layer == direction == ALL``).

        Keys once registered for a matrix are kept as they are: sending the same bytes again is
        harmless (a retry), other bytes are refused (409): open a new session for new keys.
        """
        owned = self._session(session, secret)
        with self._lock:
            current = owned.keys.get((layer, direction))
        if current is not None:
            if hmac.compare_digest(current, evaluation_keys):
                return
            raise WorkerError(
                409,
                f"this session already holds other evaluation keys for {layer}/{direction}; they cannot be replaced: "
                "open a new session for new keys",
                "keys-registered",
            )
        try:
            server = next(iter(self.servers.values())) if layer == direction == ALL else self.check(layer, direction)
            server.check_keys(evaluation_keys)
        except (ValueError, TypeError, RuntimeError) as error:
            raise WorkerError(400, f"these are not evaluation keys for {layer}/{direction}: {error}") from None
        with self._lock:
            kept = owned.keys.setdefault((layer, direction), evaluation_keys)
        if kept is not evaluation_keys and not hmac.compare_digest(kept, evaluation_keys):  # lost a race
            raise WorkerError(409, f"this session already holds other evaluation keys for {layer}/{direction}", "keys-registered")

    def forget(self, session: str, layer: str | None = None, direction: str | None = None) -> None:
        """Drop a session's evaluation keys (all of them, or one matrix's); the session stays open."""
        with self._lock:
            owned = self.sessions.get(session)
            for scope in list(owned.keys) if owned is not None else []:
                if (layer is None or scope[0] == layer) and (direction is None or scope[1] == direction):
                    del owned.keys[scope]

    def run(self, session: str, secret: str | None, layer: str, direction: str, ciphertext: bytes) -> bytes:
        server = self.check(layer, direction)
        owned = self._session(session, secret)
        with self._lock:
            keys = owned.keys.get((layer, direction), owned.keys.get((ALL, ALL)))
        if keys is None:
            raise WorkerError(
                401, f"this session has registered no evaluation key for {layer}/{direction}; register first", "no-keys"
            )
        try:
            rows = server.request_rows(ciphertext)
        except (ValueError, TypeError) as error:
            raise WorkerError(400, f"bad ciphertext for {layer}/{direction}: {error}") from None
        if rows > self.max_rows:
            raise WorkerError(
                413, f"{rows} rows in one request, over this worker's limit of {self.max_rows}; send fewer rows per request"
            )
        try:
            return server.run(ciphertext, keys)
        except (ValueError, TypeError) as error:
            raise WorkerError(400, f"bad ciphertext for {layer}/{direction}: {error}") from None
        except RuntimeError as error:  # concrete raises RuntimeError on ciphertexts of other keys or shapes
            raise WorkerError(400, f"the worker could not run {layer}/{direction} on this ciphertext: {error}") from None


@dataclass
class LocalTransport:
    """Calls a :class:`Worker` in this process (tests, single machines)."""

    worker: Worker
    _secrets: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @property
    def backend(self) -> str:
        return str(self.worker.backend)

    @property
    def max_rows(self) -> int:
        return self.worker.max_rows

    def layers(self) -> dict[str, LayerInfo]:
        return self.worker.layers()

    def setup(self, layer: str, direction: str) -> bytes:
        return self.worker.setup(layer, direction)

    def open_session(self) -> str:
        grant = self.worker.open_session()
        self._secrets[grant.id] = grant.secret
        return grant.id

    def register(self, session: str, layer: str, direction: str, evaluation_keys: bytes) -> None:
        self.worker.register(session, self._secrets.get(session), layer, direction, evaluation_keys)

    def run(self, session: str, layer: str, direction: str, ciphertext: bytes) -> bytes:
        return self.worker.run(session, self._secrets.get(session), layer, direction, ciphertext)
