"""The remote-linear protocol: a worker holds weights, a client sends encrypted quantized rows.

- :class:`Worker` (transport-agnostic worker core): quantizes each weight once, builds one backend
  server per (layer, direction) — ``forward`` multiplies by ``q``, ``backward`` by ``q.T`` — opens
  sessions, keeps the evaluation keys each session registers, and runs requests. It never holds a
  secret key.
- :class:`LocalTransport`: calls a Worker in-process. An HTTP transport with the same calls lives
  in :mod:`veilml.runtime.remote`.
- :class:`EncryptedLinearExecutor` (client side): per-row quantization, encryption, decryption,
  zero-point correction and rescaling; the only holder of secret keys.

Sessions belong to their client: opening one returns an unguessable secret (kept by the transport)
that every later request of the session carries; only a digest of it is stored by the worker. The
evaluation keys registered for a matrix cannot be replaced (only sent again, identical), so no
other client can swap them under the session's owner.

What a client learns is inherent to the service: anyone allowed to query a worker can recover its
quantized weights (``x @ W`` for the identity rows ``x``). A worker-wide access token (see
:mod:`veilml.runtime.service`) decides who may query at all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np

from ...quantization import QuantizedWeight, backward_input, backward_output, forward_output, quantize_rows
from .base import ClientSession, LinearBackend, LinearServer, MatrixSpec, get_backend

__all__ = [
    "ALL",
    "DIRECTIONS",
    "EncryptedLinearExecutor",
    "InsecureBackendError",
    "LayerInfo",
    "LocalTransport",
    "SessionGrant",
    "Transport",
    "Worker",
    "WorkerError",
]

DIRECTIONS = ("forward", "backward")
ALL = "*"  # layer and direction of evaluation keys that serve every matrix of a worker


class WorkerError(Exception):
    """A request the worker refuses; ``status`` is the HTTP status it maps to.

    ``code`` tells a client what to do about it without parsing the message: ``"unknown-session"``
    (401: open a new session), ``"no-keys"`` (401: register the keys again), ``"forbidden"`` (403:
    wrong session secret or access token), ``"keys-registered"`` (409), ``"busy"`` (503: retry).
    """

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class InsecureBackendError(ValueError):
    """The worker offers a backend that does not encrypt, and the client did not ask for it."""


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


@dataclass(frozen=True, eq=False)
class LayerInfo:
    """Public description of one remote layer: enough for the client to correct and rescale.

    ``weight_scale``, ``col_sums`` and ``row_sums`` are aggregates of the quantized weight (one
    number per output channel or input feature), not the weight itself.
    """

    name: str
    d_in: int
    d_out: int
    input_bits: int
    weight_bits: int
    weight_scale: np.ndarray
    col_sums: np.ndarray
    row_sums: np.ndarray
    bias: np.ndarray | None = None

    def spec(self, direction: str) -> MatrixSpec:
        if direction == "forward":
            return MatrixSpec(self.d_in, self.d_out, self.input_bits)
        return MatrixSpec(self.d_out, self.d_in, self.input_bits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "input_bits": self.input_bits,
            "weight_bits": self.weight_bits,
            "weight_scale": self.weight_scale.tolist(),
            "col_sums": self.col_sums.tolist(),
            "row_sums": self.row_sums.tolist(),
            "bias": None if self.bias is None else self.bias.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerInfo:
        return cls(
            d["name"],
            int(d["d_in"]),
            int(d["d_out"]),
            int(d["input_bits"]),
            int(d["weight_bits"]),
            np.asarray(d["weight_scale"], dtype=np.float64),
            np.asarray(d["col_sums"], dtype=np.int64),
            np.asarray(d["row_sums"], dtype=np.int64),
            None if d.get("bias") is None else np.asarray(d["bias"], dtype=np.float64),
        )


class Transport(Protocol):
    """How a client reaches workers: the same calls in-process or over HTTP.

    ``open_session`` returns a session id; the transport keeps the session's secret and sends it
    with every ``register`` and ``run`` of that session.
    """

    backend: str

    def layers(self) -> dict[str, LayerInfo]: ...

    def setup(self, layer: str, direction: str) -> bytes: ...

    def open_session(self) -> str: ...

    def register(self, session: str, layer: str, direction: str, evaluation_keys: bytes) -> None: ...

    def run(self, session: str, layer: str, direction: str, ciphertext: bytes) -> bytes: ...


@dataclass
class Worker:
    """Holds frozen base weights and answers encrypted per-layer requests.

    Args:
        weights: layer name -> float weight (d_in, d_out), oriented so that the layer computes
            ``x @ W`` (GPT-2 ``Conv1D`` as stored; ``nn.Linear`` weights transposed).
        biases: optional layer name -> (d_out,) bias, published to clients (added in the clear).
        backend: ``"concrete"`` (exact, the default), ``"glwe"`` (approximate, compact), ``"clear"``
            (plaintext: the worker sees the client's codes; testing only), or a backend object.
        weight_bits / input_bits: precision of the quantized weights and of the client's rows.
        max_rows: largest number of rows accepted in one request, for every backend.
    """

    weights: Mapping[str, np.ndarray]
    biases: Mapping[str, np.ndarray] = field(default_factory=dict)
    backend: str | LinearBackend = "concrete"
    weight_bits: int = 8
    input_bits: int = 8
    max_rows: int = 4096
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
            raise WorkerError(401, f"this session has registered no evaluation key for {layer}/{direction}; register first", "no-keys")
        try:
            rows = server.request_rows(ciphertext)
        except (ValueError, TypeError) as error:
            raise WorkerError(400, f"bad ciphertext for {layer}/{direction}: {error}") from None
        if rows > self.max_rows:
            raise WorkerError(413, f"{rows} rows in one request, over this worker's limit of {self.max_rows}; send fewer rows per request")
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


class EncryptedLinearExecutor:
    """Client side of remote linear layers over one or more transports (workers).

    ``forward(name, x)`` returns ``x @ W (+ bias)`` and ``backward(name, g)`` returns ``g @ W.T``,
    both as float64 arrays, computed by the worker on encrypted per-row-quantized codes. Keys
    are generated and registered lazily, once per layer and direction.

    The client decides the security it requires: ``backend=None`` takes the workers' backend only
    if it encrypts (``concrete`` or ``glwe``) and raises :class:`InsecureBackendError` for ``clear``;
    plaintext needs ``backend="clear"`` here, an explicit choice. Crypto parameters that a worker
    hands over are checked by the backend's session before any key is made from them.

    Attributes:
        sessions: the session id opened on each transport (by position in ``transports``).
        bytes_sent / bytes_received: payload bytes exchanged with workers (ciphertexts and keys).
    """

    def __init__(self, transports: Transport | list[Transport], backend: str | LinearBackend | None = None, **backend_options: Any) -> None:
        transports = transports if isinstance(transports, list) else [transports]
        names = {t.backend for t in transports}
        if backend is None and len(names) != 1:
            raise ValueError(f"workers use different backends {sorted(names)}; they must agree")
        self._backend = get_backend(backend or names.pop(), **backend_options)
        if backend is None and not self._backend.encrypts:
            raise InsecureBackendError(
                f"the worker serves the {self._backend.name!r} backend, which sends your activations and gradients "
                "UNENCRYPTED; connect to a worker started with --backend concrete or glwe, or pass "
                f"backend={self._backend.name!r} to accept plaintext explicitly (testing only)"
            )
        if any(t.backend != self._backend.name for t in transports):
            raise ValueError(f"every worker must use the {self._backend.name!r} backend")
        self.transports = transports
        self.sessions: list[str | None] = [None] * len(transports)
        self.session: ClientSession = self._backend.session()
        self.routes: dict[str, Transport] = {}
        self.infos: dict[str, LayerInfo] = {}
        for transport in transports:
            for name, info in transport.layers().items():
                if name in self.routes:
                    raise ValueError(f"layer {name!r} is served by two workers; give each worker its own layers")
                self.routes[name], self.infos[name] = transport, info
        self._registered: set[tuple[str, str]] = set()
        self._shared_keys_sent: set[int] = set()  # transports holding this session's shared keys
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def backend(self) -> LinearBackend:
        return self._backend

    def layer(self, name: str) -> LayerInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise KeyError(f"no worker serves layer {name!r}; served layers: {sorted(self.infos)}") from None

    def _key(self, name: str, direction: str) -> str:
        return f"{name}/{direction}"

    def _session_on(self, transport: Transport) -> str:
        """This client's session on ``transport``, opened on first use."""
        index = next(i for i, t in enumerate(self.transports) if t is transport)
        if self.sessions[index] is None:
            self.sessions[index] = transport.open_session()
        return self.sessions[index]

    def _ensure_registered(self, name: str, direction: str) -> None:
        if (name, direction) in self._registered:
            return
        info, transport = self.layer(name), self.routes[name]
        setup = transport.setup(name, direction)
        keys = self.session.register(self._key(name, direction), info.spec(direction), setup)
        session = self._session_on(transport)
        if not self.session.keys_shared_across_matrices:
            transport.register(session, name, direction, keys)
            self.bytes_sent += len(keys)
        elif id(transport) not in self._shared_keys_sent:  # one key for every matrix: send it once
            transport.register(session, ALL, ALL, keys)
            self._shared_keys_sent.add(id(transport))
            self.bytes_sent += len(keys)
        self._registered.add((name, direction))

    def _remote_product(self, name: str, direction: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Quantize rows, have the worker multiply them, return (integer product, scales, zeros)."""
        info = self.layer(name)
        if rows.shape[0] == 0:  # nothing to send
            cols = info.spec(direction).cols
            return np.zeros((0, cols), np.int64), np.zeros(0), np.zeros(0, np.int64)
        self._ensure_registered(name, direction)
        codes, scale, zero = quantize_rows(rows, info.input_bits)
        key = self._key(name, direction)
        ciphertext = self.session.encrypt(key, codes)
        transport = self.routes[name]
        result = transport.run(self._session_on(transport), name, direction, ciphertext)
        self.bytes_sent += len(ciphertext)
        self.bytes_received += len(result)
        product = self.session.decrypt(key, result)
        expected = (rows.shape[0], info.spec(direction).cols)
        if product.shape != expected:  # a faulty or hostile worker: never broadcast or truncate its answer
            raise ValueError(f"the worker answered {name}/{direction} with shape {product.shape} for {expected[0]} rows sent; expected {expected}")
        return product, scale, zero

    def forward(self, name: str, x: np.ndarray) -> np.ndarray:
        info = self.layer(name)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != info.d_in:
            raise ValueError(f"layer {name!r} takes rows of {info.d_in} features, got shape {x.shape}")
        product, scale, zero = self._remote_product(name, "forward", x)
        y = forward_output(product, scale, zero, info.weight_scale, info.col_sums)
        return y if info.bias is None else y + info.bias[None, :]

    def backward(self, name: str, g: np.ndarray) -> np.ndarray:
        info = self.layer(name)
        g = np.asarray(g, dtype=np.float64)
        if g.ndim != 2 or g.shape[1] != info.d_out:
            raise ValueError(f"layer {name!r} takes gradient rows of {info.d_out} features, got shape {g.shape}")
        product, scale, zero = self._remote_product(name, "backward", backward_input(g, info.weight_scale))
        return backward_output(product, scale, zero, info.row_sums)
