"""The defaults of remote linear layers, in one place for the worker and its clients.

The worker side (:class:`~veilml.linear.worker.Worker`, the HTTP service, ``veilml worker``)
takes its defaults from here; the client side reads the limits a worker actually applies from the
worker (``GET /layers`` and ``GET /health`` publish them all) and falls back to these defaults only
for a worker that does not publish them.

The backend names themselves are the keys of :data:`veilml.linear.base.BACKENDS`. The service
limits (bodies, work, the session store) are those of every veilml HTTP service
(:class:`~veilml.serving.limits.ServiceLimits`); :data:`WORKER_LIMITS` are the worker's defaults.
"""

from __future__ import annotations

from veilml.serving.limits import MIB, ServiceLimits

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_INPUT_BITS",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_RUN_TIMEOUT",
    "DEFAULT_WEIGHT_BITS",
    "MIB",
    "WORKER_LIMITS",
]

#: the backend a worker serves unless told otherwise (exact and encrypted; the fastest exact one: veilml's own
#: kernels, numba on the CPU or torch with ``--device cuda``; ``"bfv-seal"`` is the same protocol with SEAL)
DEFAULT_BACKEND = "bfv"
#: precision of the worker's quantized weights and of the client's quantized rows
DEFAULT_WEIGHT_BITS = 8
DEFAULT_INPUT_BITS = 8

#: most rows one request may carry (HTTP 413 beyond); clients split larger inputs
DEFAULT_MAX_ROWS = 4096
#: seconds one encrypted computation may run before it is stopped (waiting included)
DEFAULT_RUN_TIMEOUT = 300.0

#: the limits of ``veilml worker`` unless told otherwise: sessions and their evaluation keys are kept in
#: memory (2 GiB, 256 sessions; half of either per client), least recently used evicted beyond them
WORKER_LIMITS = ServiceLimits(
    max_rows=DEFAULT_MAX_ROWS,
    run_timeout=DEFAULT_RUN_TIMEOUT,
    max_key_bytes=2048 * MIB,
    max_key_sets=256,
    max_key_bytes_per_client=1024 * MIB,
    max_key_sets_per_client=128,
)
