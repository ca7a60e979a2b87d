"""Compiled models on disk: a client bundle for data owners, a server bundle for whoever runs it.

``save_bundle(fhe_model, directory)`` writes::

    directory/
      client/   manifest.json, codec.json (quantizer, encoding, output steps), client.specs.json
      server/   manifest.json, server.zip (concrete's compiled circuit), client.specs.json, layout.bin

The client side gets what encryption and decryption need and nothing of the model in between (no
graph, no threshold, no leaf value); the server side gets the circuit and what checks its inputs,
and never a key. Each side has a manifest (:mod:`veilml.runtime.manifest`) checked on load.

:class:`ModelClient` (the data owner: keys, ``encrypt(X) -> bytes``, ``decrypt(bytes) ->
predictions``) and :class:`ModelServer` (``register(keys) -> key id``, ``run(bytes, key_id)``)
are built from those directories alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..data_checks import check_X
from .client import FHEClient
from .codec import ClientCodec
from .envelope import DEFAULT_MAX_BYTES, pack_batch, specs_fingerprint, unpack_batch
from .manifest import check_manifest, write_manifest
from .server import FHEServer

__all__ = ["CLIENT_FORMAT", "SERVER_FORMAT", "ModelClient", "ModelServer", "save_bundle"]

CLIENT_FORMAT = "veilml-bundle/client"
SERVER_FORMAT = "veilml-bundle/server"
#: rows per encrypt() / run() call unless told otherwise
DEFAULT_MAX_ROWS = 256
_SPECS = "client.specs.json"


def _specs_bytes(specs: Any) -> bytes:
    raw = specs.serialize() if hasattr(specs, "serialize") else specs
    return raw.encode() if isinstance(raw, str) else bytes(raw)


def save_bundle(fhe_model: Any, directory: str | os.PathLike) -> Path:
    """Write the client and server bundles of a compiled :class:`~veilml.runtime.FHEModel`.

    The directory is written next to its final place and renamed into it, so a reader never sees
    half a bundle; an existing bundle there is replaced.
    """
    compiled = fhe_model._require_compiled("save")
    if compiled.batch_size != 1:
        raise ValueError(
            f"this model is compiled for batches of {compiled.batch_size} rows, and a bundle holds a one-row "
            "circuit (servers batch requests themselves): compile it again with batch_size=1 (the default) "
            "before save()"
        )
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        specs = _specs_bytes(compiled.circuit.client.specs)
        fingerprint = specs_fingerprint(specs)
        codec: ClientCodec = fhe_model.codec
        facts = {"fingerprint": fingerprint, "n_features": codec.n_features, "input_size": codec.encoding.size}

        client = staging / "client"
        client.mkdir()
        (client / "codec.json").write_text(codec.to_json())
        (client / _SPECS).write_bytes(specs)
        write_manifest(client, CLIENT_FORMAT, **facts)

        server = staging / "server"
        server.mkdir()
        compiled.circuit.server.save(str(server / "server.zip"))
        (server / _SPECS).write_bytes(specs)
        (server / "layout.bin").write_bytes(fhe_model.server().layout.to_bytes())
        columns = None if compiled.input_columns is None else [int(c) for c in compiled.input_columns]
        write_manifest(server, SERVER_FORMAT, **facts, input_columns=columns)

        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _side(directory: str | os.PathLike, side: str) -> Path:
    """``directory/side`` when given a whole bundle, ``directory`` itself when given one side."""
    directory = Path(directory)
    return directory / side if (directory / side / "manifest.json").exists() else directory


class ModelClient:
    """The data owner's side of a deployed model, from its client bundle.

    Args:
        directory: the bundle (or its ``client/`` directory).
        key_dir: where the keys live. If it holds keys for this model they are loaded, otherwise new
            ones are generated and written there (secret keys with mode 0600). None: keys stay in
            memory.
        max_rows: the most rows one :meth:`encrypt` call puts in a batch.
        min_security_bits: the security the bundle's cryptographic parameters must give; a bundle
            that offers less is refused before any key is made.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        key_dir: str | os.PathLike | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        min_security_bits: int = 128,
    ) -> None:
        from concrete import fhe

        from .security import check_client_specs

        self.directory = _side(directory, "client")
        self.manifest = check_manifest(self.directory, CLIENT_FORMAT)
        specs = (self.directory / _SPECS).read_bytes()
        check_client_specs(specs, min_security_bits)  # a hostile model owner cannot weaken our keys
        self.codec = ClientCodec.from_json((self.directory / "codec.json").read_text())
        self.max_rows = max_rows
        self._fhe = FHEClient(fhe.ClientSpecs.deserialize(specs), self.codec)
        self.key_dir = None if key_dir is None else Path(key_dir)
        if self.key_dir is not None and self._key_file.exists():
            self._fhe.load_keys(self._key_file)

    @property
    def _key_file(self) -> Path:
        assert self.key_dir is not None
        return self.key_dir / f"{self.fingerprint[:16]}.keys"

    @property
    def fingerprint(self) -> str:
        """The model's fingerprint (sha256 of its public client specs)."""
        return self._fhe.fingerprint

    @property
    def n_features(self) -> int:
        return self.codec.n_features

    def keygen(self, *, seed: int | None = None, force: bool = False) -> None:
        """Generate keys (once; ``force`` makes new ones) and write them to ``key_dir`` (0600) if set."""
        if self._fhe.has_keys and not force:
            return
        self._fhe.keygen(seed=seed, force=True)
        if self.key_dir is not None:
            self._fhe.save_keys(self._key_file)

    @property
    def key_id(self) -> str:
        """The name of this client's key set (sha256 of its evaluation keys; public)."""
        self.keygen()
        return self._fhe.key_id

    def evaluation_keys(self) -> bytes:
        """The public evaluation keys (an envelope) that a server needs; made once per key set."""
        self.keygen()
        return self._fhe.evaluation_keys()

    def encrypt(self, X: Any) -> bytes:
        """One batch of ciphertexts for the float rows of ``X`` (quantized and encoded first)."""
        X = check_X(X, self.n_features, "ModelClient")
        if len(X) > self.max_rows:
            raise ValueError(f"{len(X)} rows in one call, the limit is {self.max_rows} (max_rows); encrypt in chunks")
        self.keygen()
        return pack_batch(self._fhe.encrypt(X))

    def decrypt_integers(self, results: bytes) -> np.ndarray:
        """The raw integers of a result batch (what ``predict_integers`` gives in the clear)."""
        items = unpack_batch(results, max_items=self.max_rows, max_bytes=self._fhe.max_result_bytes, what="result batch")
        return np.stack([self._fhe.decrypt_integers(r) for r in items])

    def decrypt_scores(self, results: bytes) -> np.ndarray:
        """Raw scores (n_rows, n_outputs) of a result batch: decrypted, combined, dequantized."""
        return self.codec.decode(self.decrypt_integers(results))

    def decrypt_proba(self, results: bytes) -> np.ndarray:
        """Class probabilities (classifiers) or values (regressors) of a result batch."""
        return self.codec.finish(self.decrypt_scores(results))

    def decrypt(self, results: bytes) -> np.ndarray:
        """Predictions of a result batch: labels for classifiers, values for regressors."""
        return self.codec.predict(self.decrypt_integers(results))


class ModelServer:
    """The evaluation side of a deployed model, from its server bundle: no key, no data.

    Args:
        directory: the bundle (or its ``server/`` directory).
        key_cache_size: deserialized key sets kept in memory (least recently used goes first).
        max_rows: the most rows one :meth:`run` call accepts.
        max_bytes: the largest evaluation-key or ciphertext batch accepted.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        key_cache_size: int = 8,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        from concrete import fhe

        self.directory = _side(directory, "server")
        self.manifest = check_manifest(self.directory, SERVER_FORMAT)
        specs = (self.directory / _SPECS).read_bytes()
        server = fhe.Server.load(str(self.directory / "server.zip"))
        self.max_rows = max_rows
        self._fhe = FHEServer(
            server,
            specs,
            layout=(self.directory / "layout.bin").read_bytes(),
            key_cache_size=key_cache_size,
            max_bytes=max_bytes,
            input_columns=self.manifest.get("input_columns"),
            row_size=int(self.manifest["input_size"]),
        )

    @property
    def fingerprint(self) -> str:
        return self._fhe.fingerprint

    @property
    def n_features(self) -> int:
        return int(self.manifest["n_features"])

    def register(self, evaluation_keys: bytes) -> str:
        """Check and load an evaluation-key envelope; returns its key id."""
        return self._fhe.register(evaluation_keys)

    def is_registered(self, identifier: str) -> bool:
        return self._fhe.is_registered(identifier)

    def run(self, ciphertexts: bytes, key_id: str) -> bytes:
        """The result batch of a ciphertext batch made under the registered key set ``key_id``."""
        items = unpack_batch(ciphertexts, max_items=self.max_rows, max_bytes=self._fhe.max_bytes, what="ciphertext batch")
        return pack_batch([self._fhe.run_registered(item, key_id) for item in items])
