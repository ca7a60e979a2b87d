"""HTTP service of a deployed model (``veilml serve BUNDLE``): ciphertexts in, encrypted predictions out.

Endpoints (binary bodies are ``application/octet-stream``, metadata JSON; OpenAPI at ``/docs``):

- ``GET /health``: status, the model's fingerprint, the client bundle's fingerprint (what
  ``RemoteModel(expected_fingerprint=...)`` pins), veilml's version, features, every limit.
- ``GET /bundle/client``: the client bundle as a zip (what a data owner needs to encrypt and
  decrypt; nothing of the model in between).
- ``POST /keys``: evaluation keys (the envelope of ``ModelClient.evaluation_keys()``) ->
  ``{"key_id", "secret"}`` (201). Kept in an on-disk store (:mod:`.serving.store`): a restart keeps them.
- ``POST /predict``: a ciphertext batch (``ModelClient.encrypt(X)``) with the headers
  ``X-Veilml-Key-Id`` and ``X-Veilml-Key-Secret`` -> the result batch.
- ``GET /batch``: the public description of the batched path (:mod:`.batch_bundle`; 404 ``no-batch-path`` for a
  bundle saved without it); ``POST /batch/predict``: one batch of up to N rows (the client's public keys and a
  ciphertext per input bit, :class:`~veilml.runtime.batch.halves.BatchRequest`) -> one ciphertext per output.
  Checked here (framing, encoding, rows, number and sizes of ciphertexts and keys; the body within
  ``max_payload_bytes``; ``max_rows`` does not apply), evaluated in an isolated child like a row.

Errors are ``{"detail", "code"}``: 400 malformed body or ciphertext, 401 unknown key id or no
secret, 403 wrong secret, 408 stalled or slow body, 413 body, rows or keys over the limit, 429 this
client's share is used, 503 busy (retry), 504 over the run timeout. The server process parses and
checks; concrete runs each row in an isolated child process with a time limit (:mod:`.serving.tree_work`),
rows of different clients taken in turn (:mod:`.serving.scheduler`). The server holds evaluation keys
and ciphertexts only: no secret key ever reaches it.

:class:`ModelService` is the service (its endpoints are its methods, on the kit of :mod:`veilml.serving.app`);
:func:`create_model_app` makes its FastAPI app.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from veilml.runtime.envelope import (
    EnvelopeError,
    KeyMismatchError,
    check_key_id,
    check_model,
    pack_batch,
    unpack_batch,
    unpack_envelope,
)
from veilml.serving.app import AccessTokens, Route, Service, access_tokens, client_of, service_limits
from veilml.serving.batch_bundle import answer_batch
from veilml.serving.limits import SERVE_LIMITS, ServiceError, ServiceLimits
from veilml.serving.store import OwnedStore
from veilml.serving.tree_work import load, run_row

__all__ = ["KEY_ID_HEADER", "KEY_SECRET_HEADER", "ModelService", "create_model_app"]

KEY_ID_HEADER = "x-veilml-key-id"
KEY_SECRET_HEADER = "x-veilml-key-secret"
OCTET_STREAM = "application/octet-stream"
ENDPOINTS = "GET /health, GET /bundle/client, POST /keys, POST /predict, GET /batch, POST /batch/predict"

_ALIASES = {"max_key_store_bytes": "max_key_bytes"}  # the keyword of earlier releases


def _client_zip(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()


class ModelService(Service):
    """``veilml serve``: one model bundle, its key store, and an isolated runner of its rows; each endpoint is a
    method (see the module docstring for what they answer)."""

    title = "veilml model server"
    description = (
        "An encrypted model: evaluation keys and ciphertexts in, encrypted predictions out. It never holds a secret key."
    )
    name = "veilml.serve"
    endpoints = ENDPOINTS

    def __init__(
        self,
        bundle: str | os.PathLike,
        state_dir: str | os.PathLike,
        limits: ServiceLimits,
        *,
        access_token: Any,
        trusted_key: Any,
    ) -> None:
        from veilml._isolation import IsolatedRunner
        from veilml.runtime.manifest import check_manifest
        from veilml.serving.batch_bundle import read_batch_server
        from veilml.serving.bundle import (
            CLIENT_FORMAT,
            SERVER_FORMAT,
            bundle_fhe_server,
            bundle_side,
            client_bundle_fingerprint,
        )

        tokens = access_tokens(access_token)  # a bad token is refused before anything is made
        server_dir, client_dir = bundle_side(bundle, "server"), bundle_side(bundle, "client")
        self.manifest = check_manifest(
            server_dir, SERVER_FORMAT, trusted_key=trusted_key
        )  # signed by its maker, if a key is given
        check_manifest(client_dir, CLIENT_FORMAT, trusted_key=trusted_key)
        self.bundle_fingerprint = client_bundle_fingerprint(client_dir)
        self.checker = bundle_fhe_server(server_dir, self.manifest)  # checks only: concrete runs in the children
        self.batch = read_batch_server(server_dir)  # the batched path's programs (None: a bundle saved without them)
        self.bundle_path, self.trusted_key = str(server_dir.resolve()), trusted_key
        self.client_zip = _client_zip(client_dir)
        self.store = OwnedStore(
            limits, id_pattern=r"[0-9a-f]{64}", noun="key id", unknown_code="unknown-key", directory=Path(state_dir) / "keys"
        )
        self.runner = IsolatedRunner(
            processes=limits.workers,
            timeout=limits.run_timeout,
            name="veilml-serve",
            initializer=load,
            initargs=(self.bundle_path, trusted_key),
        )
        self._registering = threading.Lock()
        super().__init__(limits, tokens)

    def routes(self) -> list[Route]:
        binary = {"response_class": Response, "responses": {200: {"content": {OCTET_STREAM: {}}}}}
        zipped = {"response_class": Response, "responses": {200: {"content": {"application/zip": {}}}}}
        return [
            Route("GET", "/health", self.health),
            Route("GET", "/bundle/client", self.client_bundle, zipped),
            Route("POST", "/keys", self.register, {"status_code": 201}),
            Route("POST", "/predict", self.predict, binary),
            Route("GET", "/batch", self.batch_info),
            Route("POST", "/batch/predict", self.batch_predict, binary),
        ]

    def start(self) -> None:
        threading.Thread(target=_warm, args=(self.runner,), daemon=True).start()  # /health answers meanwhile

    def close(self) -> None:
        super().close()
        self.runner.close()

    # ------------------------------------------------------------------------------------ endpoints
    def health(self) -> dict[str, Any]:
        return {
            **self.status(),
            "fingerprint": self.checker.fingerprint,
            "bundle_fingerprint": self.bundle_fingerprint,
            "n_features": int(self.manifest["n_features"]),
            "key_sets": len(self.store),
            "batch": self.batch is not None,
        }

    def client_bundle(self) -> Response:
        return Response(
            self.client_zip, media_type="application/zip", headers={"Content-Disposition": 'attachment; filename="client.zip"'}
        )

    async def register(self, request: Request) -> JSONResponse:
        async with self.body(request) as body:
            identifier, secret = await run_in_threadpool(self._admit_keys, client_of(request), body)
        return JSONResponse({"key_id": identifier, "secret": secret}, status_code=201)

    async def predict(self, request: Request) -> Response:
        identifier = request.headers.get(KEY_ID_HEADER, "")
        self.store.authorize(identifier, request.headers.get(KEY_SECRET_HEADER))
        async with self.body(request) as body:
            items = await run_in_threadpool(self._rows_of, body, identifier)
            digest = self.store.digest(identifier, "keys")
            if digest is None:
                raise ServiceError(401, f"unknown key id {identifier[:12]}...: register the keys again", "unknown-key")
            units = [functools.partial(self._unit, identifier, digest, item) for item in items]
            results = await self.scheduler.run(client_of(request), units, self.limits.run_timeout)
        return Response(pack_batch(results), media_type=OCTET_STREAM)

    def _batch_server(self) -> Any:
        if self.batch is None:
            raise ServiceError(
                404,
                "this bundle has no batched path (saved by an earlier veilml): its operator saves the model again",
                "no-batch-path",
            )
        return self.batch

    def batch_info(self) -> dict[str, Any]:
        return self._batch_server().description.to_dict()

    async def batch_predict(self, request: Request) -> Response:
        server = self._batch_server()
        async with self.body(request) as body:
            await run_in_threadpool(self._check_batch, server, body)
            unit = functools.partial(self._isolated, answer_batch, self.bundle_path, body, self.limits.max_payload_bytes)
            (result,) = await self.scheduler.run(client_of(request), [unit], self.limits.run_timeout)
        return Response(result, media_type=OCTET_STREAM)

    # ------------------------------------------------------------------------------------ work
    def _check_batch(self, server: Any, body: bytes) -> None:
        """A batched request's framing and sizes, before any byte reaches SEAL (in a child)."""
        from veilml.runtime.batch.halves import BatchRequest

        most = max(program.n_inputs for program in server.programs.values())
        try:
            server.check(BatchRequest.unpack(body, max_inputs=most, max_bytes=self.limits.max_payload_bytes))
        except ValueError as exc:
            raise ServiceError(400, f"bad batched request: {exc}", "bad-batch") from None

    def _admit_keys(self, client: str, body: bytes) -> tuple[str, str]:
        """Check an evaluation-key envelope, then store it once (owned by ``client`` if new): (key id, secret)."""
        try:
            _, identifier = self.checker.admit_keys(body)
        except (EnvelopeError, ValueError) as exc:
            raise ServiceError(400, f"these are not evaluation keys of this model: {exc}", "bad-keys") from None
        store = self.store
        with self._registering:  # one writer per key set at a time; a corrupted stored copy is written anew
            stored = identifier in store and store.digest(identifier, "keys") is not None
            if stored:
                try:
                    store.get(identifier, "keys")
                except ServiceError:
                    stored = False  # dropped as corrupted: made again below, owned by this client
            created = identifier not in store
            _, secret = store.open(client, identifier)
            if not stored:
                try:
                    store.put(identifier, "keys", body)
                except BaseException:
                    if created:
                        store.drop(identifier)
                    raise
        return identifier, secret

    def _rows_of(self, body: bytes, identifier: str) -> list[bytes]:
        """The batch's ciphertexts, each checked as an envelope for this model and key set (no concrete)."""
        limits = self.limits
        try:
            items = unpack_batch(body, max_items=limits.max_rows, max_bytes=limits.max_payload_bytes, what="ciphertext batch")
            for item in items:
                envelope = unpack_envelope(item, "ciphertext", max_bytes=limits.max_payload_bytes)
                check_model(envelope, self.checker.fingerprint)
                check_key_id(envelope, identifier)
        except KeyMismatchError as exc:
            raise ServiceError(400, str(exc), "key-mismatch") from None
        except (EnvelopeError, ValueError) as exc:
            raise ServiceError(400, f"bad ciphertext batch: {exc}", "bad-ciphertext") from None
        return items

    def _unit(self, identifier: str, digest: str, item: bytes) -> bytes:
        """One row, run in an isolated child process within the run timeout."""
        return self._isolated(run_row, self.bundle_path, str(self.store.directory), identifier, digest, item)

    def _isolated(self, function: Any, *args: Any) -> bytes:
        """``function(*args, trusted_key)`` in an isolated child process within the run timeout."""
        from veilml._isolation import Failure, IsolatedTaskError

        try:
            return self.runner.run(function, *args, self.trusted_key)
        except KeyMismatchError as exc:
            raise ServiceError(400, str(exc), "key-mismatch") from None
        except (EnvelopeError, ValueError) as exc:
            raise ServiceError(400, f"bad ciphertext batch: {exc}", "bad-ciphertext") from None
        except IsolatedTaskError as exc:
            if exc.reason is Failure.TIMEOUT:
                raise ServiceError(504, str(exc), "run-timeout") from None
            raise ServiceError(500, str(exc), "crashed") from None


def create_model_app(
    bundle: str | os.PathLike,
    state_dir: str | os.PathLike,
    *,
    limits: ServiceLimits | None = None,
    access_token: str | AccessTokens | None = None,
    trusted_key: Any = None,
    **overrides: Any,
) -> Any:
    """A FastAPI app serving the model bundle ``bundle`` (see the module docstring).

    Args:
        bundle: the bundle directory (``client/`` and ``server/``); both manifests are checked.
        state_dir: where registered evaluation keys are kept across restarts (``state_dir/keys``, 0700).
        limits: the service's limits (default :data:`~.serving.limits.SERVE_LIMITS`); keyword ``overrides`` change
            single fields (``max_rows=16``, ``workers=2``, ...).
        access_token: one token, or :class:`~veilml.serving.app.AccessTokens` (one per client);
            then every endpoint but ``/health`` needs ``Authorization: Bearer <token>``. Whoever can query
            the model can learn from its answers (model extraction); tokens decide who may query at all.
        trusted_key: the model owner's public key: the bundle's signature is checked against it
            (:mod:`veilml.runtime.manifest`) here and in every child process.
    """
    limits = service_limits(limits, SERVE_LIMITS, overrides, _ALIASES)
    service = ModelService(bundle, state_dir, limits, access_token=access_token, trusted_key=trusted_key)
    app = service.app()
    app.state.key_store, app.state.fingerprint = service.store, service.checker.fingerprint
    app.state.n_features, app.state.bundle_fingerprint = int(service.manifest["n_features"]), service.bundle_fingerprint
    return app


def _warm(runner: Any) -> None:
    with contextlib.suppress(Exception):  # a child that fails to start is started again on first use
        runner.warm()
