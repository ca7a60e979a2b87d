"""The data owner's client of ``veilml serve``: fetch the client bundle, register keys, predict.

::

    from veilml.serving import RemoteModel

    model = RemoteModel("http://127.0.0.1:8000", key_dir="~/.veilml/keys", expected_fingerprint="…")
    model.predict(X)            # encrypted here, computed there, decrypted here

A bundle saved from a Pipeline (:func:`veilml.save_pipeline`) takes raw rows: its client side's
``preprocessing.json`` (scalers and imputers as data) is applied here before quantization.

A table of ``BATCH_MIN_ROWS`` (128) rows or more goes through the batched path when the server has it
(:mod:`.remote_batch`: leveled BFV, thousands of rows per request); fewer rows, one request of up to ``max_rows``
rows at a time on the TFHE path. ``predict(X, fhe_path="tfhe" | "batch")`` forces one.

Rows and results travel encrypted; the secret key stays in this process (and in ``key_dir``,
mode 0600). Requests go through :class:`~veilml.serving.http_client.HTTPClient`: transient failures
(connection errors, 503 busy, 502/504) are retried with backoff, answers are read up to a limit.

The server is not trusted, and the client bundle comes from it: the bundle is checked completely
before any key is made (:class:`~veilml.runtime.ModelClient`: security and sizes of the
parameters, encrypted input and output, specs, codec and manifest agreeing), and can be pinned
(``expected_fingerprint``, see :func:`~veilml.serving.bundle.client_bundle_fingerprint`) or
required to be signed by its maker (``trusted_key``). Every answer is read up to a limit, the
bundle is written without following links, and a result must answer the rows sent (their number,
and the circuit's output length). What cannot be checked: the server holds the model, so it can
always return wrong scores; what the client guarantees is that nothing it sends can be read there.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from veilml.runtime.client import ResultError
from veilml.runtime.envelope import EnvelopeError
from veilml.runtime.private_files import CLOEXEC, NOFOLLOW, private_dir_problem
from veilml.serving.bundle import MAX_CLIENT_FILE_BYTES, ModelClient
from veilml.serving.bundle_parts import PREPROCESSING
from veilml.serving.http_client import HOSTILE, MAX_JSON_BYTES, HTTPClient, RemoteError, RetryPolicy

__all__ = ["MAX_BUNDLE_BYTES", "MAX_JSON_BYTES", "RemoteModel", "RemoteModelError"]

_CLIENT_FILES = ("manifest.json", "manifest.sig", "codec.json", "client.specs.json", PREPROCESSING)
#: the largest client bundle (a zip) read from a server: real ones are a few KiB
MAX_BUNDLE_BYTES = 4 * 2**20
_MAX_SECRET_CHARS = 256


class RemoteModelError(RemoteError):
    """The server answered with an error (its message, ``status`` and ``code`` are kept), could not be
    reached, or sent something this client refuses (too large, malformed, or not an answer to what was sent)."""


class RemoteModel:
    """Predictions of a model served by ``veilml serve``, computed on encrypted rows.

    Args:
        url: the server's base URL.
        key_dir: where keys are kept and reused (secret keys 0600; the directory, if it exists, must
            be yours and writable by no one else); None keeps them in memory.
        bundle_dir: where the client bundle is unpacked (default: a new private temporary
            directory). An existing one must be yours, writable by no one else, and not a link; its
            bundle files are replaced, never written through a link.
        retries / backoff: attempts after a transient failure, and the first wait in seconds (doubling).
        timeout: seconds per HTTP request (FHE work on many rows can take a while).
        access_token: the server's access token, if it has one (``veilml serve --access-token-file``).
        expected_fingerprint: the client bundle's fingerprint
            (:func:`~veilml.serving.bundle.client_bundle_fingerprint`, printed by ``veilml compile``
            and ``veilml serve``): any other bundle is refused. Pin it when you know it.
        trusted_key: the Ed25519 public key of the model's maker (a ``cryptography`` public key,
            its PEM bytes, or the path of its PEM file): the bundle must be signed with it.
        min_security_bits: the security the bundle's parameters must give (see :class:`ModelClient`).
        transport: an ``httpx`` transport to use instead of the network (tests, custom TLS setups).
        progress: a progress bar over the batched path's batches (None: on a terminal only).
    """

    def __init__(
        self,
        url: str,
        *,
        key_dir: str | os.PathLike | None = None,
        bundle_dir: str | os.PathLike | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 600.0,
        access_token: str | None = None,
        expected_fingerprint: str | None = None,
        trusted_key: Any = None,
        min_security_bits: int = 128,
        transport: Any = None,
        progress: bool | None = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self._server = HTTPClient(
            self.url,
            self._http,
            policy=RetryPolicy(retries=retries, backoff=backoff),
            error=RemoteModelError,
            headers={} if access_token is None else {"authorization": f"Bearer {access_token}"},
            unavailable="retry later, or check that the server is running and reachable (veilml serve)",
        )
        self._key_id: str | None = None
        self._secret: str | None = None
        self.progress, self._batch = progress, None
        try:
            if bundle_dir is None:
                self._bundle_dir = Path(tempfile.mkdtemp(prefix="veilml-client-"))  # new, mode 0700
            else:
                self._bundle_dir = Path(bundle_dir).expanduser()
            self._unpack(self._server.request("GET", "/bundle/client", limit=MAX_BUNDLE_BYTES))
            self.client = ModelClient(
                self._bundle_dir,
                key_dir=None if key_dir is None else Path(key_dir).expanduser(),
                min_security_bits=min_security_bits,
                trusted_key=trusted_key,
                expected_fingerprint=expected_fingerprint,
            )
            health = self._server.json("GET", "/health")
            if health.get("fingerprint") != self.client.fingerprint:
                raise RemoteModelError(
                    "the server's model and the client bundle it sent differ; try again (it may have restarted with "
                    "another model)"
                )
            max_rows = health.get("max_rows", self.client.max_rows)
            if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
                raise RemoteModelError(
                    f"{self.url}/health gives max_rows = {max_rows!r}, not a positive integer: the server is "
                    f"misconfigured or hostile ({HOSTILE}); ask its operator"
                )
            self.max_rows = min(max_rows, self.client.max_rows)
            self._health = health
        except BaseException:
            self.close()
            raise

    @property
    def bundle_fingerprint(self) -> str:
        """The fingerprint of the client bundle the server sent (pin it with ``expected_fingerprint``)."""
        return self.client.bundle_fingerprint

    # ----------------------------------------------------------------------------------- bundle
    def _unpack(self, data: bytes) -> None:
        """Check the zip of the client bundle, then write its files into the bundle directory."""
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise RemoteModelError(f"{self.url}/bundle/client did not send a zip archive") from None
        infos = archive.infolist()
        names = {info.filename for info in infos}
        if len(names) != len(infos) or not names <= set(_CLIENT_FILES) or "manifest.json" not in names:
            raise RemoteModelError(
                f"the client bundle from {self.url} has unexpected files: {sorted(names - set(_CLIENT_FILES))} "
                f"(or repeats one); {HOSTILE}"
            )
        too_large = [i.filename for i in infos if i.file_size > MAX_CLIENT_FILE_BYTES]
        if too_large:  # checked before anything is decompressed: a hostile server's zip bomb stops here
            raise RemoteModelError(
                f"the client bundle from {self.url} has files over {MAX_CLIENT_FILE_BYTES} bytes: {too_large}; {HOSTILE}"
            )
        contents = {}
        for info in infos:  # at most one byte past the limit is inflated (zipfile also checks sizes and CRCs)
            try:
                with archive.open(info) as member:
                    contents[info.filename] = member.read(MAX_CLIENT_FILE_BYTES + 1)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as error:
                raise RemoteModelError(f"the client bundle from {self.url} cannot be read ({error}); {HOSTILE}") from None
            if len(contents[info.filename]) > MAX_CLIENT_FILE_BYTES:
                raise RemoteModelError(f"the client bundle from {self.url} inflates past its declared sizes; {HOSTILE}")
        directory = self._open_bundle_dir()
        try:
            for name in _CLIENT_FILES:  # the previous bundle's files go (a stale signature too)
                self._remove_bundle_file(directory, name)
            for name, content in contents.items():  # known flat names only, created anew, never through a link
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o600, dir_fd=directory)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
        finally:
            os.close(directory)

    def _open_bundle_dir(self) -> int:
        """A descriptor of the bundle directory: made (mode 0700) if missing; never a link, never
        another user's or writable by others (they could swap the files between check and use)."""
        path = self._bundle_dir
        if os.path.islink(path):
            raise RemoteModelError(
                f"bundle_dir {path} is a symbolic link (to {os.readlink(path)!r}); the client bundle is never written "
                "through a link: give a real directory"
            )
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NOFOLLOW | CLOEXEC)
        except OSError as error:
            raise RemoteModelError(f"cannot open bundle_dir {path} ({error}); give a real directory") from None
        problem = private_dir_problem(os.fstat(fd), path)
        if problem is not None:
            os.close(fd)
            raise RemoteModelError(f"bundle_dir {path} {problem}: choose a directory of your own")
        return fd

    @staticmethod
    def _remove_bundle_file(directory: int, name: str) -> None:
        try:
            info = os.lstat(name, dir_fd=directory)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            raise RemoteModelError(
                f"{name} in bundle_dir is {kind}; the client bundle is never written through a link: remove it, or give "
                "another bundle_dir"
            )
        os.unlink(name, dir_fd=directory)

    # ----------------------------------------------------------------------------------- use
    def register(self) -> str:
        """Send this client's evaluation keys (once); returns its key id."""
        if self._key_id is None:
            answer = self._server.json("POST", "/keys", content=self.client.evaluation_keys())
            secret = answer.get("secret")
            if answer.get("key_id") != self.client.key_id:
                raise RemoteModelError("the server registered the keys under another key id than theirs")
            if not isinstance(secret, str) or not 0 < len(secret) <= _MAX_SECRET_CHARS:
                raise RemoteModelError(f"the server's key secret is not a string of 1 to {_MAX_SECRET_CHARS} characters")
            self._key_id, self._secret = answer["key_id"], secret
        return self._key_id

    def _predict(self, body: bytes, rows: int) -> bytes:
        """One request; keys registered again once if the server no longer knows them (a new key store)."""
        for attempt in range(2):
            headers = {"x-veilml-key-id": self.register(), "x-veilml-key-secret": self._secret or ""}
            try:
                return self._server.request(
                    "POST", "/predict", content=body, headers=headers, limit=self.client.max_result_batch_bytes(rows)
                )
            except RemoteModelError as error:
                if error.code != "unknown-key" or attempt:
                    raise
                self._key_id = self._secret = None
        raise AssertionError("unreachable")

    def _results(self, X: Any) -> list[tuple[bytes, int]]:
        """(result batch, rows sent) per request of at most ``max_rows`` rows."""
        rows = self.client.prepare(X, "RemoteModel")  # preprocessed; names, shape and values checked before anything is sent
        out = []
        for start in range(0, len(rows), self.max_rows):
            chunk = rows[start : start + self.max_rows]
            out.append((self._predict(self.client.encrypt_rows(chunk), len(chunk)), len(chunk)))
        return out

    def _decrypt(self, how: str, X: Any, fhe_path: str = "tfhe") -> np.ndarray:
        from veilml.runtime.batch.plan import BATCH_MIN_ROWS, FHE_PATHS, batch_available, require_batch

        if fhe_path not in FHE_PATHS:
            raise ValueError(f"fhe_path must be one of {FHE_PATHS}, got {fhe_path!r}")
        large = hasattr(X, "__len__") and len(X) >= BATCH_MIN_ROWS and self._health.get("batch") is True
        large = large and batch_available()  # without the bfv extra: the TFHE path (fhe_path="batch" says what to install)
        if fhe_path == "batch":
            require_batch()
        if fhe_path == "batch" or (fhe_path == "auto" and large):
            codec = self.client.codec
            rows = self.client.prepare(X, "RemoteModel")  # preprocessed and checked before anything is made or sent
            raw = codec.scores(self._batched().scores(rows, self.progress))
            return codec.labels(raw) if how == "decrypt" else codec.finish(raw)
        decrypt = getattr(self.client, how)
        try:
            return np.concatenate([decrypt(result, rows=rows) for result, rows in self._results(X)])
        except (ResultError, EnvelopeError) as error:
            raise RemoteModelError(f"{self.url} sent results that are refused: {error}") from None

    def _batched(self) -> Any:
        """The batched path's client (the server's description fetched and checked once)."""
        if self._batch is None:
            from veilml.serving.remote_batch import RemoteBatch

            limit = self._health.get("max_payload_bytes")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise RemoteModelError(
                    f"{self.url}/health gives max_payload_bytes = {limit!r}, not a positive integer; {HOSTILE}"
                )
            self._batch = RemoteBatch(self._server, self.client.codec, limit, RemoteModelError)
        return self._batch

    def predict(self, X: Any, *, fhe_path: str = "auto") -> np.ndarray:
        """Labels (classifiers) or values (regressors) of the rows of ``X``, computed encrypted: tables of 128 rows or
        more on the batched path when the server has it (``fhe_path``: ``"auto"``, ``"tfhe"`` or ``"batch"``)."""
        return self._decrypt("decrypt", X, fhe_path)

    def predict_proba(self, X: Any, *, fhe_path: str = "auto") -> np.ndarray:
        """Class probabilities (classifiers) of the rows of ``X``, computed encrypted (``fhe_path``: see ``predict``)."""
        return self._decrypt("decrypt_proba", X, fhe_path)

    def predict_integers(self, X: Any) -> np.ndarray:
        """The decrypted integers of the TFHE circuit (what ``predict_integers`` gives in the clear)."""
        return self._decrypt("decrypt_integers", X)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
