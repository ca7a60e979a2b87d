"""The evaluation side: a circuit and evaluation keys, never a secret key."""

from __future__ import annotations

from typing import Any

__all__ = ["FHEServer"]


class FHEServer:
    """Runs a compiled circuit on serialized ciphertexts with serialized evaluation keys."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._keys_blob: bytes | None = None
        self._keys: Any = None

    def _evaluation_keys(self, evaluation_keys: bytes) -> Any:
        from concrete import fhe

        if evaluation_keys is not self._keys_blob and evaluation_keys != self._keys_blob:
            # deserialize once per key set
            self._keys = fhe.EvaluationKeys.deserialize(evaluation_keys)
            self._keys_blob = evaluation_keys
        return self._keys

    def run(self, ciphertext: bytes, evaluation_keys: bytes) -> bytes:
        """The encrypted result, serialized, of the circuit on one encrypted sample."""
        from concrete import fhe

        value = fhe.Value.deserialize(ciphertext)
        result = self._server.run(value, evaluation_keys=self._evaluation_keys(evaluation_keys))
        return result.serialize()
