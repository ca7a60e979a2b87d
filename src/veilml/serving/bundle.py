"""Compiled models on disk: a client bundle for data owners, a server bundle for whoever runs it.

``save_bundle(fhe_model, directory)`` writes::

    directory/
      client/   manifest.json, codec.json (quantizer, encoding, output steps), client.specs.json,
                preprocessing.json (a Pipeline's scalers and imputers, :mod:`veilml.runtime.preprocessing`)
      server/   manifest.json, server.zip (concrete's circuit), client.specs.json, layout.bin, batch.json (:mod:`.batch_bundle`)
      model/    manifest.json, graph.zip, configuration.json: the model owner's, read back by :func:`veilml.load`

The client side gets what encryption and decryption need and nothing of the model in between (no
graph, no threshold, no leaf value); the server side gets the circuit and what checks its inputs,
and never a key. Each side has a manifest (:mod:`veilml.runtime.manifest`) checked on load, and
may be signed (``save_bundle(..., signing_key=)``, :func:`sign_bundle`, ``veilml sign``): a
server bundle is code, and a client bundle decides what leaves the data owner's machine, so both
load only from a trusted maker when given its public key (``trusted_key=``).

A client bundle may come from a hostile server (:class:`~veilml.serving.RemoteModel` fetches it from the
server it talks to), so :class:`ModelClient` (the data owner: keys, ``encrypt(X) -> bytes``, ``decrypt(bytes)
-> predictions``) trusts none of it: before any key is made it checks the parameters' security and sizes
(:func:`~veilml.runtime.security.check_client_specs`) and that the specs, the codec and the manifest describe
one encrypted circuit (:mod:`.client_checks`); :func:`client_bundle_fingerprint` names one client bundle
exactly (a data owner can pin it). :class:`ModelServer` (``register(keys) -> key id``, ``run(bytes, key_id)``)
runs a server bundle; :func:`loaded_server` keeps one loaded per process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from veilml.runtime.client import FHEClient, ResultError
from veilml.runtime.codec import ClientCodec
from veilml.runtime.envelope import DEFAULT_MAX_BYTES, batch_bytes, pack_batch, specs_fingerprint, unpack_batch
from veilml.runtime.manifest import (
    check_manifest,
    checked_manifest,
    load_private_key,
    read_artifact_file,
    sign_manifest,
    write_manifest,
)
from veilml.runtime.preprocessing import FeaturePreprocessing
from veilml.runtime.private_files import check_private_dir
from veilml.runtime.security import InsecureParametersError
from veilml.runtime.server import FHEServer
from veilml.serving.bundle_parts import (
    CLIENT_FORMAT,
    PREPROCESSING,
    SERVER_FORMAT,
    SPECS,
    bundle_side,
    client_bundle_fingerprint,
    prepare_destination,
    sign_bundle,
    write_model_part,
)
from veilml.serving.client_checks import HOSTILE_BUNDLE, check_client_bundle, check_pinned

__all__ = [
    "CLIENT_FORMAT",
    "MAX_CLIENT_FILE_BYTES",
    "SERVER_FORMAT",
    "ModelClient",
    "ModelServer",
    "bundle_fhe_server",
    "bundle_side",
    "client_bundle_fingerprint",
    "loaded_server",
    "save_bundle",
    "sign_bundle",
]

DEFAULT_MAX_ROWS = 256  #: rows per encrypt() / run() call unless told otherwise
#: the largest file a client bundle may hold (real ones: specs about 2 KiB, codec a few KiB; a
#: thresholds codec of thousands of pairs some 100 KiB)
MAX_CLIENT_FILE_BYTES = 4 * 2**20
#: why a key directory must be this user's alone
_PLANTED = "its owner, or whoever may write it, could plant keys whose secret they know and read your results"


def save_bundle(
    fhe_model: Any,
    directory: str | os.PathLike,
    *,
    signing_key: Any = None,
    batch: str | None = None,
    preprocessing: FeaturePreprocessing | None = None,
) -> Path:
    """Write the client, server and model parts of a compiled :class:`~veilml.runtime.FHEModel`; ``batch``: the
    batched path's programs (:meth:`~veilml.runtime.batch.halves.BatchModelServer.to_json`), written as
    ``server/batch.json``; ``preprocessing``: what clients do to raw rows first, written as ``client/preprocessing.json``.

    The directory is written next to its final place and renamed into it, so a reader never sees
    half a bundle; an existing bundle there is replaced. ``signing_key`` (an Ed25519 private key, its
    PEM bytes, or the path of its PEM file, mode 0600: see ``veilml sign --new-key``) signs both
    manifests (each part's). :func:`client_bundle_fingerprint` of the directory names the client bundle.
    """
    directory = prepare_destination(directory)  # never deletes a directory that is not a bundle
    private_key = None if signing_key is None else load_private_key(signing_key)  # a bad key fails before any work
    compiled = fhe_model._require_compiled("save")
    if compiled.batch_size != 1:
        raise ValueError(
            f"this model is compiled for batches of {compiled.batch_size} rows, and a bundle holds a one-row "
            "circuit (servers batch requests themselves): compile it again with batch_size=1 (the default) "
            "before save()"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        raw = compiled.circuit.client.specs.serialize()
        specs = raw.encode() if isinstance(raw, str) else bytes(raw)
        fingerprint = specs_fingerprint(specs)
        codec: ClientCodec = fhe_model.codec
        facts = {"fingerprint": fingerprint, "n_features": codec.n_features, "input_size": codec.encoding.size}

        client = staging / "client"
        client.mkdir()
        (client / "codec.json").write_text(codec.to_json())
        (client / SPECS).write_bytes(specs)
        if preprocessing is not None:
            (client / PREPROCESSING).write_text(preprocessing.to_json())
        write_manifest(client, CLIENT_FORMAT, **facts)
        if private_key is not None:
            sign_manifest(client, private_key)

        server = staging / "server"
        server.mkdir()
        compiled.circuit.server.save(str(server / "server.zip"))
        (server / SPECS).write_bytes(specs)
        (server / "layout.bin").write_bytes(fhe_model.server().layout.to_bytes())
        if batch is not None:
            (server / "batch.json").write_text(batch)
        columns = None if compiled.input_columns is None else [int(c) for c in compiled.input_columns]
        write_manifest(server, SERVER_FORMAT, **facts, input_columns=columns)
        if private_key is not None:
            sign_manifest(server, private_key)
        write_model_part(staging / "model", fhe_model, private_key, **facts)

        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _read_client_file(directory: Path, name: str) -> bytes:
    return read_artifact_file(directory / name, MAX_CLIENT_FILE_BYTES, f"client bundle's {name}")


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
        trusted_key: the Ed25519 public key of whoever made the bundle (a
            ``cryptography`` public key object, its PEM bytes, or the path of its PEM file, e.g. the
            ``.pub`` written by ``veilml sign --new-key``): the bundle must carry its signature.
            None: no signature is required.
        expected_fingerprint: the bundle's :func:`client_bundle_fingerprint`, if known: any other
            client bundle is refused.

    The key directory, if it exists, must be this user's and writable by no one else. Every part
    of the bundle is checked before anything is made from it (a bundle may come from a hostile
    server): signature and pin if given, file sizes, the parameters' security and sizes
    (:func:`~veilml.runtime.security.check_client_specs`), an encrypted input and output, and the
    specs, codec and manifest describing the same circuit. Errors raise
    :class:`~veilml.runtime.security.InsecureParametersError` or
    :class:`~veilml.runtime.manifest.ArtifactError`.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        key_dir: str | os.PathLike | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        min_security_bits: int = 128,
        trusted_key: Any = None,
        expected_fingerprint: str | None = None,
    ) -> None:
        from concrete import fhe

        from veilml.runtime.security import check_client_specs

        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
        self.key_dir = None if key_dir is None else Path(key_dir)
        if self.key_dir is not None:
            check_private_dir(self.key_dir, "key_dir", _PLANTED)
        self.directory = bundle_side(directory, "client")
        self.manifest, self.bundle_fingerprint = checked_manifest(self.directory, CLIENT_FORMAT, trusted_key=trusted_key)
        if expected_fingerprint is not None:
            check_pinned(self.bundle_fingerprint, expected_fingerprint)
        specs = _read_client_file(self.directory, SPECS)
        summary = check_client_specs(specs, min_security_bits)  # a hostile model owner cannot weaken our keys
        try:
            self.codec = ClientCodec.from_json(_read_client_file(self.directory, "codec.json"))
        except (ValueError, RecursionError) as error:
            raise InsecureParametersError(f"the client bundle's codec.json cannot be used: {error}; {HOSTILE_BUNDLE}") from None
        check_client_bundle(self.manifest, specs, summary, self.codec)
        self.preprocessing = self._read_preprocessing()
        self.max_rows = max_rows
        self._fhe = FHEClient(fhe.ClientSpecs.deserialize(specs), self.codec)
        if self.key_dir is not None and self._key_file.exists():
            self._fhe.load_keys(self._key_file)

    def _read_preprocessing(self) -> FeaturePreprocessing | None:
        """The bundle's ``preprocessing.json`` (a Pipeline's scalers), checked as hostile data; None when absent."""
        if PREPROCESSING not in self.manifest["files"]:
            return None
        try:
            preprocessing = FeaturePreprocessing.from_json(_read_client_file(self.directory, PREPROCESSING))
        except ValueError as error:
            raise InsecureParametersError(f"the client bundle's {PREPROCESSING} is refused: {error}; {HOSTILE_BUNDLE}") from None
        if preprocessing.n_features_out != self.codec.n_features:
            raise InsecureParametersError(
                f"the client bundle is inconsistent: its {PREPROCESSING} gives {preprocessing.n_features_out} features and "
                f"its codec takes {self.codec.n_features}; {HOSTILE_BUNDLE}"
            )
        return preprocessing

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
        """Columns of a raw row (before the bundle's preprocessing, if it has one)."""
        return self.codec.n_features if self.preprocessing is None else self.preprocessing.n_features_in

    def prepare(self, X: Any, who: str = "ModelClient") -> np.ndarray:
        """The float rows the model quantizes, of raw rows ``X``: the bundle's preprocessing applied first, if it
        has one; column names, shape and values checked (a frame's names against those it was fitted on)."""
        if self.preprocessing is None:
            return self.codec.check_rows(X, who)
        return self.preprocessing.transform(X, who)

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
        """One batch of ciphertexts for the raw rows of ``X`` (through :meth:`prepare`, quantized and encoded first)."""
        return self.encrypt_rows(self.prepare(X))

    def encrypt_rows(self, X: np.ndarray) -> bytes:
        """One batch of ciphertexts for rows that :meth:`prepare` gave (quantized and encoded first)."""
        if len(X) > self.max_rows:
            raise ValueError(f"{len(X)} rows in one call, the limit is {self.max_rows} (max_rows); encrypt in chunks")
        self.keygen()
        return pack_batch(self._fhe.encrypt(X))

    def max_result_batch_bytes(self, rows: int) -> int:
        """The largest result batch of ``rows`` rows: each row at most the circuit's output, uncompressed."""
        return batch_bytes(rows, self._fhe.max_result_bytes)

    def decrypt_integers(self, results: bytes, *, rows: int | None = None) -> np.ndarray:
        """The raw integers of a result batch (what ``predict_integers`` gives in the clear).

        ``rows``: how many rows were sent; a batch with another number of results is refused before
        anything is decrypted (:class:`~veilml.runtime.client.ResultError`).
        """
        expected = self.max_rows if rows is None else rows
        limit = max(self.max_rows, expected)
        items = unpack_batch(results, max_items=limit, max_bytes=self.max_result_batch_bytes(limit), what="result batch")
        if rows is not None and len(items) != rows:
            raise ResultError(
                f"the result batch holds {len(items)} results for the {rows} rows sent: it does not answer this request; "
                "the server that sent it may be hostile, do not use its results"
            )
        return np.stack([self._fhe.decrypt_integers(r) for r in items])

    def decrypt_scores(self, results: bytes, *, rows: int | None = None) -> np.ndarray:
        """Raw scores (n_rows, n_outputs) of a result batch: decrypted, combined, dequantized."""
        return self.codec.decode(self.decrypt_integers(results, rows=rows))

    def decrypt_proba(self, results: bytes, *, rows: int | None = None) -> np.ndarray:
        """Class probabilities (classifiers) or values (regressors) of a result batch."""
        return self.codec.finish(self.decrypt_scores(results, rows=rows))

    def decrypt(self, results: bytes, *, rows: int | None = None) -> np.ndarray:
        """Predictions of a result batch: labels for classifiers, values for regressors."""
        return self.codec.predict(self.decrypt_integers(results, rows=rows))


def bundle_fhe_server(directory: Path, manifest: dict[str, Any], server: Any = None, **options: Any) -> FHEServer:
    """The :class:`~veilml.runtime.server.FHEServer` of a server bundle side whose ``manifest`` was checked: its
    circuit's specs and layout, its input columns; ``server`` is concrete's (None: checks only, nothing runs)."""
    return FHEServer(
        server,
        (directory / SPECS).read_bytes(),
        layout=(directory / "layout.bin").read_bytes(),
        input_columns=manifest.get("input_columns"),
        row_size=int(manifest["input_size"]),
        **options,
    )


class ModelServer:
    """The evaluation side of a deployed model, from its server bundle: no key, no data.

    Args:
        directory: the bundle (or its ``server/`` directory).
        key_cache_size: deserialized key sets kept in memory (least recently used goes first).
        max_rows: the most rows one :meth:`run` call accepts.
        max_bytes: the largest evaluation-key or ciphertext batch accepted.
        trusted_key: the Ed25519 public key of whoever made the bundle (a ``cryptography``
            public key object, its PEM bytes, or the path of its PEM file): the bundle must carry
            its signature, checked before ``server.zip`` is loaded. None: no signature is required.

    A server bundle is code: ``server.zip`` holds a shared library that concrete loads and runs.
    Its manifest detects corruption, not a deliberate change; load only a bundle from someone you
    trust, and give their key to make sure it is theirs.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        key_cache_size: int = 8,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        trusted_key: Any = None,
    ) -> None:
        from concrete import fhe

        self.directory = bundle_side(directory, "server")
        self.manifest = check_manifest(self.directory, SERVER_FORMAT, trusted_key=trusted_key)
        server = fhe.Server.load(str(self.directory / "server.zip"))
        self.max_rows = max_rows
        self._fhe = bundle_fhe_server(self.directory, self.manifest, server, key_cache_size=key_cache_size, max_bytes=max_bytes)

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


_LOADED: dict[tuple[str, tuple[tuple[str, Any], ...]], ModelServer] = {}
_LOADED_LOCK = threading.Lock()


def loaded_server(bundle: str, **options: Any) -> ModelServer:
    """The :class:`ModelServer` of ``bundle`` made with ``options``, loaded once per process and kept (a Dask
    worker's, a ``veilml serve`` child's): loading a circuit takes seconds, a row a fraction of one."""
    key = (bundle, tuple(sorted(options.items())))
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = ModelServer(bundle, **options)
        return _LOADED[key]
