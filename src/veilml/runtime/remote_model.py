"""The data owner's client of ``veilml serve``: fetch the client bundle, register keys, predict.

::

    from veilml.runtime import RemoteModel

    model = RemoteModel("http://127.0.0.1:8000", key_dir="~/.veilml/keys")
    model.predict(X)            # encrypted here, computed there, decrypted here

Rows and results travel encrypted; the secret key stays in this process (and in ``key_dir``,
mode 0600). Transient failures (connection errors, 503 busy, 502/504) are retried with backoff.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import ModelClient

__all__ = ["RemoteModel", "RemoteModelError"]

_RETRY_STATUSES = {502, 503, 504}
_CLIENT_FILES = {"manifest.json", "codec.json", "client.specs.json"}
#: the largest file a client bundle may hold once decompressed (they are a few KiB)
_MAX_CLIENT_FILE_BYTES = 16 * 2**20


class RemoteModelError(RuntimeError):
    """The server answered with an error (its message is kept), or could not be reached."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class RemoteModel:
    """Predictions of a model served by ``veilml serve``, computed on encrypted rows.

    Args:
        url: the server's base URL.
        key_dir: where keys are kept and reused (secret keys 0600); None keeps them in memory.
        bundle_dir: where the client bundle is unpacked (default: a temporary directory).
        retries / backoff: attempts after a transient failure, and the first wait in seconds (doubling).
        timeout: seconds per HTTP request (FHE work on many rows can take a while).
        access_token: the server's access token, if it has one (``veilml serve --access-token-file``).
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
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        headers = {} if access_token is None else {"authorization": f"Bearer {access_token}"}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)
        self._bundle_dir = Path(bundle_dir) if bundle_dir is not None else Path(tempfile.mkdtemp(prefix="veilml-client-"))
        self._unpack(self._request("GET", "/bundle/client").content)
        self.client = ModelClient(self._bundle_dir, key_dir=None if key_dir is None else Path(key_dir).expanduser())
        health = self._request("GET", "/health").json()
        if health.get("fingerprint") != self.client.fingerprint:
            raise RemoteModelError(
                "the server's model and the client bundle it sent differ; try again (it may have restarted with another model)"
            )
        self.max_rows = min(int(health.get("max_rows", self.client.max_rows)), self.client.max_rows)
        self._key_id: str | None = None
        self._secret: str | None = None

    def _unpack(self, data: bytes) -> None:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise RemoteModelError(f"{self.url}/bundle/client did not send a zip archive") from None
        names = set(archive.namelist())
        if not names <= _CLIENT_FILES or "manifest.json" not in names:
            raise RemoteModelError(f"the client bundle from {self.url} has unexpected files: {sorted(names - _CLIENT_FILES)}")
        too_large = [i.filename for i in archive.infolist() if i.file_size > _MAX_CLIENT_FILE_BYTES]
        if too_large:  # checked before anything is decompressed: a hostile server's zip bomb stops here
            raise RemoteModelError(
                f"the client bundle from {self.url} has files over {_MAX_CLIENT_FILE_BYTES} bytes: {too_large}"
            )
        self._bundle_dir.mkdir(parents=True, exist_ok=True)
        for name in names:  # only the three known flat names: nothing can land outside the directory
            (self._bundle_dir / name).write_bytes(archive.read(name))

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                if attempt == self.retries:
                    raise RemoteModelError(f"cannot reach {self.url}{path}: {error}") from None
            else:
                if response.status_code not in _RETRY_STATUSES or attempt == self.retries:
                    if response.is_error:
                        try:
                            body = response.json()
                        except ValueError:
                            body = {"detail": response.text[:300]}
                        raise RemoteModelError(
                            f"{method} {path}: {response.status_code}: {body.get('detail')}",
                            response.status_code,
                            body.get("code"),
                        )
                    return response
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def register(self) -> str:
        """Send this client's evaluation keys (once); returns its key id."""
        if self._key_id is None:
            answer = self._request("POST", "/keys", content=self.client.evaluation_keys()).json()
            if answer.get("key_id") != self.client.key_id:
                raise RemoteModelError("the server registered the keys under another key id than theirs")
            self._key_id, self._secret = answer["key_id"], answer["secret"]
        return self._key_id

    def _predict(self, body: bytes) -> bytes:
        """One request; keys registered again once if the server no longer knows them (a new key store)."""
        for attempt in range(2):
            headers = {"x-veilml-key-id": self.register(), "x-veilml-key-secret": self._secret or ""}
            try:
                return self._request("POST", "/predict", content=body, headers=headers).content
            except RemoteModelError as error:
                if error.code != "unknown-key" or attempt:
                    raise
                self._key_id = self._secret = None
        raise AssertionError("unreachable")

    def _results(self, X: Any) -> list[bytes]:
        X = np.asarray(X, dtype=np.float64)
        return [
            self._predict(self.client.encrypt(X[start : start + self.max_rows]))
            for start in range(0, max(len(X), 1), self.max_rows)
        ]

    def predict(self, X: Any) -> np.ndarray:
        """Labels (classifiers) or values (regressors) of the rows of ``X``, computed encrypted."""
        return np.concatenate([self.client.decrypt(r) for r in self._results(X)])

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (classifiers) of the rows of ``X``, computed encrypted."""
        return np.concatenate([self.client.decrypt_proba(r) for r in self._results(X)])

    def predict_integers(self, X: Any) -> np.ndarray:
        """The decrypted integers (what ``predict_integers`` gives in the clear)."""
        return np.concatenate([self.client.decrypt_integers(r) for r in self._results(X)])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
