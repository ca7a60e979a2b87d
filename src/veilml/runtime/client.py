"""The client side: the only place that holds a secret key.

It quantizes and encodes inputs, encrypts them, decrypts results and dequantizes them. What
leaves it is ciphertexts and evaluation keys, both as bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["FHEClient", "write_private_file"]


def write_private_file(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` readable by its owner only (mode 0600, set at creation)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode under O_CREAT
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
    finally:
        if fd != -1:
            os.close(fd)
    return path


class FHEClient:
    """Keys, encryption and decryption for one compiled model.

    Args:
        client_specs: concrete's ``ClientSpecs`` of the circuit (public).
        encode: float rows -> the integers to encrypt (quantization and input encoding).
        decode: decrypted integers -> float outputs (dequantization).
        key_cache: concrete's insecure key cache directory (tests only), or None.
    """

    def __init__(
        self,
        client_specs: Any,
        encode: Callable[[np.ndarray], np.ndarray],
        decode: Callable[[np.ndarray], np.ndarray],
        key_cache: str | Path | None = None,
    ) -> None:
        from concrete import fhe

        self.encode = encode
        self.decode = decode
        self._client = fhe.Client(client_specs, keyset_cache_directory=key_cache)
        self._evaluation_keys: bytes | None = None

    # ----------------------------------------------------------------------------------- keys
    def keygen(self, *, seed: int | None = None, force: bool = False) -> None:
        """Generate the secret and evaluation keys (once; ``force`` makes new ones)."""
        self._client.keygen(force=force, secret_seed=seed)
        self._evaluation_keys = None

    @property
    def has_keys(self) -> bool:
        return bool(self._client.keys.are_generated)

    def evaluation_keys(self) -> bytes:
        """The public evaluation keys, serialized: this is what a server needs, and all it gets."""
        if not self.has_keys:
            self.keygen()
        if self._evaluation_keys is None:  # serialized once per key set: servers cache by identity
            self._evaluation_keys = self._client.evaluation_keys.serialize()
        return self._evaluation_keys

    def save_keys(self, path: str | Path) -> Path:
        """Write all keys (secret included) to ``path`` with mode 0600."""
        if not self.has_keys:
            raise ValueError("no keys to save yet; call keygen() first")
        return write_private_file(path, self._client.keys.serialize())

    def load_keys(self, path: str | Path) -> None:
        """Load keys written by :meth:`save_keys`."""
        from concrete import fhe

        path = Path(path)
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"{path} is readable by other users; run 'chmod 600 {path}' first")
        self._client.keys = fhe.Keys.deserialize(path.read_bytes())
        self._evaluation_keys = None

    # ----------------------------------------------------------------------------------- data
    def encrypt_encoded(self, encoded_row: np.ndarray) -> bytes:
        if not self.has_keys:
            self.keygen()
        value = self._client.encrypt(np.ascontiguousarray(encoded_row, dtype=np.int64))
        return value.serialize()

    def encrypt(self, X: np.ndarray) -> list[bytes]:
        """One serialized ciphertext per row of ``X``."""
        return [self.encrypt_encoded(row) for row in self.encode(X)]

    def decrypt_integers(self, result: bytes) -> np.ndarray:
        from concrete import fhe

        return np.asarray(self._client.decrypt(fhe.Value.deserialize(result)), dtype=np.int64).reshape(-1)

    def decrypt(self, results: list[bytes]) -> np.ndarray:
        """Dequantized outputs (n_samples, n_outputs) of serialized encrypted results."""
        integers = np.stack([self.decrypt_integers(r) for r in results])
        return self.decode(integers)
