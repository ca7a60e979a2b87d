"""The client side: the only place that holds a secret key.

It quantizes and encodes inputs, encrypts them, decrypts results and dequantizes them. What
leaves it is ciphertexts and evaluation keys, both as bytes. Its key files are private files
(:mod:`veilml.runtime.private_files`, whose readers and writers it re-exports).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

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
from veilml.runtime.private_files import read_private_file, write_private_file
from veilml.runtime.progress import timed_step
from veilml.runtime.security import encrypted_gates
from veilml.runtime.seeded_inputs import SeededEncryptor, input_secret_key, seeded_input_spec

__all__ = ["RESULT_OVERHEAD_BYTES", "FHEClient", "ResultError", "read_private_file", "write_private_file"]

#: bytes a result envelope may hold beyond its ciphertext words: the envelope's header (at most 1 KiB
#: plus 12) and concrete's serialization (about 450 bytes measured for a 3-ciphertext output)
RESULT_OVERHEAD_BYTES = 4096

logger = logging.getLogger("veilml.runtime")


class ResultError(VeilmlError, ValueError):
    """A result that cannot be this circuit's output for the rows sent (another number of rows, another
    length): refused, since the server that sent it may be hostile."""


class FHEClient:
    """Keys, encryption and decryption for one compiled model.

    What it hands out — evaluation keys, ciphertexts — are envelopes (:mod:`veilml.runtime.envelope`)
    that name the model (the fingerprint of ``client_specs``) and the key set (the sha256 of the
    evaluation keys); it decrypts only result envelopes that name its own model and key set, no
    larger than the circuit's output, and whose decryption has the output's length. Specs whose
    input or output is not an LWE ciphertext are refused: it never serializes a row unencrypted.

    Args:
        client_specs: concrete's ``ClientSpecs`` of the circuit (public).
        codec: the steps around the circuit (:class:`~veilml.runtime.codec.ClientCodec`, or
            any object with ``encode(X)`` -> integers to encrypt and ``decode(integers)`` -> outputs).
        key_cache: concrete's insecure key cache directory (tests only), or None.
        max_result_bytes: the largest result envelope :meth:`decrypt_integers` reads.
    """

    def __init__(
        self,
        client_specs: Any,
        codec: Any,
        key_cache: str | Path | None = None,
        max_result_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        from concrete import fhe

        self.codec = codec
        self.fingerprint = specs_fingerprint(client_specs)
        # raises unless every input and output is an LWE ciphertext: no row is ever sent in the clear
        self._gates = encrypted_gates(client_specs)
        # one circuit of one output (veilml's): its decryption has a known length, and its envelope
        # at most its uncompressed ciphertexts plus concrete's and the envelope's headers
        (_, outputs), *others = self._gates.values()
        self.output_size: int | None = None
        if not others and len(outputs) == 1:
            self.output_size = outputs[0].count
            max_result_bytes = min(max_result_bytes, outputs[0].max_bytes + RESULT_OVERHEAD_BYTES)
        self.max_result_bytes = max_result_bytes
        self._client = fhe.Client(client_specs, keyset_cache_directory=key_cache)
        self._evaluation_keys: bytes | None = None
        self._key_id: str | None = None
        self._input_spec = seeded_input_spec(client_specs)  # None: concrete encrypts the inputs
        self._encryptor: SeededEncryptor | None = None

    # ----------------------------------------------------------------------------------- keys
    def keygen(self, *, seed: int | None = None, force: bool = False, progress: bool | None = None) -> None:
        """Generate the secret and evaluation keys (once; ``force`` makes new ones); ``progress``: a bar while it
        runs (None: on a terminal or in a notebook), and an INFO line with its time on the ``veilml.runtime`` logger."""
        if force or not self.has_keys:  # concrete keeps keys it has unless forced
            with timed_step("FHE keygen", logger, progress):
                self._client.keygen(force=force, secret_seed=seed)
        self._forget_evaluation_keys()

    def _forget_evaluation_keys(self) -> None:
        """Drop what was derived from the previous key set (new keys were made or loaded)."""
        self._evaluation_keys = self._key_id = None
        self._encryptor = None

    @property
    def has_keys(self) -> bool:
        return bool(self._client.keys.are_generated)

    @property
    def key_id(self) -> str:
        """sha256 (hex) of this client's serialized evaluation keys: the name of its key set."""
        self.evaluation_keys()
        assert self._key_id is not None
        return self._key_id

    def evaluation_keys(self) -> bytes:
        """The public evaluation keys in an envelope: this is what a server needs, and all it gets."""
        if not self.has_keys:
            self.keygen()
        if self._evaluation_keys is None:  # packed once per key set: servers cache by key id
            payload = self._client.evaluation_keys.serialize()
            self._key_id = key_id(payload)
            self._evaluation_keys = pack_envelope("evaluation-keys", payload, fingerprint=self.fingerprint, key_id=self._key_id)
        return self._evaluation_keys

    def save_keys(self, path: str | Path) -> Path:
        """Write all keys (secret included) to ``path`` with mode 0600 (never through a symbolic link)."""
        if not self.has_keys:
            raise ValueError("no keys to save yet; call keygen() first")
        return write_private_file(path, self._client.keys.serialize())

    def load_keys(self, path: str | Path) -> None:
        """Load keys written by :meth:`save_keys` (a regular file of mode 0600, not a symbolic link)."""
        from concrete import fhe

        self._client.keys = fhe.Keys.deserialize(read_private_file(path))
        self._forget_evaluation_keys()

    # ----------------------------------------------------------------------------------- data
    def encrypt_encoded(self, encoded_row: np.ndarray) -> bytes:
        """A ciphertext envelope of one encoded row (the integers the circuit takes)."""
        if not self.has_keys:
            self.keygen()
        identifier = self.key_id
        if self._input_spec is not None:  # veilml's seeded inputs (Configuration.input_encryption)
            if self._encryptor is None:
                spec = self._input_spec
                # the whole encoded row, also when the circuit reads part of it (the server drops the rest)
                size = getattr(getattr(self.codec, "encoding", None), "size", None)
                shape = spec.shape if size is None else (*spec.shape[:-1], int(size))
                self._encryptor = SeededEncryptor(spec, input_secret_key(self._client.keys, spec), shape)
            payload = self._encryptor.encrypt(np.asarray(encoded_row))
        else:
            self._require_encrypted_inputs()
            payload = self._client.encrypt(np.ascontiguousarray(encoded_row, dtype=np.int64)).serialize()
        return pack_envelope("ciphertext", payload, fingerprint=self.fingerprint, key_id=identifier)

    def _require_encrypted_inputs(self) -> None:
        """Refuse, right before concrete serializes an input, unless the specs concrete encrypts with
        (read again from concrete's client, not from what was checked when this client was made)
        declare it an LWE ciphertext."""
        encrypted_gates(self._client.specs)

    def encrypt(self, X: np.ndarray) -> list[bytes]:
        """One ciphertext envelope per row of ``X``."""
        return [self.encrypt_encoded(row) for row in self.codec.encode(X)]

    def decrypt_integers(self, result: bytes) -> np.ndarray:
        """The integers of a result envelope computed for this model under this client's key set.

        The envelope's format, model and key set are checked before anything is decrypted; the
        decrypted values themselves are never judged (see DESIGN.md on reaction attacks).
        """
        from concrete import fhe

        envelope = unpack_envelope(result, "result", max_bytes=self.max_result_bytes)
        check_model(envelope, self.fingerprint, side="client")
        if not self.has_keys:
            raise ValueError("this client has no keys: it cannot have encrypted the inputs of this result")
        check_key_id(envelope, self.key_id)
        value = fhe.Value.deserialize(envelope.payload)
        integers = np.asarray(self._client.decrypt(value), dtype=np.int64).reshape(-1)
        if self.output_size is not None and integers.size != self.output_size:  # the shape, never the values
            raise ResultError(
                f"a result decrypted to {integers.size} integers, and this model's circuit outputs {self.output_size}: "
                "it is not this circuit's output; the server that sent it may be hostile, do not use its results"
            )
        return integers

    def decrypt(self, results: list[bytes]) -> np.ndarray:
        """Dequantized outputs (n_samples, n_outputs) of result envelopes."""
        integers = np.stack([self.decrypt_integers(r) for r in results])
        return self.codec.decode(integers)
