"""HTTP service of a deployed model (``veilml serve BUNDLE``): ciphertexts in, encrypted predictions out.

Endpoints (binary bodies are ``application/octet-stream``, metadata JSON; OpenAPI at ``/docs``):

- ``GET /health``: status, the model's fingerprint, veilml's version, features, limits.
- ``GET /bundle/client``: the client bundle as a zip (what a data owner needs to encrypt and
  decrypt; nothing of the model in between).
- ``POST /keys``: evaluation keys (the envelope of ``ModelClient.evaluation_keys()``) ->
  ``{"key_id", "secret"}`` (201). Kept in an on-disk key store: a restart keeps them.
- ``POST /predict``: a ciphertext batch (``ModelClient.encrypt(X)``) with the headers
  ``X-Veilml-Key-Id`` and ``X-Veilml-Key-Secret`` -> the result batch.

Errors are ``{"detail", "code"}``: 400 malformed body or ciphertext, 401 unknown key id or no
secret, 403 wrong secret, 408 stalled body, 413 body over the limit, 503 busy (retry). FHE work
runs in a pool of ``workers`` threads, never in the event loop; at most ``max_queue`` requests
wait for it, beyond that 503. The server holds evaluation keys and ciphertexts only: no secret key
ever reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import logging
import os
import time
import zipfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .envelope import EnvelopeError, KeyMismatchError
from .http_limits import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_READ_TIMEOUT,
    BodyBudget,
    ServiceError,
    receive_body,
)
from .keystore import KeyStore, KeyStoreError

__all__ = ["KEY_ID_HEADER", "KEY_SECRET_HEADER", "create_model_app"]

logger = logging.getLogger("veilml.serve")
access_logger = logging.getLogger("veilml.serve.access")

KEY_ID_HEADER = "x-veilml-key-id"
KEY_SECRET_HEADER = "x-veilml-key-secret"
OCTET_STREAM = "application/octet-stream"


def _client_zip(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()


def create_model_app(
    bundle: str | os.PathLike,
    state_dir: str | os.PathLike,
    *,
    workers: int = 1,
    max_queue: int = 64,
    max_rows: int | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    max_key_store_bytes: int = 64 * 2**30,
    key_cache_size: int = 4,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    access_token: str | None = None,
) -> Any:
    """A FastAPI app serving the model bundle ``bundle`` (see the module docstring).

    Args:
        bundle: the bundle directory (``client/`` and ``server/``); both manifests are checked.
        state_dir: where registered evaluation keys are kept across restarts.
        workers: threads running FHE work. ``max_queue``: requests allowed to wait for one.
        max_rows: rows per request (default: the server's own limit).
        max_payload_bytes / max_inflight_bytes / read_timeout: body limits (see :mod:`.http_limits`).
        max_key_store_bytes: evaluation-key bytes kept on disk. ``key_cache_size``: key sets
            kept deserialized in memory (least recently used goes first; reloaded from disk).
        access_token: if set, every endpoint but ``/health`` needs ``Authorization: Bearer <token>``.
            Whoever can query the model can learn from its answers (model extraction); the token
            decides who may query at all.
    """
    from veilml import __version__

    from .bundle import DEFAULT_MAX_ROWS, ModelServer, _side
    from .manifest import check_manifest

    if min(workers, max_queue, max_payload_bytes, max_inflight_bytes, max_key_store_bytes, key_cache_size) <= 0:
        raise ValueError("workers, max_queue, the byte limits and key_cache_size must be positive")
    if access_token is not None and len(access_token) < 16:
        raise ValueError("an access token must have at least 16 characters; make one with secrets.token_urlsafe(32)")
    token_digest = None if access_token is None else hashlib.sha256(access_token.encode()).digest()
    rows = max_rows or DEFAULT_MAX_ROWS
    server = ModelServer(bundle, key_cache_size=key_cache_size, max_rows=rows, max_bytes=max_payload_bytes)
    client_dir = _side(bundle, "client")
    check_manifest(client_dir, "veilml-bundle/client")
    client_zip = _client_zip(client_dir)
    store = KeyStore(Path(state_dir) / "keys", max_key_store_bytes)
    budget = BodyBudget(max_inflight_bytes)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="veilml-fhe")
    waiting = 0

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        lifespan=lifespan,
        title="veilml model server",
        version=__version__,
        description="An encrypted model: evaluation keys and ciphertexts in, encrypted predictions out. It never holds a secret key.",
    )
    app.state.server, app.state.key_store, app.state.body_budget = server, store, budget

    def error(status: int, detail: str, code: str | None = None) -> JSONResponse:
        return JSONResponse({"detail": detail, "code": code}, status_code=status)

    @app.middleware("http")
    async def _guard_and_log(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if token_digest is None or request.url.path == "/health":
            response = await call_next(request)
        elif scheme.lower() != "bearer" or not token:
            response = error(401, "this server needs an access token: send 'Authorization: Bearer <token>'", "access-token")
        elif not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), token_digest):
            response = error(403, "wrong access token for this server", "forbidden")
        else:
            response = await call_next(request)
        access_logger.info("%s %s %d %.3fs", request.method, request.url.path, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error(exc.status, str(exc), exc.code)

    @app.exception_handler(KeyStoreError)
    async def _key_error(request: Request, exc: KeyStoreError) -> JSONResponse:
        return error(exc.status, str(exc), exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, f"{exc.detail}: this server has GET /health, GET /bundle/client, POST /keys, POST /predict")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error(500, f"internal server error ({type(exc).__name__}); see the server's log")

    async def in_pool(function: Any, *args: Any) -> Any:
        nonlocal waiting
        if waiting >= max_queue:
            raise ServiceError(503, f"{waiting} requests are already waiting for the FHE workers; retry shortly", "busy")
        waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, function, *args)
        finally:
            waiting -= 1

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "fingerprint": server.fingerprint,
            "version": __version__,
            "n_features": server.n_features,
            "max_rows": rows,
            "max_payload_bytes": max_payload_bytes,
            "key_sets": len(store),
            "waiting": waiting,
        }

    @app.get("/bundle/client", response_class=Response, responses={200: {"content": {"application/zip": {}}}})
    def client_bundle() -> Response:
        return Response(
            client_zip, media_type="application/zip", headers={"Content-Disposition": 'attachment; filename="client.zip"'}
        )

    @app.post("/keys", status_code=201)
    async def register(request: Request) -> JSONResponse:
        def admit(body: bytes) -> str:
            try:
                return server.register(body)
            except (EnvelopeError, ValueError) as exc:
                raise ServiceError(400, f"these are not evaluation keys of this model: {exc}", "bad-keys") from None

        async with receive_body(request, max_payload_bytes, budget, read_timeout) as body:
            identifier = await in_pool(admit, body)
            secret = store.add(identifier, body)
        return JSONResponse({"key_id": identifier, "secret": secret}, status_code=201)

    @app.post("/predict", response_class=Response, responses={200: {"content": {OCTET_STREAM: {}}}})
    async def predict(request: Request) -> Response:
        identifier = request.headers.get(KEY_ID_HEADER, "")
        store.check(identifier, request.headers.get(KEY_SECRET_HEADER))

        def run(body: bytes) -> bytes:
            if not server.is_registered(identifier):  # evicted from memory, or registered before a restart
                server.register(store.get(identifier))
            try:
                return server.run(body, identifier)
            except KeyMismatchError as exc:
                raise ServiceError(400, str(exc), "key-mismatch") from None
            except (EnvelopeError, ValueError) as exc:
                raise ServiceError(400, f"bad ciphertext batch: {exc}", "bad-ciphertext") from None

        async with receive_body(request, max_payload_bytes, budget, read_timeout) as body:
            result = await in_pool(run, body)
        return Response(result, media_type=OCTET_STREAM)

    return app
