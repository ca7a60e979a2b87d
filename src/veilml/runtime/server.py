"""The evaluation side: a circuit and evaluation keys, never a secret key."""

from __future__ import annotations

import threading
from typing import Any

from veilml.errors import VeilmlError
from veilml.runtime.envelope import (
    DEFAULT_MAX_BYTES,
    check_key_id,
    check_model,
    key_id,
    pack_envelope,
    specs_fingerprint,
    unpack_envelope,
)
from veilml.runtime.lru import LRUCache
from veilml.runtime.seeded_inputs import SeededInputs, seeded_input_spec
from veilml.runtime.validation import CircuitLayout, learn_circuit_layout

__all__ = ["FHEServer", "UnknownKeyError"]


class UnknownKeyError(VeilmlError, KeyError):
    """No evaluation keys are registered under this key id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown key id"


class FHEServer:
    """Runs a compiled circuit on ciphertext envelopes with evaluation-key envelopes.

    Everything that arrives is checked before concrete sees it: the envelopes' format, that the keys
    and the ciphertext were made for this circuit (the fingerprint of ``client_specs``) and for one
    key set (the keys hash to their key id, the ciphertext names that id), and that the concrete
    payloads have the circuit's layout (length and structural bytes, see
    :mod:`veilml.runtime.validation`).

    Args:
        server: concrete's ``Server`` of the circuit.
        client_specs: concrete's ``ClientSpecs`` of the same circuit (public), or its serialization.
        layout: the circuit's :class:`~veilml.runtime.validation.CircuitLayout` (or its bytes); by
            default it is learned on first use from two throw-away key sets (about two key
            generations of time), which are dropped at once.
        key_cache_size: how many deserialized key sets are kept (least recently used goes first).
        max_bytes: the largest envelope accepted.
        input_columns / row_size: for a circuit compiled on part of its rows (a narrowed input,
            :mod:`veilml.compiler.narrowing`), which of the ``row_size`` values of each seeded row
            it reads; the others are dropped before concrete sees the row.
    """

    def __init__(
        self,
        server: Any,
        client_specs: Any,
        *,
        layout: CircuitLayout | bytes | None = None,
        key_cache_size: int = 8,
        max_bytes: int = DEFAULT_MAX_BYTES,
        input_columns: Any = None,
        row_size: int | None = None,
    ) -> None:
        if key_cache_size < 1:
            raise ValueError(f"key_cache_size must be at least 1, got {key_cache_size}")
        self._server = server
        self._client_specs = client_specs.serialize() if hasattr(client_specs, "serialize") else bytes(client_specs)
        self.fingerprint = specs_fingerprint(self._client_specs)
        self._layout = CircuitLayout.from_bytes(layout) if isinstance(layout, (bytes, bytearray)) else layout
        if self._layout is not None and len(self._layout.inputs) != 1:
            raise ValueError(f"FHEServer runs circuits of one encrypted input, this layout has {len(self._layout.inputs)}")
        self.key_cache_size = key_cache_size
        self.max_bytes = max_bytes
        self._keys: LRUCache[str, Any] = LRUCache(key_cache_size)  # key id -> deserialized evaluation keys
        self._input_spec = seeded_input_spec(self._client_specs)  # None: inputs arrive as concrete's bytes
        if input_columns is not None and self._input_spec is None:
            raise ValueError("input_columns apply to seeded inputs only (Configuration(input_encryption='veilml'))")
        self._input_columns, self._row_size = input_columns, row_size
        self._seeded: SeededInputs | None = None
        self._lock = threading.Lock()

    @property
    def layout(self) -> CircuitLayout:
        """The layout of this circuit's evaluation keys and input (learned once, then kept)."""
        with self._lock:
            if self._layout is None:
                layout = learn_circuit_layout(self._client_specs)
                if len(layout.inputs) != 1:
                    raise ValueError(f"FHEServer runs circuits of one encrypted input, this one has {len(layout.inputs)}")
                self._layout = layout
            return self._layout

    def _evaluation_keys(self, payload: bytes, identifier: str) -> Any:
        from concrete import fhe

        keys = self._keys.get(identifier)
        if keys is None:
            keys = fhe.EvaluationKeys.deserialize(payload)  # checked by admit_keys first
            self._keys.put(identifier, keys)
        return keys

    def check(self, ciphertext: bytes, evaluation_keys: bytes) -> None:
        """Validate a ciphertext envelope and an evaluation-key envelope for this circuit.

        Raises a ``ValueError`` before anything reaches concrete: ``EnvelopeError`` for malformed
        envelopes, ``KeyMismatchError`` for keys or ciphertexts of another model or key set (both in
        :mod:`veilml.runtime.envelope`), ``LayoutError`` for payloads that do not have the circuit's
        layout (:mod:`veilml.runtime.validation`).
        """
        self._admit(ciphertext, evaluation_keys)

    def admit_keys(self, evaluation_keys: bytes) -> tuple[bytes, str]:
        """Concrete's bytes and the key id of an evaluation-key envelope for this circuit, checked
        (format, model, hash, layout) without deserializing them."""
        keys = unpack_envelope(evaluation_keys, "evaluation-keys", max_bytes=self.max_bytes)
        check_model(keys, self.fingerprint)
        check_key_id(keys, key_id(keys.payload))  # hashed on every call: a cached id is trusted for its content only
        self.layout.evaluation_keys.check(
            keys.payload,
            "these evaluation keys do not have this circuit's layout",
            "generate keys with this model's client and send them unmodified",
        )
        return keys.payload, keys.key_id

    def admit_ciphertext(self, ciphertext: bytes, identifier: str) -> bytes:
        """Concrete's bytes of a ciphertext envelope for this circuit under key set ``identifier``, checked."""
        value = unpack_envelope(ciphertext, "ciphertext", max_bytes=self.max_bytes)
        check_model(value, self.fingerprint)
        check_key_id(value, identifier)
        if self._input_spec is not None:  # a seeded input: checked, then written in the input's layout
            if self._seeded is None:
                self._seeded = SeededInputs(self._input_spec, self.layout.inputs[0], self._input_columns, self._row_size)
            return self._seeded.to_concrete(value.payload)
        self.layout.inputs[0].check(
            value.payload,
            "this ciphertext is not one of this circuit's inputs",
            "encrypt with this model's client and send the ciphertext unmodified",
        )
        return value.payload

    def admit(self, ciphertext: bytes, evaluation_keys: bytes) -> tuple[bytes, bytes, str]:
        """Both checks (see :meth:`check`) without deserializing anything: concrete's ciphertext bytes,
        concrete's key bytes, the key id. For servers that run concrete in another (isolated) process."""
        keys, identifier = self.admit_keys(evaluation_keys)
        return self.admit_ciphertext(ciphertext, identifier), keys, identifier

    def _admit(self, ciphertext: bytes, evaluation_keys: bytes) -> tuple[bytes, Any, str]:
        """The checked ciphertext payload, the deserialized evaluation keys and their key id."""
        payload, keys, identifier = self.admit(ciphertext, evaluation_keys)
        return payload, self._evaluation_keys(keys, identifier), identifier

    def register(self, evaluation_keys: bytes) -> str:
        """Check and deserialize an evaluation-key envelope once; its key id, for :meth:`run_registered`."""
        payload, identifier = self.admit_keys(evaluation_keys)
        self._evaluation_keys(payload, identifier)
        return identifier

    def is_registered(self, identifier: str) -> bool:
        """Whether the key set ``identifier`` is deserialized in the cache now (it may be evicted later)."""
        return identifier in self._keys

    def run_registered(self, ciphertext: bytes, identifier: str) -> bytes:
        """The result envelope of one ciphertext under the registered key set ``identifier``.

        Raises :class:`UnknownKeyError` when that key set is not (or no longer) in the cache:
        register its evaluation keys again.
        """
        from concrete import fhe

        payload = self.admit_ciphertext(ciphertext, identifier)
        keys = self._keys.get(identifier)
        if keys is None:
            raise UnknownKeyError(f"no evaluation keys registered under key id {identifier[:12]}...; register them first")
        result = self._server.run(fhe.Value.deserialize(payload), evaluation_keys=keys)
        return pack_envelope("result", result.serialize(), fingerprint=self.fingerprint, key_id=identifier)

    def run(self, ciphertext: bytes, evaluation_keys: bytes) -> bytes:
        """The result envelope of the circuit on one encrypted sample (see :meth:`check`)."""
        from concrete import fhe

        payload, keys, identifier = self._admit(ciphertext, evaluation_keys)
        result = self._server.run(fhe.Value.deserialize(payload), evaluation_keys=keys)
        return pack_envelope("result", result.serialize(), fingerprint=self.fingerprint, key_id=identifier)
