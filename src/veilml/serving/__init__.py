"""Deployment: bundles on disk, the HTTP services' one kit, ``veilml serve`` and its clients, Dask.

- :mod:`.bundle`: client and server bundles (manifests, signatures), :class:`ModelClient`, :class:`ModelServer`
- :mod:`.remote_model`: :class:`RemoteModel`, the data owner's client of ``veilml serve``
- :mod:`.model_service`: the ``veilml serve`` app; :mod:`.tree_work`: what its isolated children run
- :mod:`.dask`: a ciphertext batch split across a Dask cluster
- the kit both HTTP services share (``veilml serve`` and ``veilml worker``): :mod:`.limits`
  (:class:`ServiceLimits`, flags, ``/health``), :mod:`.body` (request bodies), :mod:`.scheduler` (fair
  turns, run timeout), :mod:`.store` (key sets and sessions owned by their clients, quotas),
  :mod:`.app` (access tokens, errors, access logs)

Names load on first use: importing this package loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelClient": "bundle",
    "ModelServer": "bundle",
    "save_bundle": "bundle",
    "RemoteModel": "remote_model",
    "ServiceError": "limits",
    "ServiceLimits": "limits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
