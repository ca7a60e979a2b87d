"""What an isolated child process of ``veilml serve`` runs: one ciphertext row under one stored key set.

The server process never hands concrete a byte: it checks envelopes, keeps the key store and shares
the work out (:mod:`.scheduler`); each row runs here, in a child process of an
:class:`~veilml._isolation.IsolatedRunner`, with a time limit, so that a ciphertext or a key set
that keeps concrete's native code busy (or crashes it) costs one child, not the service. A child
loads the server bundle once and keeps the key sets it deserialized (least recently used go first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from veilml.serving.limits import ServiceError
from veilml.serving.store import read_item

__all__ = ["load", "run_row"]


def _server(bundle: str, trusted_key: Any) -> Any:
    from veilml.serving.bundle import loaded_server

    return loaded_server(bundle, key_cache_size=2, max_rows=1, trusted_key=trusted_key)


def load(bundle: str, trusted_key: Any = None) -> None:
    """Load the server bundle in this child process (its initializer: start-up is not a row's time)."""
    _server(bundle, trusted_key)


def run_row(bundle: str, store: str, key_id: str, keys_sha256: str, ciphertext: bytes, trusted_key: Any = None) -> bytes:
    """The result envelope of one ciphertext envelope, under the key set ``key_id`` of the store at ``store``.

    The key set is read from the store's files and must hash to ``keys_sha256`` (what the server
    stored); an evicted or altered one answers 401 ``unknown-key``, and the client registers again.
    """
    from veilml.runtime.envelope import pack_batch, unpack_batch

    server = _server(bundle, trusted_key)
    if not server.is_registered(key_id):
        keys = read_item(Path(store), key_id, "keys", keys_sha256)
        if keys is None:
            raise ServiceError(401, f"unknown key id {key_id[:12]}...: register the evaluation keys again", "unknown-key")
        server.register(keys)
    (result,) = unpack_batch(server.run(pack_batch([ciphertext]), key_id), max_items=1, what="result batch")
    return result
