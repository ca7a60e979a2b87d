"""HTTP service around a :class:`~veilml.runtime.linear.protocol.Worker`.

A worker holds frozen base weights and multiplies encrypted rows by them. It only ever receives
evaluation keys and ciphertexts; secret keys stay with the client.

Endpoints. Binary bodies are raw ``application/octet-stream``; metadata is JSON:

- ``GET /health``: ``{"status": "ok", "backend", "layers", "fingerprint", "version"}``
- ``GET /layers``: backend, bits, payload limit, fingerprint, and ``LayerInfo.to_dict()`` per layer
- ``GET /layers/{layer}/{direction}/setup``: the public setup bytes for one matrix
- ``POST /sessions/{session}/layers/{layer}/{direction}/keys``: evaluation keys (204)
- ``POST /sessions/{session}/layers/{layer}/{direction}/run``: ciphertext in, encrypted result out

Errors come back as ``{"detail": "..."}``: 400 bad direction, session id, ciphertext or shape;
401 no evaluation key for that session (register it, again if the worker restarted); 404 unknown
layer; 413 body over the limit (or key memory over the limit). ``fingerprint`` is a hash of the
served layers' public description: it stays the same when a worker restarts with the same
weights, so a client can tell a restart from a different model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .linear.protocol import ALL, Worker, WorkerError

__all__ = ["DEFAULT_MAX_KEY_BYTES", "DEFAULT_MAX_PAYLOAD_BYTES", "DEFAULT_MAX_SESSIONS", "SESSION_ID", "create_app"]

logger = logging.getLogger("veilml.worker")

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 2**20
DEFAULT_MAX_KEY_BYTES = 2 * 2**30
DEFAULT_MAX_SESSIONS = 256
#: session ids are lowercase hex, 16 to 128 characters (the client uses 32)
SESSION_ID = re.compile(r"[0-9a-f]{16,128}")
OCTET_STREAM = "application/octet-stream"

_ENDPOINTS = (
    "GET /health, GET /layers, GET /layers/{layer}/{direction}/setup, "
    "POST /sessions/{session}/keys, POST /sessions/{session}/layers/{layer}/{direction}/keys, "
    "POST /sessions/{session}/layers/{layer}/{direction}/run"
)


class _KeyMemory:
    """Bounds the evaluation keys a worker keeps: at most ``max_sessions`` sessions and
    ``max_bytes`` bytes in all; the least recently used sessions are evicted first.

    An evicted session gets 401 on its next run and re-registers (HTTPTransport does it itself).
    """

    def __init__(self, worker: Worker, max_bytes: int, max_sessions: int) -> None:
        self.worker, self.max_bytes, self.max_sessions = worker, max_bytes, max_sessions
        self.sessions: OrderedDict[str, dict[tuple[str, str], int]] = OrderedDict()
        self.total = 0
        self.lock = threading.Lock()

    def register(self, session: str, layer: str, direction: str, keys: bytes) -> None:
        if len(keys) > self.max_bytes:
            raise WorkerError(
                413,
                f"evaluation keys of {len(keys)} bytes exceed this worker's key memory of {self.max_bytes} bytes; "
                "restart the worker with a larger --max-key-mb",
            )
        with self.lock:
            self.worker.register(session, layer, direction, keys)
            sizes = self.sessions.setdefault(session, {})
            self.total += len(keys) - sizes.get((layer, direction), 0)
            sizes[(layer, direction)] = len(keys)
            self.sessions.move_to_end(session)
            while len(self.sessions) > 1 and (self.total > self.max_bytes or len(self.sessions) > self.max_sessions):
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
        logger.info("evicting the evaluation keys of session %s… (key memory bound)", session[:8])
        for layer, direction in list(self.sessions[session]):
            self._drop(session, layer, direction)
        del self.sessions[session]


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _check_session(session: str) -> None:
    if not SESSION_ID.fullmatch(session):
        shown = session if len(session) <= 40 else session[:40] + "…"
        raise WorkerError(
            400, f"session id {shown!r} is not 16 to 128 lowercase hex characters; use secrets.token_hex(16)"
        )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) one over ``limit`` bytes by its header or its actual size."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WorkerError(400, f"Content-Length {declared!r} is not a byte count; send a well-formed request")
        if int(declared) > limit:
            raise WorkerError(413, _too_large(int(declared), limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WorkerError(413, _too_large(size, limit, at_least=True))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (
        f"request body of {'more than ' if at_least else ''}{size} bytes exceeds this worker's limit of {limit} bytes; "
        "send fewer rows per request, or restart the worker with a larger --max-payload-mb"
    )


def _layers_document(worker: Worker, max_payload_bytes: int) -> tuple[bytes, str]:
    layers = {name: info.to_dict() for name, info in worker.layers().items()}
    fingerprint = hashlib.sha256(
        json.dumps([str(worker.backend), layers], sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:32]
    document = {
        "backend": str(worker.backend),
        "input_bits": worker.input_bits,
        "weight_bits": worker.weight_bits,
        "max_payload_bytes": max_payload_bytes,
        "fingerprint": fingerprint,
        "layers": layers,
    }
    return json.dumps(document, separators=(",", ":")).encode(), fingerprint


def create_app(
    worker: Worker,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
) -> FastAPI:
    """A FastAPI app serving ``worker`` (see the module docstring for the endpoints).

    Args:
        worker: the worker core; its weights never leave it, only their public aggregates.
        max_payload_bytes: largest request body (evaluation keys or ciphertext); larger is 413.
        max_key_bytes / max_sessions: bounds on the evaluation keys kept; the least recently used
            sessions are evicted beyond them (their next run gets 401 and re-registers).
    """
    from veilml import __version__

    if max_payload_bytes <= 0 or max_key_bytes <= 0 or max_sessions <= 0:
        raise ValueError("max_payload_bytes, max_key_bytes and max_sessions must be positive")
    layers_json, fingerprint = _layers_document(worker, max_payload_bytes)
    memory = _KeyMemory(worker, max_key_bytes, max_sessions)

    app = FastAPI(
        title="veilml worker",
        version=__version__,
        description="Encrypted base-model linear layers: evaluation keys and ciphertexts in, encrypted results out.",
    )
    app.state.worker = worker
    app.state.key_memory = memory
    app.state.fingerprint = fingerprint

    @app.exception_handler(WorkerError)
    async def _worker_error(request: Request, error: WorkerError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            return _error(404, f"no endpoint {request.method} {request.url.path}; this worker serves {_ENDPOINTS}")
        if error.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}; endpoints: {_ENDPOINTS}")
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal worker error ({type(error).__name__}); see the worker's log")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "backend": str(worker.backend),
            "layers": len(worker.infos),
            "fingerprint": fingerprint,
            "version": __version__,
        }

    @app.get("/layers")
    def layers() -> Response:
        return Response(layers_json, media_type="application/json")

    @app.get("/layers/{layer:path}/{direction}/setup")
    async def setup(layer: str, direction: str) -> Response:
        worker.check(layer, direction)
        data = await run_in_threadpool(worker.setup, layer, direction)
        return Response(data, media_type=OCTET_STREAM)

    @app.post("/sessions/{session}/keys", status_code=204)
    async def register_shared(session: str, request: Request) -> Response:
        """Evaluation keys that serve every matrix of this worker (backends with one key per session)."""
        _check_session(session)
        keys = await _read_body(request, max_payload_bytes)
        await run_in_threadpool(memory.register, session, ALL, ALL, keys)
        return Response(status_code=204)

    @app.post("/sessions/{session}/layers/{layer:path}/{direction}/keys", status_code=204)
    async def register(session: str, layer: str, direction: str, request: Request) -> Response:
        _check_session(session)
        worker.check(layer, direction)
        keys = await _read_body(request, max_payload_bytes)
        await run_in_threadpool(memory.register, session, layer, direction, keys)
        return Response(status_code=204)

    @app.post("/sessions/{session}/layers/{layer:path}/{direction}/run")
    async def run(session: str, layer: str, direction: str, request: Request) -> Response:
        _check_session(session)
        worker.check(layer, direction)
        ciphertext = await _read_body(request, max_payload_bytes)
        if not ciphertext:
            raise WorkerError(400, f"empty ciphertext for {layer}/{direction}; send the encrypted rows as the body")
        memory.touch(session)

        def compute() -> bytes:
            try:
                return worker.run(session, layer, direction, ciphertext)
            except (WorkerError, MemoryError):
                raise
            except Exception as error:  # a backend choking on bytes it cannot parse
                logger.warning("run %s/%s failed", layer, direction, exc_info=True)
                raise WorkerError(
                    400,
                    f"bad ciphertext for {layer}/{direction}: the backend could not process it "
                    f"({type(error).__name__}: {error}); send rows encrypted for this layer with this session's "
                    "keys (if they were, this is a worker bug: see its log)",
                ) from None

        try:
            result = await run_in_threadpool(compute)
        except WorkerError as error:
            if error.status == 401:
                raise WorkerError(
                    401, f"{error}; the worker may have restarted or evicted this session: POST the evaluation keys again"
                ) from None
            raise
        return Response(result, media_type=OCTET_STREAM)

    return app
