"""Deployment: bundles on disk, the HTTP services' one kit, ``veilml serve`` and its clients, Dask.

Layers: :mod:`veilml.runtime` below (keys, envelopes and their one batch framing, the FHE server and
client, private files) knows nothing of HTTP; this package is the HTTP side both workloads share;
:mod:`veilml.linear` above builds ``veilml worker`` and its client transport on it.

- :mod:`.bundle`: client and server bundles (manifests, signatures), :class:`ModelClient`, :class:`ModelServer`;
  :mod:`.client_checks`: what a data owner checks of a client bundle before making keys
- :mod:`.remote_model`: :class:`RemoteModel`, the data owner's client of ``veilml serve``
- :mod:`.model_service`: ``veilml serve`` (:class:`~.model_service.ModelService`); :mod:`.tree_work`: what
  its isolated children run
- :mod:`.dask`: a ciphertext batch split across a Dask cluster, and the batched path's batches spread over one
- :mod:`.batch_bundle`: a bundle's batched programs (``server/batch.json``); :mod:`.remote_batch`: RemoteModel's
  batched half
- the kit both HTTP services share (``veilml serve`` and ``veilml worker``): :mod:`.app` (the
  :class:`~.app.Service` base whose methods are the endpoints, access tokens, errors, access logs),
  :mod:`.limits` (:class:`ServiceLimits`, flags, ``/health``), :mod:`.body` (request bodies),
  :mod:`.scheduler` (fair turns, run timeout), :mod:`.store` (key sets and sessions owned by their clients, quotas)
- the one HTTP client loop of both clients (:class:`RemoteModel`, ``veilml.linear.transport.HTTPTransport``):
  :mod:`.http_client` (retries, a time budget, bounded reads, :class:`~.http_client.RemoteError`)

Names load on first use: importing this package loads nothing heavy.
"""

from __future__ import annotations

from veilml._lazy import lazy_exports

_EXPORTS = {
    "ModelClient": "bundle",
    "ModelServer": "bundle",
    "save_bundle": "bundle",
    "RemoteModel": "remote_model",
    "RemoteError": "http_client",
    "ServiceError": "limits",
    "ServiceLimits": "limits",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
