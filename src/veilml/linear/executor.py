"""The client side of remote linear layers: :class:`EncryptedLinearExecutor` and the :class:`Transport` it uses.

The executor does per-row quantization, encryption, decryption, zero-point correction and
rescaling, and is the only holder of secret keys. It reaches workers through transports with the
same calls in-process (:class:`~veilml.linear.worker.LocalTransport`) or over HTTP
(:class:`~veilml.linear.transport.HTTPTransport`).

A client that holds the base weights itself (a model before its projections are outsourced) checks each worker
with :meth:`EncryptedLinearExecutor.check_base_weights` before it sends anything: the worker's published fingerprint
must be the one of the client's own weights.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

import numpy as np

from veilml.linear.base import ClientSession, LinearBackend, get_backend
from veilml.linear.errors import BaseWeightsMismatchError, InsecureBackendError
from veilml.linear.layers import ALL, LayerInfo, layers_fingerprint
from veilml.linear.limits import DEFAULT_MAX_ROWS
from veilml.quantization import QuantizedWeight, backward_input, backward_output, forward_output, quantize_rows

__all__ = ["EncryptedLinearExecutor", "Transport"]


class Transport(Protocol):
    """How a client reaches workers: the same calls in-process or over HTTP.

    ``open_session`` returns a session id; the transport keeps the session's secret and sends it
    with every ``register`` and ``run`` of that session. ``max_rows`` is the most rows the worker
    takes in one ``run``, as the worker publishes it (a transport without it is assumed to reach a
    worker with the default limit, :data:`~veilml.linear.limits.DEFAULT_MAX_ROWS`).
    """

    backend: str
    max_rows: int

    def layers(self) -> dict[str, LayerInfo]: ...

    def setup(self, layer: str, direction: str) -> bytes: ...

    def open_session(self) -> str: ...

    def register(self, session: str, layer: str, direction: str, evaluation_keys: bytes) -> None: ...

    def run(self, session: str, layer: str, direction: str, ciphertext: bytes) -> bytes: ...


class EncryptedLinearExecutor:
    """Client side of remote linear layers over one or more transports (workers).

    ``forward(name, x)`` returns ``x @ W (+ bias)`` and ``backward(name, g)`` returns ``g @ W.T``,
    both as float64 arrays, computed by the worker on encrypted per-row-quantized codes. Keys
    are generated and registered lazily, once per layer and direction.

    The client decides the security it requires: ``backend=None`` takes the workers' backend only
    if it encrypts (``bfv``, ``concrete`` or ``glwe``) and raises :class:`InsecureBackendError` for ``clear``;
    plaintext needs ``backend="clear"`` here, an explicit choice. Crypto parameters that a worker
    hands over are checked by the backend's session before any key is made from them.

    Rows are sent in requests of at most the worker's published ``max_rows`` (see :meth:`max_rows`);
    rows are quantized one by one, so the split changes nothing in the result.

    Attributes:
        sessions: the session id opened on each transport (by position in ``transports``).
        bytes_sent / bytes_received: payload bytes exchanged with workers (ciphertexts and keys).
    """

    def __init__(
        self, transports: Transport | list[Transport], backend: str | LinearBackend | None = None, **backend_options: Any
    ) -> None:
        transports = transports if isinstance(transports, list) else [transports]
        names = {t.backend for t in transports}
        if backend is None and len(names) != 1:
            raise ValueError(f"workers use different backends {sorted(names)}; they must agree")
        self._backend = get_backend(backend or names.pop(), **backend_options)
        if backend is None and not self._backend.encrypts:
            raise InsecureBackendError(
                f"the worker serves the {self._backend.name!r} backend, which sends your activations and gradients "
                "UNENCRYPTED; connect to a worker started with --backend bfv, concrete or glwe, or pass "
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

    def max_rows(self, name: str) -> int:
        """The most rows the worker serving ``name`` takes in one request, as it publishes it."""
        self.layer(name)
        limit = getattr(self.routes[name], "max_rows", None)  # transports written before max_rows: the default
        return DEFAULT_MAX_ROWS if limit is None else int(limit)

    def fingerprint(self, transport: Transport) -> str:
        """The fingerprint ``transport``'s worker publishes (``GET /health``), or, for a transport that does not
        read one (in-process), that of the layers it publishes (:func:`~veilml.linear.layers.layers_fingerprint`)."""
        published = getattr(transport, "fingerprint", None)
        if published:
            return str(published)
        return layers_fingerprint(transport.backend, {n: i for n, i in self.infos.items() if self.routes[n] is transport})

    def check_base_weights(
        self, weights: Mapping[str, tuple[np.ndarray, np.ndarray | None]], unavailable: Collection[str] = ()
    ) -> None:
        """Refuse a worker that serves other base weights than ``weights``, before anything is sent to it.

        ``weights`` are the client's own frozen weights, ``{name: (W (d_in, d_out), bias or None)}`` (as
        :func:`~veilml.models.lora.weights.remote_linear_weights` returns them). For each worker the client
        quantizes them with the worker's bits and computes the fingerprint the worker publishes; another
        fingerprint, or a served layer missing from ``weights``, raises :class:`BaseWeightsMismatchError`. A worker
        serving a layer named in ``unavailable`` (outsourced earlier: its weight is gone here) is left unchecked.
        """
        for transport in self.transports:
            served = sorted(name for name, route in self.routes.items() if route is transport)
            if any(name in unavailable for name in served):
                continue
            expected = {
                name: LayerInfo.of(
                    name,
                    QuantizedWeight.from_float(weights[name][0], self.infos[name].weight_bits),
                    self.infos[name].input_bits,
                    weights[name][1],
                )
                for name in served
                if name in weights
            }
            published, computed = self.fingerprint(transport), layers_fingerprint(transport.backend, expected)
            if len(expected) < len(served) or computed != published:
                raise BaseWeightsMismatchError(_mismatch(transport, published, computed, expected, self.infos, served))

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
        limit = self.max_rows(name)
        if rows.shape[0] > limit:  # one request per max_rows rows, the worker's own limit
            parts = [self._remote_product(name, direction, rows[i : i + limit]) for i in range(0, rows.shape[0], limit)]
            product, scale, zero = (np.concatenate(arrays) for arrays in zip(*parts))
            return product, scale, zero
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
            raise ValueError(
                f"the worker answered {name}/{direction} with shape {product.shape} for {expected[0]} rows sent; expected {expected}"
            )
        return product, scale, zero

    def forward(self, name: str, x: np.ndarray) -> np.ndarray:
        """``x @ W (+ bias)`` for rows ``x`` (n, d_in) of layer ``name``, computed by its worker."""
        info = self.layer(name)
        x = _float_rows(name, x, info.d_in, "rows")
        product, scale, zero = self._remote_product(name, "forward", x)
        y = forward_output(product, scale, zero, info.weight_scale, info.col_sums)
        return y if info.bias is None else y + info.bias[None, :]

    def backward(self, name: str, g: np.ndarray) -> np.ndarray:
        """``g @ W.T`` for output gradients ``g`` (n, d_out) of layer ``name``, computed by its worker."""
        info = self.layer(name)
        g = _float_rows(name, g, info.d_out, "gradient rows")
        product, scale, zero = self._remote_product(name, "backward", backward_input(g, info.weight_scale))
        return backward_output(product, scale, zero, info.row_sums)


def _float_rows(name: str, values: np.ndarray, width: int, what: str) -> np.ndarray:
    """``values`` as float64 rows of ``width`` features; ValueError naming the layer otherwise."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(f"layer {name!r} takes {what} of {width} features, got shape {values.shape}")
    return values


def _mismatch(
    transport: Transport,
    published: str,
    computed: str,
    expected: dict[str, LayerInfo],
    infos: dict[str, LayerInfo],
    served: list[str],
) -> str:
    """The message of :class:`BaseWeightsMismatchError`: both fingerprints, the first layer that differs, the fix."""
    absent = [name for name in served if name not in expected]
    differ = [name for name in served if name in expected and expected[name].to_dict() != infos[name].to_dict()]
    if absent:
        detail = f"it serves {len(absent)} layers this model does not have, e.g. {absent[0]!r}"
    elif differ:
        mine, theirs = expected[differ[0]], infos[differ[0]]
        shape = f"({mine.d_in} -> {mine.d_out}) here, ({theirs.d_in} -> {theirs.d_out}) there"
        what = shape if (mine.d_in, mine.d_out) != (theirs.d_in, theirs.d_out) else "other weight values"
        detail = f"{len(differ)} of its {len(served)} layers differ, e.g. {differ[0]!r}: {what}"
    else:
        detail = "its published fingerprint is not the hash of the layers it publishes"
    url = getattr(transport, "url", None)
    where = f"the worker at {url}" if url else f"the worker of {type(transport).__name__}"
    return (
        f"{where} serves other base weights than this model's: worker fingerprint {published}, "
        f"this model's {computed} ({detail}). Nothing was sent to it. Start the worker with this model's weights "
        "(save_remote_weights(model, 'base.safetensors'), then veilml worker --weights base.safetensors), "
        "or load the base model the worker was started with"
    )
