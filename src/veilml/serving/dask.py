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

The batched path (:func:`run_batches_on_dask`): each request of a :class:`~veilml.runtime.batch.halves.BatchModelClient`
(one batch of up to N rows: public keys and one ciphertext per input bit) is evaluated whole by one worker, which
loads the bundle's ``batch.json`` once; requests are submitted as the client encrypts them, a few per worker in
flight, and answers come back in order::

    from veilml.runtime.batch.halves import BatchModelClient
    from veilml.serving.batch_bundle import batch_description

    batched = BatchModelClient(ModelClient("bundle/").codec, batch_description("bundle/"))
    scores = batched.score(X, run_batches_on_dask(Client(cluster), "bundle/"))  # summed quantized scores
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from veilml.runtime.envelope import pack_batch, unpack_batch

__all__ = ["run_batches_on_dask", "run_on_dask"]


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


def _answer_batch(bundle: str, body: bytes) -> bytes:
    """On a worker: one batched request's packed outputs (the bundle's programs loaded once per process)."""
    from veilml.runtime.envelope import DEFAULT_MAX_BYTES
    from veilml.serving.batch_bundle import answer_batch

    return answer_batch(bundle, body, DEFAULT_MAX_BYTES)


def run_batches_on_dask(client: Any, bundle: str | os.PathLike, *, in_flight: int | None = None) -> Any:
    """A transport for :meth:`~veilml.runtime.batch.halves.BatchModelClient.score` that evaluates each batch on
    ``client``'s cluster (a ``distributed.Client``); ``bundle`` is at the same path on every worker.

    ``in_flight``: batches submitted and not yet answered (default: two per worker thread), which bounds the
    memory the client's ciphertexts take.
    """
    from collections import deque

    path = str(Path(bundle).resolve())

    def transport(requests: Any) -> Any:
        most = in_flight or 2 * max(1, sum(client.nthreads().values()))
        pending: deque = deque()
        for request in requests:
            body = client.scatter(request.pack(), hash=False)  # data, not a large task graph
            pending.append(client.submit(_answer_batch, path, body, pure=False))
            while len(pending) > most:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    return transport
