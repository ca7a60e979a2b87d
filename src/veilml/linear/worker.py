"""The worker core: holds frozen weights, keeps sessions and evaluation keys, runs encrypted requests.

:class:`Worker` is transport-agnostic: it quantizes each weight once, builds one backend server per
(layer, direction) — ``forward`` multiplies by ``q``, ``backward`` by ``q.T`` — opens sessions,
keeps the evaluation keys each session registers, and runs requests. It never holds a secret key.
:class:`LocalTransport` calls a Worker in-process; the HTTP service around it is
:mod:`veilml.linear.service`, its client :mod:`veilml.linear.transport`.

Sessions belong to their client: opening one returns an unguessable secret (kept by the transport)
that every later request of the session carries; only a digest of it is stored by the worker. The
evaluation keys registered for a matrix cannot be replaced (only sent again, identical), so no
other client can swap them under the session's owner.

What a client learns is inherent to the service: anyone allowed to query a worker can recover its
quantized weights (``x @ W`` for the identity rows ``x``). A worker-wide access token (see
:mod:`veilml.linear.service`) decides who may query at all.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from veilml.linear.base import LinearBackend, LinearServer, Work, WorkTimeout, get_backend, run_work
from veilml.linear.errors import WorkerError
from veilml.linear.http import SESSION_ID
from veilml.linear.layers import ALL, DIRECTIONS, LayerInfo
from veilml.linear.limits import DEFAULT_BACKEND, DEFAULT_INPUT_BITS, DEFAULT_MAX_ROWS, DEFAULT_WEIGHT_BITS, WORKER_LIMITS
from veilml.quantization import QuantizedWeight
from veilml.serving.limits import ServiceLimits
from veilml.serving.store import OwnedStore

__all__ = ["LocalTransport", "SessionGrant", "Worker"]

#: the client of sessions opened in this process (LocalTransport)
LOCAL = "local"


@dataclass(frozen=True)
class SessionGrant:
    """A new session: its id (not secret, may appear in URLs) and the secret that proves ownership."""

    id: str
    secret: str = field(repr=False)


def _item(layer: str, direction: str) -> str:
    return f"{layer}/{direction}"


@dataclass
class Worker:
    """Holds frozen base weights and answers encrypted per-layer requests.

    Args:
        weights: layer name -> float weight (d_in, d_out), oriented so that the layer computes
            ``x @ W`` (GPT-2 ``Conv1D`` as stored; ``nn.Linear`` weights transposed).
        biases: optional layer name -> (d_out,) bias, published to clients (added in the clear).
        backend: ``"bfv"`` (exact and fast, the default: veilml's kernels, numba or torch), ``"bfv-seal"`` (the same
            protocol with SEAL: exact, slower), ``"concrete"`` (exact, compiled through the IR),
            ``"glwe"`` (approximate, compact), ``"clear"``
            (plaintext: the worker sees the client's codes; testing only), or a backend object.
        weight_bits / input_bits: precision of the quantized weights and of the client's rows.
        max_rows: largest number of rows accepted in one request, for every backend; published to
            clients, which split larger inputs.
        limits: bounds of the session store (sessions and key bytes, in all and per client); the HTTP
            service sets its own (:meth:`apply_limits`).
    """

    weights: Mapping[str, np.ndarray]
    biases: Mapping[str, np.ndarray] = field(default_factory=dict)
    backend: str | LinearBackend = DEFAULT_BACKEND
    weight_bits: int = DEFAULT_WEIGHT_BITS
    input_bits: int = DEFAULT_INPUT_BITS
    max_rows: int = DEFAULT_MAX_ROWS
    limits: ServiceLimits = WORKER_LIMITS
    infos: dict[str, LayerInfo] = field(init=False)
    servers: dict[tuple[str, str], LinearServer] = field(init=False)
    store: OwnedStore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._backend = get_backend(self.backend)
        self.backend = self._backend.name
        self.infos, self.servers = {}, {}
        self.store = OwnedStore(
            self.limits, id_pattern=SESSION_ID.pattern, noun="session", unknown_code="unknown-session", error=WorkerError
        )
        for name, weight in self.weights.items():
            quantized = QuantizedWeight.from_float(np.asarray(weight, dtype=np.float64), self.weight_bits)
            self.infos[name] = LayerInfo.of(name, quantized, self.input_bits, self.biases.get(name))
            self.servers[(name, "forward")] = self._backend.server(quantized.q, self.input_bits)
            self.servers[(name, "backward")] = self._backend.server(np.ascontiguousarray(quantized.q.T), self.input_bits)

    def apply_limits(self, limits: ServiceLimits) -> None:
        """Bound the session store by ``limits`` from now on (the HTTP service's own)."""
        self.limits = self.store.limits = limits

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
    def sessions(self) -> dict[str, dict[str, int]]:
        """Open sessions: id -> the sizes of the evaluation keys each holds (by ``layer/direction``)."""
        return {session: self.store.items(session) for session in self.store.ids()}

    @property
    def session_keys(self) -> dict[tuple[str, str, str], bytes]:
        """Every stored evaluation key, by (session, layer, direction): what the worker holds."""
        held = {}
        for session in self.store.ids():
            for item in self.store.items(session):
                layer, direction = item.rsplit("/", 1)
                data = self.store.get(session, item)
                if data is not None:
                    held[(session, layer, direction)] = data
        return held

    def open_session(self, client: str = LOCAL) -> SessionGrant:
        """A new session of ``client`` with an unguessable secret; only the secret's digest is kept.

        A client over its quota of sessions loses its own least recently used one.
        """
        session, secret = self.store.open(client)
        return SessionGrant(session, secret)

    def close_session(self, session: str) -> None:
        """Drop a session and all its keys (eviction, or a client that is done)."""
        self.store.drop(session)

    def register(self, session: str, secret: str | None, layer: str, direction: str, evaluation_keys: bytes) -> None:
        """Keep a session's evaluation keys for one matrix, or for all (``layer == direction == ALL``).

        Keys once registered for a matrix are kept as they are: sending the same bytes again is
        harmless (a retry), other bytes are refused (409): open a new session for new keys.
        """
        self.store.authorize(session, secret)
        item = _item(layer, direction)
        current = self.store.get(session, item)
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
        self.store.put(session, item, evaluation_keys)

    def forget(self, session: str, layer: str | None = None, direction: str | None = None) -> None:
        """Drop a session's evaluation keys (all of them, or one matrix's); the session stays open."""
        for item in self.store.items(session):
            held_layer, held_direction = item.rsplit("/", 1)
            if (layer is None or held_layer == layer) and (direction is None or held_direction == direction):
                self.store.drop_item(session, item)

    def work(self, session: str, secret: str | None, layer: str, direction: str, ciphertext: bytes) -> Work:
        """A request checked (session, keys, rows, bytes) and cut into units of work (see :class:`~.base.Work`)."""
        server = self.check(layer, direction)
        self.store.authorize(session, secret)
        keys = self.store.get(session, _item(layer, direction))
        if keys is None:
            keys = self.store.get(session, _item(ALL, ALL))
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
            return server.work(ciphertext, keys)
        except (ValueError, TypeError) as error:
            raise WorkerError(400, f"bad ciphertext for {layer}/{direction}: {error}") from None

    def run(self, session: str, secret: str | None, layer: str, direction: str, ciphertext: bytes) -> bytes:
        """The encrypted result of a request, computed here unit after unit within the run timeout."""
        work = self.work(session, secret, layer, direction, ciphertext)
        try:
            return run_work(work, time.monotonic() + self.limits.run_timeout)
        except WorkTimeout as error:
            raise WorkerError(504, f"{layer}/{direction}: {error}", "run-timeout") from None
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
