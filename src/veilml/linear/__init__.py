"""Encrypted ``x @ M`` with a clear integer matrix: backends ``bfv`` (and ``bfv-seal``), ``concrete``, ``glwe``, ``clear``.

On top of the backends, remote linear layers: a worker holds frozen weights and a client sends
encrypted quantized rows.

- :mod:`.base`: the backend interface and registry; :mod:`.clear`, :mod:`.bfv`, :mod:`.concrete`, :mod:`.glwe`
- :mod:`.layers`: what a worker publishes about its layers (:class:`LayerInfo`)
- :mod:`.limits`: the limits and defaults both sides share
- :mod:`.worker`: the worker core (:class:`Worker`) and :class:`LocalTransport`
- :mod:`.executor`: the client (:class:`EncryptedLinearExecutor`) and the :class:`Transport` protocol
- :mod:`.service` and :mod:`.transport`: the worker's HTTP service and the client's HTTP transport
  (``veilml[worker]``: FastAPI and httpx, imported only from those modules), built on the kit and the HTTP
  client of :mod:`veilml.serving` (one layer down)

Messages are framed with :func:`pack_frames`, :mod:`veilml.runtime.envelope`'s one batch framing.
"""

from veilml.linear.base import (
    BACKENDS,
    ClientSession,
    LinearBackend,
    LinearServer,
    MatrixSpec,
    get_backend,
    pack_frames,
    unpack_frames,
)
from veilml.linear.errors import BaseWeightsMismatchError, InsecureBackendError, WorkerError
from veilml.linear.executor import EncryptedLinearExecutor, Transport
from veilml.linear.layers import ALL, DIRECTIONS, LayerInfo
from veilml.linear.worker import LocalTransport, SessionGrant, Worker

__all__ = [
    "ALL",
    "BACKENDS",
    "DIRECTIONS",
    "BaseWeightsMismatchError",
    "ClientSession",
    "EncryptedLinearExecutor",
    "InsecureBackendError",
    "LayerInfo",
    "LinearBackend",
    "LinearServer",
    "LocalTransport",
    "MatrixSpec",
    "SessionGrant",
    "Transport",
    "Worker",
    "WorkerError",
    "get_backend",
    "pack_frames",
    "unpack_frames",
]
