"""How a worker refuses a request, and how a client refuses a worker.

:class:`WorkerError` is raised by the worker core, sent back as ``{"detail", "code"}`` by the HTTP
service, and raised again on the client by the HTTP transport (as its subclass
:class:`~veilml.linear.transport.RemoteWorkerError`, which is also the
:class:`~veilml.serving.http_client.RemoteError` of every veilml HTTP client). :class:`InsecureBackendError` is the
client's refusal of a worker that would see its data in plaintext; :class:`BaseWeightsMismatchError` its refusal of
a worker that serves other base weights than the client's own model holds.
"""

from __future__ import annotations

from veilml.errors import VeilmlError
from veilml.serving.limits import ServiceError

__all__ = ["BaseWeightsMismatchError", "InsecureBackendError", "WorkerError"]


class WorkerError(ServiceError):
    """A request the worker refuses; ``status`` is the HTTP status it maps to.

    ``code`` tells a client what to do about it without parsing the message: ``"unknown-session"``
    (401: open a new session), ``"no-keys"`` (401: register the keys again), ``"forbidden"`` (403:
    wrong session secret or access token), ``"keys-registered"`` (409), ``"busy"`` (503: retry).
    """

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(status, message, code)


class InsecureBackendError(VeilmlError, ValueError):
    """The worker offers a backend that does not encrypt, and the client did not ask for it."""


class BaseWeightsMismatchError(VeilmlError, ValueError):
    """The worker's fingerprint is not that of the client's own base weights: it serves another model (or other bits)."""
