""":class:`~veilml.serving.RemoteModel`'s batched path: whole tables through ``veilml serve``'s ``POST /batch/predict``.

The server's description (``GET /batch``) is checked against the client bundle's codec before anything else
(:meth:`~veilml.runtime.batch.plan.BatchDescription.checked`: inputs of the client's own encoding, parameters the
client derives from the depth); a description that disagrees is refused before a key is made or a byte of data
sent. Each call makes one fresh secret key, which never leaves this process; each batch of up to N rows is one
request (the public keys and a ciphertext per input bit), sent while the next is encrypted, and its answer is
checked (count and size of the ciphertexts) before it is decrypted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veilml.serving.http_client import HOSTILE

__all__ = ["RemoteBatch"]


class RemoteBatch:
    """The batched half of a :class:`~veilml.serving.RemoteModel` (made on its first large table)."""

    def __init__(self, server: Any, codec: Any, max_request_bytes: int, error: type[Exception]) -> None:
        from veilml.runtime.batch.halves import BatchModelClient
        from veilml.runtime.batch.plan import DescriptionError

        self.server, self.error, self.max_request_bytes = server, error, max_request_bytes
        description = server.json("GET", "/batch")
        try:
            self.client = BatchModelClient(codec, description)
        except DescriptionError as exc:
            raise error(f"{server.base_url}/batch describes a batched model this client refuses: {exc}; {HOSTILE}") from None

    def _send(self, request: Any) -> bytes:
        from veilml.runtime.batch.halves import answer_bytes

        limit = answer_bytes(self.client.description.shapes[request.encoding])
        return self.server.request("POST", "/batch/predict", content=request.pack(), limit=limit)

    def scores(self, X: np.ndarray, progress: bool | None) -> np.ndarray:
        """The summed quantized scores (n_rows, n_scores) of checked float rows ``X``."""
        from veilml.runtime.batch.halves import pipelined

        try:
            return self.client.score(X, pipelined(self._send), max_request_bytes=self.max_request_bytes, progress=progress)
        except ValueError as exc:  # a refused answer (count, size, not a ciphertext), or no encoding within the limit
            raise self.error(f"{self.server.base_url}: the batched path failed: {exc}") from None
