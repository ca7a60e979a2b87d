"""The HTTP service of a linear-layer worker: a FastAPI app around a :class:`~veilml.runtime.linear.worker.Worker`.

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
404 unknown layer; 408 a request body that stalled; 409 keys already registered; 413 body over the
limit, too many rows, or key memory over the limit; 503 busy (bytes in flight over the limit, retry).
``fingerprint`` is a hash of the served layers' public description: it stays the same when a worker
restarts with the same weights, so a client can tell a restart from a different model.

Nothing secret is logged: the access log (logger ``veilml.worker.access``) shows paths with the
session id replaced by ``{session}``, and uvicorn's own access log is off (``serve`` does that).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..http_limits import BodyBudget, ServiceError, receive_body
from .errors import WorkerError
from .http import SECRET_HEADER, redact_path
from .layers import ALL
from .limits import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_READ_TIMEOUT,
)
from .worker import Worker

__all__ = [
    "SECRET_HEADER",
    "SESSION_ID",
    "create_app",
    "redact_path",
]

logger = logging.getLogger("veilml.worker")
access_logger = logging.getLogger("veilml.worker.access")

#: session ids are lowercase hex, 16 to 128 characters (the worker makes 32)
SESSION_ID = re.compile(r"[0-9a-f]{16,128}")
OCTET_STREAM = "application/octet-stream"

_ENDPOINTS = (
    "GET /health, GET /layers, GET /layers/{layer}/{direction}/setup, POST /sessions, "
    "POST /sessions/{session}/keys, POST /sessions/{session}/layers/{layer}/{direction}/keys, "
    "POST /sessions/{session}/layers/{layer}/{direction}/run"
)


class _KeyMemory:
    """Bounds the sessions and evaluation keys a worker keeps: at most ``max_sessions`` sessions and
    ``max_bytes`` bytes of keys in all; the least recently used sessions are evicted first.

    An evicted session gets 401 on its next request and opens a new one (HTTPTransport does it itself).
    """

    def __init__(self, worker: Worker, max_bytes: int, max_sessions: int) -> None:
        self.worker, self.max_bytes, self.max_sessions = worker, max_bytes, max_sessions
        self.sessions: OrderedDict[str, dict[tuple[str, str], int]] = OrderedDict()
        self.total = 0
        self.lock = threading.Lock()

    def open(self) -> dict[str, str]:
        grant = self.worker.open_session()
        with self.lock:
            self.sessions[grant.id] = {}
            while len(self.sessions) > self.max_sessions:
                self._evict(next(iter(self.sessions)))
        return {"session": grant.id, "secret": grant.secret}

    def register(self, session: str, secret: str | None, layer: str, direction: str, keys: bytes) -> None:
        if len(keys) > self.max_bytes:
            raise WorkerError(
                413,
                f"evaluation keys of {len(keys)} bytes exceed this worker's key memory of {self.max_bytes} bytes; "
                "restart the worker with a larger --max-key-mb",
            )
        with self.lock:
            self.worker.register(session, secret, layer, direction, keys)
            sizes = self.sessions.setdefault(session, {})
            self.total += len(keys) - sizes.get((layer, direction), 0)
            sizes[(layer, direction)] = len(keys)
            self.sessions.move_to_end(session)
            while len(self.sessions) > 1 and self.total > self.max_bytes:
                self._evict(next(iter(self.sessions)))
            while self.total > self.max_bytes:  # one session alone is over: drop its other matrices
                other = next(k for k in sizes if k != (layer, direction))
                self._drop(session, *other)

    def touch(self, session: str) -> None:
        with self.lock:
            if session in self.sessions:
                self.sessions.move_to_end(session)

    def _drop(self, session: str, layer: str, direction: str) -> None:
        self.total -= self.sessions[session].pop((layer, direction))
        self.worker.forget(session, layer, direction)

    def _evict(self, session: str) -> None:
        logger.info("evicting the least recently used session and its evaluation keys (session or key memory bound)")
        self.total -= sum(self.sessions.pop(session).values())
        self.worker.close_session(session)


def _error(status: int, detail: str, code: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if code == "access-token" else None
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def _check_session(session: str) -> None:
    if not SESSION_ID.fullmatch(session):
        raise WorkerError(400, "the session id is not 16 to 128 lowercase hex characters; use the id POST /sessions returned")


def _layers_document(worker: Worker, limits: dict[str, int]) -> tuple[bytes, str]:
    layers = {name: info.to_dict() for name, info in worker.layers().items()}
    fingerprint = hashlib.sha256(
        json.dumps([str(worker.backend), layers], sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:32]
    document = {
        "backend": str(worker.backend),
        "input_bits": worker.input_bits,
        "weight_bits": worker.weight_bits,
        **limits,
        "fingerprint": fingerprint,
        "layers": layers,
    }
    return json.dumps(document, separators=(",", ":")).encode(), fingerprint


def create_app(
    worker: Worker,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    *,
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    access_token: str | None = None,
) -> FastAPI:
    """A FastAPI app serving ``worker`` (see the module docstring for the endpoints).

    Args:
        worker: the worker core; its weights never leave it, only their public aggregates.
        max_payload_bytes: largest request body (evaluation keys or ciphertext); larger is 413.
        max_key_bytes / max_sessions: bounds on the sessions and evaluation keys kept; the least
            recently used sessions are evicted beyond them (their next request gets 401 and the
            client opens a new session).
        max_inflight_bytes: request-body bytes held at once over all requests; beyond it, 503.
        read_timeout: seconds a request body may go without sending a byte (then 408).
        access_token: if set, every endpoint but ``/health`` needs ``Authorization: Bearer <token>``.
    """
    from veilml import __version__

    if min(max_payload_bytes, max_key_bytes, max_sessions, max_inflight_bytes) <= 0 or not read_timeout > 0:
        raise ValueError("the payload, key, session and in-flight limits and the read timeout must be positive")
    if access_token is not None and len(access_token) < 16:
        raise ValueError("an access token must have at least 16 characters; make one with secrets.token_urlsafe(32)")
    # what clients must stay within, published by /layers and /health (HTTPTransport reads them)
    limits = {"max_rows": worker.max_rows, "max_payload_bytes": max_payload_bytes, "max_key_bytes": max_key_bytes}
    layers_json, fingerprint = _layers_document(worker, limits)
    memory = _KeyMemory(worker, max_key_bytes, max_sessions)
    budget = BodyBudget(max_inflight_bytes)
    token_digest = None if access_token is None else hashlib.sha256(access_token.encode()).digest()

    app = FastAPI(
        title="veilml worker",
        version=__version__,
        description="Encrypted base-model linear layers: evaluation keys and ciphertexts in, encrypted results out.",
    )
    app.state.worker = worker
    app.state.key_memory = memory
    app.state.body_budget = budget
    app.state.fingerprint = fingerprint

    @app.middleware("http")
    async def _guard_and_log(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        path = redact_path(request.url.path)
        if token_digest is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not token:
                response: Response = _error(
                    401, "this worker needs an access token: send 'Authorization: Bearer <token>'", "access-token"
                )
            elif not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), token_digest):
                response = _error(403, "wrong access token for this worker", "forbidden")
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        access_logger.info("%s %s %d %.3fs", request.method, path, response.status_code, time.perf_counter() - start)
        return response

    def receive(request: Request) -> Any:
        """The request body within the size limit, the in-flight budget and the read timeout."""
        return receive_body(request, max_payload_bytes, budget, read_timeout)

    @app.exception_handler(ServiceError)  # WorkerError and the body limits' errors
    async def _worker_error(request: Request, error: ServiceError) -> JSONResponse:
        return _error(error.status, str(error), error.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            return _error(404, f"no endpoint {request.method} {redact_path(request.url.path)}; this worker serves {_ENDPOINTS}")
        if error.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {redact_path(request.url.path)}; endpoints: {_ENDPOINTS}")
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.error("unexpected %s on %s %s", type(error).__name__, request.method, redact_path(request.url.path))
        return _error(500, f"internal worker error ({type(error).__name__}); see the worker's log")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "backend": str(worker.backend),
            "layers": len(worker.infos),
            "fingerprint": fingerprint,
            "version": __version__,
            "bytes_in_flight": budget.used,
            **limits,
        }

    @app.get("/layers")
    def layers() -> Response:
        return Response(layers_json, media_type="application/json")

    @app.get("/layers/{layer:path}/{direction}/setup")
    async def setup(layer: str, direction: str) -> Response:
        worker.check(layer, direction)
        data = await run_in_threadpool(worker.setup, layer, direction)
        return Response(data, media_type=OCTET_STREAM)

    @app.post("/sessions", status_code=201)
    def open_session() -> JSONResponse:
        return JSONResponse(memory.open(), status_code=201)

    @app.post("/sessions/{session}/keys", status_code=204)
    async def register_shared(session: str, request: Request) -> Response:
        """Evaluation keys that serve every matrix of this worker (backends with one key per session)."""
        _check_session(session)
        async with receive(request) as keys:
            await run_in_threadpool(memory.register, session, request.headers.get(SECRET_HEADER), ALL, ALL, keys)
        return Response(status_code=204)

    @app.post("/sessions/{session}/layers/{layer:path}/{direction}/keys", status_code=204)
    async def register(session: str, layer: str, direction: str, request: Request) -> Response:
        _check_session(session)
        worker.check(layer, direction)
        async with receive(request) as keys:
            await run_in_threadpool(memory.register, session, request.headers.get(SECRET_HEADER), layer, direction, keys)
        return Response(status_code=204)

    @app.post("/sessions/{session}/layers/{layer:path}/{direction}/run")
    async def run(session: str, layer: str, direction: str, request: Request) -> Response:
        _check_session(session)
        worker.check(layer, direction)
        secret = request.headers.get(SECRET_HEADER)

        def compute(ciphertext: bytes) -> bytes:
            try:
                return worker.run(session, secret, layer, direction, ciphertext)
            except (WorkerError, MemoryError):
                raise
            except Exception as error:  # a backend choking on bytes it cannot parse
                logger.warning("run %s/%s failed: %s", layer, direction, type(error).__name__)
                raise WorkerError(
                    400,
                    f"bad ciphertext for {layer}/{direction}: the backend could not process it "
                    f"({type(error).__name__}: {str(error)[:300]}); send rows encrypted for this layer with this "
                    "session's keys (if they were, this is a worker bug: see its log)",
                ) from None

        async with receive(request) as ciphertext:
            if not ciphertext:
                raise WorkerError(400, f"empty ciphertext for {layer}/{direction}; send the encrypted rows as the body")
            result = await run_in_threadpool(compute, ciphertext)
        memory.touch(session)
        return Response(result, media_type=OCTET_STREAM)

    return app
