"""The limits and defaults of remote linear layers, in one place for the worker and its clients.

The worker side (:class:`~veilml.runtime.linear.worker.Worker`, the HTTP service, ``veilml worker``)
takes its defaults from here; the client side reads the limits a worker actually applies from the
worker (``GET /layers`` and ``GET /health`` publish ``max_rows`` and ``max_payload_bytes``) and
falls back to these defaults only for a worker that does not publish them.

The backend names themselves are the keys of :data:`veilml.runtime.linear.base.BACKENDS`. The
request-body limits (payload, bytes in flight, read timeout) are those of every veilml HTTP service:
they come from :mod:`veilml.runtime.http_limits`, which the model service uses too.
"""

from __future__ import annotations

from ..http_limits import DEFAULT_MAX_INFLIGHT_BYTES, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_READ_TIMEOUT

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_INPUT_BITS",
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "DEFAULT_MAX_KEY_BYTES",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RUN_TIMEOUT",
    "DEFAULT_WEIGHT_BITS",
    "MIB",
]

MIB = 2**20

#: the backend a worker serves unless told otherwise (exact and encrypted; the fastest exact one)
DEFAULT_BACKEND = "bfv"
#: precision of the worker's quantized weights and of the client's quantized rows
DEFAULT_WEIGHT_BITS = 8
DEFAULT_INPUT_BITS = 8

#: most rows one request may carry (HTTP 413 beyond); clients split larger inputs
DEFAULT_MAX_ROWS = 4096
# DEFAULT_MAX_PAYLOAD_BYTES (256 MiB): largest request body, evaluation keys or ciphertext (HTTP 413 beyond)
# DEFAULT_MAX_INFLIGHT_BYTES (1 GiB): request-body bytes held at once over all requests (HTTP 503 beyond: retry)
#: evaluation-key memory over all sessions; the least recently used sessions are evicted beyond it
DEFAULT_MAX_KEY_BYTES = 2048 * MIB
#: sessions whose keys a worker keeps; the least recently used are evicted beyond it
DEFAULT_MAX_SESSIONS = 256
# DEFAULT_READ_TIMEOUT (30 s): seconds a request body may stall before the request is dropped (HTTP 408)
#: seconds one encrypted computation may run before it is stopped (concrete backend: it runs isolated)
DEFAULT_RUN_TIMEOUT = 300.0
