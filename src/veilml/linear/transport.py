"""The client's HTTP transport to a linear-layer worker: :class:`HTTPTransport`, the same calls as ``LocalTransport``.

Every call but ``open_session`` is safe to repeat: ``layers`` and ``setup`` read, ``register``
sends the same keys again (the worker accepts identical keys and refuses others), and ``run`` is a
pure function of its ciphertext and keys. So a call that fails on the way (connection refused or
reset, timeout, 5xx) is sent again after an exponential backoff, for up to ``retry_for`` seconds:
long enough, by default, to ride out a worker restart. Requests go through the HTTP client loop of
every veilml client (:class:`~veilml.serving.http_client.HTTPClient`: retries, bounded reads, errors
with the worker's status and code), with this transport's :class:`~veilml.serving.http_client.RetryPolicy`. A 4xx is the client's problem and raises
:class:`RemoteWorkerError` with the worker's explanation, except for the cases handled here: a 401
on ``run`` means the worker lost the session (it restarted, or evicted it: a new session is opened)
or the keys of that matrix (evicted), so the transport registers the keys it last sent for that
layer and direction again and runs once more. Before doing so it checks that the worker still
serves the same layers (same fingerprint), since keys and results from a different model would be
silently wrong.

The worker's limits come from the worker: ``max_rows`` and ``max_payload_bytes`` as it publishes
them at ``GET /layers`` (a worker that does not publish ``max_rows`` is assumed to take the default,
:data:`~veilml.linear.limits.DEFAULT_MAX_ROWS`; without ``max_payload_bytes`` the size of a
body is left for the worker to check).

The session secret (``X-Veilml-Session-Secret``) and the access token (``Authorization: Bearer``)
travel in headers, never in URLs. Use HTTPS (a TLS proxy in front of the worker) beyond a trusted
network: both are bearer secrets.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Self
from urllib.parse import quote

import httpx

from veilml.linear.errors import WorkerError
from veilml.linear.http import SECRET_HEADER, redact_path
from veilml.linear.layers import ALL, LayerInfo
from veilml.linear.limits import DEFAULT_MAX_ROWS
from veilml.runtime.envelope import DEFAULT_MAX_BYTES
from veilml.serving.http_client import HTTPClient, RemoteError, RetryPolicy

__all__ = ["HTTPTransport", "RemoteWorkerError"]

logger = logging.getLogger("veilml.remote")

OCTET_STREAM = "application/octet-stream"
#: the largest setup or result read from a worker: the largest message veilml reads
MAX_ANSWER_BYTES = DEFAULT_MAX_BYTES
#: the largest ``GET /layers`` document read (public aggregates of every layer: a few MiB for a 1B model)
MAX_LAYERS_BYTES = 256 * 2**20


class RemoteWorkerError(WorkerError, RemoteError):
    """A request the remote worker refused (4xx), or one that kept failing (``status`` 503) after every
    retry; the message carries the worker's ``detail``, ``code`` its code."""

    def __init__(self, status: int, message: str, url: str = "", code: str | None = None) -> None:
        super().__init__(status, message, code)
        self.detail = message
        self.url = url

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.status, str(self), self.url, self.code))


class HTTPTransport:
    """A :class:`~veilml.linear.executor.Transport` to a worker at ``url`` (``veilml worker``).

    Args:
        url: the worker's base URL, e.g. ``http://10.0.0.5:8765``.
        timeout: seconds per request (connecting, and waiting for each read).
        retry_for: seconds during which a failing call (connection errors, timeouts, 5xx) is sent
            again; the default covers a worker restart, circuits included.
        retries: an optional cap on how many times one call is sent again (None: ``retry_for`` decides).
        backoff: seconds before the first retry, doubled each time (with jitter, capped at 5 s).
        access_token: the worker's access token, if it was started with one.
        client: an ``httpx.Client`` to use instead of a new one (e.g. FastAPI's ``TestClient``).
    """

    def __init__(
        self,
        url: str,
        timeout: float = 300.0,
        retry_for: float = 300.0,
        retries: int | None = None,
        backoff: float = 0.5,
        access_token: str | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        policy = RetryPolicy(
            retries=retries,
            budget=retry_for,
            backoff=backoff,
            max_delay=5.0,
            jitter=0.25,
            statuses=frozenset(range(500, 600)),
            give_up_status=503,
        )
        self._http = HTTPClient(
            self.url,
            client or httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))),
            policy=policy,
            error=RemoteWorkerError,
            headers={"authorization": f"Bearer {access_token}"} if access_token else {},
            redact=redact_path,
            unavailable="check that the worker is running and reachable (veilml worker --host/--port)",
        )
        # this client's sessions: the id it was opened under -> [the worker's current id, secret]
        self._sessions: dict[str, list[str]] = {}
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._lock = threading.Lock()
        self._description: dict[str, Any] | None = None
        self.fingerprint: str | None = None
        #: how many times keys were registered again after a 401 (worker restart or eviction), and sessions opened again
        self.reregistrations = 0
        self.reopened_sessions = 0

    @property
    def retries_done(self) -> int:
        """How many requests were sent again (failures on the way)."""
        return self._http.retries_done

    @property
    def _client(self) -> httpx.Client:
        """The ``httpx.Client`` that sends the requests (tests replace it to play a restarted worker)."""
        return self._http.client

    @_client.setter
    def _client(self, client: httpx.Client) -> None:
        self._http.client = client

    # -- the Transport protocol -------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return str(self._describe()["backend"])

    @property
    def max_rows(self) -> int:
        """The most rows the worker takes in one ``run``, as it publishes it."""
        value = self._describe().get("max_rows")
        return DEFAULT_MAX_ROWS if value is None else int(value)

    @property
    def max_payload_bytes(self) -> int | None:
        """The largest request body the worker takes, as it publishes it (None: it does not say)."""
        value = self._describe().get("max_payload_bytes")
        return None if value is None else int(value)

    def layers(self) -> dict[str, LayerInfo]:
        description = self._describe(refresh=True)
        return {name: LayerInfo.from_dict(d) for name, d in description["layers"].items()}

    def setup(self, layer: str, direction: str) -> bytes:
        return self._http.request("GET", f"/layers/{_segment(layer)}/{_segment(direction)}/setup", limit=MAX_ANSWER_BYTES)

    def open_session(self) -> str:
        """Open a session on the worker; its secret stays in this transport."""
        grant = self._open()
        with self._lock:
            self._sessions[grant[0]] = grant
        return grant[0]

    def register(self, session: str, layer: str, direction: str, evaluation_keys: bytes) -> None:
        with self._lock:
            self._keys[(session, layer, direction)] = evaluation_keys
        try:
            self._post(session, layer, direction, "keys", evaluation_keys)
        except RemoteWorkerError as error:
            if error.code != "unknown-session":
                raise
            self._reopen(session)
            self._post(session, layer, direction, "keys", evaluation_keys)

    def run(self, session: str, layer: str, direction: str, ciphertext: bytes) -> bytes:
        try:
            return self._post(session, layer, direction, "run", ciphertext)
        except RemoteWorkerError as error:
            with self._lock:
                scope = (session, layer, direction) if (session, layer, direction) in self._keys else (session, ALL, ALL)
                keys = self._keys.get(scope)
            if error.code not in ("unknown-session", "no-keys") or keys is None:
                raise
            lost_session = error.code == "unknown-session"
        # the worker lost this session or its keys (restart or eviction): same worker? then send them again
        logger.info("%s lost the keys of %s/%s; registering them again", self.url, layer, direction)
        self._check_same_worker()
        if lost_session:
            self._reopen(session)
        self._post(*scope, "keys", keys)
        self.reregistrations += 1
        return self._post(session, layer, direction, "run", ciphertext)

    # -- helpers ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._http.json("GET", "/health")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HTTPTransport({self.url!r})"

    def _describe(self, refresh: bool = False) -> dict[str, Any]:
        if self._description is None or refresh:
            description = self._http.json("GET", "/layers", limit=MAX_LAYERS_BYTES)
            if self.fingerprint is not None and description.get("fingerprint") != self.fingerprint:
                raise _changed(self.url)
            self._description = description
            self.fingerprint = description.get("fingerprint")
        return self._description

    def _open(self) -> list[str]:
        document = self._http.json("POST", "/sessions")
        session, secret = document.get("session"), document.get("secret")
        if not isinstance(session, str) or not isinstance(secret, str):
            raise RemoteWorkerError(502, "the worker's answer to POST /sessions has no session and secret", self.url)
        return [session, secret]

    def _reopen(self, session: str) -> None:
        """A new session on the worker for this client's ``session`` (the worker lost the old one)."""
        grant = self._open()
        with self._lock:
            if session not in self._sessions:
                raise KeyError(f"session {session!r} was not opened by this transport; call open_session() first")
            self._sessions[session] = grant
        self.reopened_sessions += 1

    def _check_same_worker(self) -> None:
        if self.fingerprint is None:
            return
        if self.health().get("fingerprint") != self.fingerprint:
            raise _changed(self.url)

    def _post(self, session: str, layer: str, direction: str, action: str, body: bytes) -> bytes:
        limit = self._description.get("max_payload_bytes") if self._description else None
        if limit is not None and len(body) > int(limit):
            what = "evaluation keys" if action == "keys" else "ciphertext"
            raise RemoteWorkerError(
                413,
                f"the {what} for {layer}/{direction} is {len(body)} bytes, over the worker's limit of {limit} bytes; "
                "send fewer rows per call, or restart the worker with a larger --max-payload-mb",
                self.url,
            )
        with self._lock:
            if session not in self._sessions:
                raise KeyError(f"session {session!r} was not opened by this transport; call open_session() first")
            current, secret = self._sessions[session]
        if layer == direction == ALL:
            path = f"/sessions/{_segment(current)}/{action}"
        else:
            path = f"/sessions/{_segment(current)}/layers/{_segment(layer)}/{_segment(direction)}/{action}"
        headers = {"content-type": OCTET_STREAM, SECRET_HEADER: secret}
        return self._http.request("POST", path, content=body, headers=headers, limit=MAX_ANSWER_BYTES)


def _segment(value: str) -> str:
    # layer names may hold dots and even slashes; the worker's routes accept both
    return quote(value, safe="/.")


def _changed(url: str) -> RemoteWorkerError:
    return RemoteWorkerError(
        409,
        f"the worker at {url} now serves different layers or weights than when this transport first read them; "
        "its results would not match this session: start over with a new HTTPTransport and EncryptedLinearExecutor",
        url,
    )
