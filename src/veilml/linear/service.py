"""The HTTP service of a linear-layer worker: :class:`WorkerService` around a :class:`~veilml.linear.worker.Worker`.

Its endpoints are its methods, on the kit every veilml HTTP service shares (:mod:`veilml.serving.app`:
limits, tokens, bodies, fair turns, errors, access logs); :func:`create_app` makes its FastAPI app.

A worker holds frozen base weights and multiplies encrypted rows by them. It only ever receives
evaluation keys and ciphertexts; secret keys stay with the client.

Endpoints. Binary bodies are raw ``application/octet-stream``; metadata is JSON:

- ``GET /health``: ``{"status": "ok", "backend", "layers", "fingerprint", "version", "bytes_in_flight"}``
  and the worker's limits ``max_rows``, ``max_payload_bytes``, ``max_key_bytes``
- ``GET /layers``: backend, bits, the same limits, fingerprint, and ``LayerInfo.to_dict()`` per layer
- ``GET /layers/{layer}/{direction}/setup``: the public setup bytes for one matrix
- ``POST /sessions``: opens a session: ``{"session": id, "secret": secret}`` (201)
- ``POST /sessions/{session}/keys``: evaluation keys that serve every matrix (204)
- ``POST /sessions/{session}/layers/{layer}/{direction}/keys``: evaluation keys for one matrix (204)
- ``POST /sessions/{session}/layers/{layer}/{direction}/run``: ciphertext in, encrypted result out

Every request of a session carries its secret in the ``X-Veilml-Session-Secret`` header. With an
access token configured, every endpoint but ``/health`` also needs ``Authorization: Bearer TOKEN``:
whoever may query a worker can recover its quantized weights (identity rows), so the weight owner
decides who may query at all.

Errors come back as ``{"detail": "...", "code": ...}``: 400 bad direction, session id, ciphertext or
shape; 401 unknown session (``code`` ``unknown-session``: open a new one) or no evaluation key
(``no-keys``: register it), or a missing access token; 403 wrong session secret or access token;
404 unknown layer; 408 a request body that stalled or came too slowly; 409 keys already registered;
413 body over the limit, too many rows, or key memory over the limit; 429 this client's share is
used; 503 busy (retry); 504 a computation over the run timeout. Requests of different clients are
computed in turn, unit by unit (:mod:`veilml.serving.scheduler`); every limit is a flag of
``veilml worker`` and is published on ``/health`` (:mod:`veilml.serving.limits`).
``fingerprint`` is a hash of the served layers' public description: it stays the same when a worker
restarts with the same weights, so a client can tell a restart from a different model.

Nothing secret is logged: the access log (logger ``veilml.worker.access``) shows paths with the
session id replaced by ``{session}``, and uvicorn's own access log is off (``serve`` does that).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from veilml.linear.base import Work, WorkTimeout, run_work
from veilml.linear.errors import WorkerError
from veilml.linear.http import SECRET_HEADER, SESSION_ID, redact_path
from veilml.linear.layers import ALL, layers_fingerprint
from veilml.linear.limits import WORKER_LIMITS
from veilml.linear.worker import Worker
from veilml.serving.app import AccessTokens, Route, Service, access_tokens, client_of, service_limits
from veilml.serving.limits import ServiceLimits

__all__ = [
    "SECRET_HEADER",
    "SESSION_ID",
    "WorkerService",
    "create_app",
    "redact_path",
]

logger = logging.getLogger("veilml.worker")

OCTET_STREAM = "application/octet-stream"

_ENDPOINTS = (
    "GET /health, GET /layers, GET /layers/{layer}/{direction}/setup, POST /sessions, "
    "POST /sessions/{session}/keys, POST /sessions/{session}/layers/{layer}/{direction}/keys, "
    "POST /sessions/{session}/layers/{layer}/{direction}/run"
)
_ALIASES = {"max_sessions": "max_key_sets"}  # the keyword of earlier releases
_T = TypeVar("_T")


def _check_session(session: str) -> None:
    if not SESSION_ID.fullmatch(session):
        raise WorkerError(400, "the session id is not 16 to 128 lowercase hex characters; use the id POST /sessions returned")


def _layers_document(worker: Worker, limits: dict[str, Any]) -> tuple[bytes, str]:
    layers = {name: info.to_dict() for name, info in worker.layers().items()}
    fingerprint = layers_fingerprint(str(worker.backend), worker.layers())
    document = {
        "backend": str(worker.backend),
        "input_bits": worker.input_bits,
        "weight_bits": worker.weight_bits,
        **limits,
        "fingerprint": fingerprint,
        "layers": layers,
    }
    return json.dumps(document, separators=(",", ":")).encode(), fingerprint


def _guarded(step: Callable[[], _T], layer: str, direction: str) -> Callable[[], _T]:
    """A unit (or a finish) whose failures come back as the worker's errors (a backend choking on bytes it cannot
    parse: 400)."""

    def run() -> _T:
        try:
            return step()
        except (WorkerError, MemoryError):
            raise
        except WorkTimeout as error:
            raise WorkerError(504, f"{layer}/{direction}: {error}", "run-timeout") from None
        except Exception as error:
            logger.warning("run %s/%s failed: %s", layer, direction, type(error).__name__)
            raise WorkerError(
                400,
                f"bad ciphertext for {layer}/{direction}: the backend could not process it "
                f"({type(error).__name__}: {str(error)[:300]}); send rows encrypted for this layer with this "
                "session's keys (if they were, this is a worker bug: see its log)",
            ) from None

    return run


class WorkerService(Service):
    """``veilml worker``: a :class:`~veilml.linear.worker.Worker` over HTTP; each endpoint is a method (see the
    module docstring for what they answer)."""

    title = "veilml worker"
    description = "Encrypted base-model linear layers: evaluation keys and ciphertexts in, encrypted results out."
    name = "veilml.worker"
    endpoints = _ENDPOINTS

    def __init__(self, worker: Worker, limits: ServiceLimits, access_token: str | AccessTokens | None = None) -> None:
        tokens = access_tokens(access_token)
        worker.max_rows = limits.max_rows
        worker.apply_limits(limits)
        self.worker = worker
        # what clients must stay within, published by /layers and /health (HTTPTransport reads them)
        self.layers_json, self.fingerprint = _layers_document(worker, limits.public())
        super().__init__(limits, tokens)

    def routes(self) -> list[Route]:
        matrix = "/layers/{layer:path}/{direction}"
        return [
            Route("GET", "/health", self.health),
            Route("GET", "/layers", self.layers),
            Route("GET", matrix + "/setup", self.setup),
            Route("POST", "/sessions", self.open_session, {"status_code": 201}),
            Route("POST", "/sessions/{session}/keys", self.register_shared, {"status_code": 204}),
            Route("POST", "/sessions/{session}" + matrix + "/keys", self.register, {"status_code": 204}),
            Route("POST", "/sessions/{session}" + matrix + "/run", self.run),
        ]

    def redact(self, path: str) -> str:
        return redact_path(path)

    # ------------------------------------------------------------------------------------ endpoints
    def health(self) -> dict[str, Any]:
        return {
            **self.status(),
            "backend": str(self.worker.backend),
            "layers": len(self.worker.infos),
            "fingerprint": self.fingerprint,
            "bytes_in_flight": self.budget.used,
            "sessions": len(self.worker.store),
        }

    def layers(self) -> Response:
        return Response(self.layers_json, media_type="application/json")

    async def setup(self, layer: str, direction: str) -> Response:
        self.worker.check(layer, direction)
        data = await run_in_threadpool(self.worker.setup, layer, direction)
        return Response(data, media_type=OCTET_STREAM)

    def open_session(self, request: Request) -> JSONResponse:
        grant = self.worker.open_session(client_of(request))
        return JSONResponse({"session": grant.id, "secret": grant.secret}, status_code=201)

    async def register_shared(self, session: str, request: Request) -> Response:
        """Evaluation keys that serve every matrix of this worker (backends with one key per session)."""
        return await self._register_keys(request, session, ALL, ALL)

    async def register(self, session: str, layer: str, direction: str, request: Request) -> Response:
        self.worker.check(layer, direction)
        return await self._register_keys(request, session, layer, direction)

    async def run(self, session: str, layer: str, direction: str, request: Request) -> Response:
        _check_session(session)
        self.worker.check(layer, direction)
        secret = request.headers.get(SECRET_HEADER)
        async with self.body(request) as ciphertext:
            if not ciphertext:
                raise WorkerError(400, f"empty ciphertext for {layer}/{direction}; send the encrypted rows as the body")
            client, deadline = client_of(request), time.monotonic() + self.limits.run_timeout

            def start() -> tuple[Work | None, bytes | None]:  # the checks, and all of a request of one unit, in one turn
                work = self.worker.work(session, secret, layer, direction, ciphertext)
                return (work, None) if len(work.units) > 1 else (None, run_work(work, deadline))

            [(work, result)] = await self.scheduler.run(client, [_guarded(start, layer, direction)], self.limits.run_timeout)
            if work is not None:  # several units: each takes its turn among other clients' work
                units = [_guarded(unit, layer, direction) for unit in work.units]
                await self.scheduler.run(client, units, max(deadline - time.monotonic(), 0.001))
                result = await run_in_threadpool(_guarded(work.finish, layer, direction))
        self.worker.store.touch(session)
        return Response(result, media_type=OCTET_STREAM)

    async def _register_keys(self, request: Request, session: str, layer: str, direction: str) -> Response:
        _check_session(session)
        async with self.body(request) as keys:
            await run_in_threadpool(self.worker.register, session, request.headers.get(SECRET_HEADER), layer, direction, keys)
        return Response(status_code=204)


def create_app(
    worker: Worker,
    limits: ServiceLimits | None = None,
    *,
    access_token: str | AccessTokens | None = None,
    **overrides: Any,
) -> FastAPI:
    """A FastAPI app serving ``worker`` (see the module docstring for the endpoints).

    Args:
        worker: the worker core; its weights never leave it, only their public aggregates.
        limits: the service's limits (default :data:`~.limits.WORKER_LIMITS`, with the worker's own
            ``max_rows``); keyword ``overrides`` change single fields (``max_payload_bytes=...``,
            ``max_key_bytes=...``, ``max_sessions=...`` for ``max_key_sets``). Beyond the session store's
            bounds the least recently used sessions of the client over its quota (or of the heaviest
            client) are evicted: their next request gets 401 and the client opens a new session.
        access_token: one token, or :class:`~veilml.serving.app.AccessTokens` (one per client);
            then every endpoint but ``/health`` needs ``Authorization: Bearer <token>``.
    """
    limits = service_limits(limits, WORKER_LIMITS.replace(max_rows=worker.max_rows), overrides, _ALIASES)
    service = WorkerService(worker, limits, access_token)
    app = service.app()
    app.state.worker, app.state.fingerprint = worker, service.fingerprint
    return app
