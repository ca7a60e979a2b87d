"""The one serving kit of veilml's HTTP services (``veilml serve`` and ``veilml worker``).

- :mod:`.limits`: :class:`ServiceLimits`, the limits both services apply, flags and ``/health``;
  :class:`ServiceError`, an error with an HTTP status and a code.
- :mod:`.body`: request bodies within size, in-flight, stall and upload-time bounds.
- :mod:`.scheduler`: encrypted work shared fairly between clients, with a deadline per request.
- :mod:`.store`: key sets and sessions that belong to their clients, within per-client quotas.
- :mod:`.app`: access tokens (one per client), error bodies, access logs.
- :mod:`.tree_work`: what an isolated child process of ``veilml serve`` runs.

Importing this package loads nothing heavy; FastAPI loads when an app is made.
"""

from .limits import ServiceError, ServiceLimits

__all__ = ["ServiceError", "ServiceLimits"]
