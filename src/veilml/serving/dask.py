"""A ciphertext batch split across a Dask cluster: the same results as one :class:`ModelServer`, sooner.

::

    from distributed import Client
    from veilml.serving.dask import run_on_dask

    results = run_on_dask(Client(cluster), "bundle/", client.evaluation_keys(), client.encrypt(X))
    client.decrypt(results)

Each Dask worker process loads the server bundle once and registers each key set once (both are
kept in the process for the next batches); the evaluation keys travel to every worker once per call
(``scatter(..., broadcast=True)``), the rows in chunks. Workers see what a server sees: the bundle,
evaluation keys and ciphertexts, never a secret key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from veilml.runtime.envelope import pack_batch, unpack_batch

__all__ = ["run_on_dask"]


def _run_chunk(bundle: str, evaluation_keys: bytes, key_id: str, chunk: bytes) -> bytes:
    """On a worker: the results of one chunk (the bundle and the keys are loaded once per process)."""
    from veilml.serving.bundle import loaded_server

    server = loaded_server(bundle)
    if not server.is_registered(key_id):
        server.register(evaluation_keys)
    return server.run(chunk, key_id)


def run_on_dask(
    client: Any,
    bundle: str | os.PathLike,
    evaluation_keys: bytes,
    ciphertexts: bytes,
    *,
    chunk_rows: int | None = None,
    max_rows: int = 100_000,
) -> bytes:
    """The result batch of ``ciphertexts`` (a batch from ``ModelClient.encrypt``), computed on ``client``'s cluster.

    Args:
        client: a ``distributed.Client``.
        bundle: the bundle directory (or its ``server/``), at the same path on every worker.
        evaluation_keys: the evaluation-key envelope of the client that encrypted the rows.
        chunk_rows: rows per task (default: the rows spread evenly over the workers' threads, at most a
            server bundle's row limit per task).
    """
    from veilml.runtime.envelope import unpack_envelope
    from veilml.serving.bundle import DEFAULT_MAX_ROWS

    items = unpack_batch(ciphertexts, max_items=max_rows, what="ciphertext batch")
    key_id = unpack_envelope(evaluation_keys, "evaluation-keys").key_id
    path = str(Path(bundle).resolve())
    if chunk_rows is None:
        threads = max(1, sum(client.nthreads().values()))
        chunk_rows = min(max(1, -(-len(items) // threads)), DEFAULT_MAX_ROWS)
    elif not 1 <= chunk_rows <= DEFAULT_MAX_ROWS:
        raise ValueError(
            f"chunk_rows must be from 1 to {DEFAULT_MAX_ROWS} (the rows a server bundle runs at once), got {chunk_rows}"
        )
    chunks = [pack_batch(items[i : i + chunk_rows]) for i in range(0, len(items), chunk_rows)]
    keys = client.scatter(evaluation_keys, broadcast=True)
    futures = [client.submit(_run_chunk, path, keys, key_id, chunk, pure=False) for chunk in chunks]
    results = client.gather(futures)
    return pack_batch([item for result in results for item in unpack_batch(result, max_items=len(items), what="result batch")])
