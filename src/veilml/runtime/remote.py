"""Reaching a worker over HTTP: :class:`HTTPTransport`, the same four calls as ``LocalTransport``.

Every call is safe to repeat: ``layers`` and ``setup`` read, ``register`` overwrites the keys of
one (session, layer, direction), and ``run`` is a pure function of its ciphertext and keys. So a
call that fails on the way (connection refused or reset, timeout, 5xx) is sent again after an
exponential backoff. A 4xx is the client's problem and raises :class:`RemoteWorkerError` with the
worker's explanation, except for one case handled here: a 401 on ``run`` means the worker lost the
session's keys (it restarted, or evicted the session), so the transport registers the keys it last
sent for that (session, layer, direction) again and runs once more. Before doing so it checks that
the worker still serves the same layers (same fingerprint), since keys and results from a
different model would be silently wrong.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Self
from urllib.parse import quote

import httpx

from .linear.protocol import ALL, LayerInfo, WorkerError

__all__ = ["HTTPTransport", "RemoteWorkerError"]

logger = logging.getLogger("veilml.remote")

OCTET_STREAM = "application/octet-stream"


class RemoteWorkerError(WorkerError):
    """A request the remote worker refused (4xx), or one that kept failing (``status`` 503 or the
    last 5xx) after every retry; the message carries the worker's ``detail``."""

    def __init__(self, status: int, message: str, url: str = "") -> None:
        super().__init__(status, message)
        self.detail = message
        self.url = url


class HTTPTransport:
    """A :class:`~veilml.runtime.linear.protocol.Transport` to a worker at ``url`` (``veilml worker``).

    Args:
        url: the worker's base URL, e.g. ``http://10.0.0.5:8765``.
        timeout: seconds per request (connecting, and waiting for each read).
        retries: how many times a failed call is sent again (connection errors, timeouts, 5xx).
        backoff: seconds before the first retry, doubled each time (with jitter, capped at 30 s).
        client: an ``httpx.Client`` to use instead of a new one (e.g. FastAPI's ``TestClient``).
    """

    def __init__(
        self,
        url: str,
        timeout: float = 300.0,
        retries: int = 3,
        backoff: float = 0.5,
        client: httpx.Client | None = None,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be non-negative")
        self.url = url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._lock = threading.Lock()
        self._description: dict[str, Any] | None = None
        self.fingerprint: str | None = None
        #: how many requests were sent again (failures on the way), and how many times keys were
        #: registered again after a 401 (worker restart or eviction)
        self.retries_done = 0
        self.reregistrations = 0

    # -- the Transport protocol -------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return str(self._describe()["backend"])

    @property
    def max_payload_bytes(self) -> int | None:
        value = self._describe().get("max_payload_bytes")
        return None if value is None else int(value)

    def layers(self) -> dict[str, LayerInfo]:
        description = self._describe(refresh=True)
        return {name: LayerInfo.from_dict(d) for name, d in description["layers"].items()}

    def setup(self, layer: str, direction: str) -> bytes:
        return self._request("GET", f"/layers/{_segment(layer)}/{_segment(direction)}/setup").content

    def register(self, session: str, layer: str, direction: str, evaluation_keys: bytes) -> None:
        self._post(session, layer, direction, "keys", evaluation_keys)
        with self._lock:
            self._keys[(session, layer, direction)] = evaluation_keys

    def run(self, session: str, layer: str, direction: str, ciphertext: bytes) -> bytes:
        try:
            return self._post(session, layer, direction, "run", ciphertext).content
        except RemoteWorkerError as error:
            with self._lock:
                scope = (session, layer, direction) if (session, layer, direction) in self._keys else (session, ALL, ALL)
                keys = self._keys.get(scope)
            if error.status != 401 or keys is None:
                raise
        # the worker lost this session's keys (restart or eviction): same worker? then send them again
        logger.info("%s lost the keys of %s/%s; registering them again", self.url, layer, direction)
        self._check_same_worker()
        self._post(*scope, "keys", keys)
        self.reregistrations += 1
        return self._post(session, layer, direction, "run", ciphertext).content

    # -- helpers ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health").json()

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
            description = self._request("GET", "/layers").json()
            if self.fingerprint is not None and description.get("fingerprint") != self.fingerprint:
                raise _changed(self.url)
            self._description = description
            self.fingerprint = description.get("fingerprint")
        return self._description

    def _check_same_worker(self) -> None:
        if self.fingerprint is None:
            return
        if self._request("GET", "/health").json().get("fingerprint") != self.fingerprint:
            raise _changed(self.url)

    def _post(self, session: str, layer: str, direction: str, action: str, body: bytes) -> httpx.Response:
        limit = self._description.get("max_payload_bytes") if self._description else None
        if limit is not None and len(body) > int(limit):
            what = "evaluation keys" if action == "keys" else "ciphertext"
            raise RemoteWorkerError(
                413,
                f"the {what} for {layer}/{direction} is {len(body)} bytes, over the worker's limit of {limit} bytes; "
                "send fewer rows per call, or restart the worker with a larger --max-payload-mb",
                self.url,
            )
        if layer == direction == ALL:
            path = f"/sessions/{_segment(session)}/{action}"
        else:
            path = f"/sessions/{_segment(session)}/layers/{_segment(layer)}/{_segment(direction)}/{action}"
        return self._request("POST", path, content=body, headers={"content-type": OCTET_STREAM})

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.url + path
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff * 2 ** (attempt - 1), 30.0) * random.uniform(1.0, 1.25)
                logger.warning("%s %s failed (%s); retry %d/%d in %.1f s", method, url, last, attempt, self.retries, delay)
                time.sleep(delay)
                self.retries_done += 1
            try:
                response = self._client.request(method, url, **kwargs)
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as error:  # will not get better
                raise ValueError(f"cannot send {method} {url}: {error}") from None
            except httpx.TransportError as error:  # refused, reset, timed out: the worker may be restarting
                last = f"{type(error).__name__}: {error}"
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}: {_detail(response)}"
                continue
            if response.status_code >= 400:
                raise RemoteWorkerError(response.status_code, _detail(response), url)
            return response
        raise RemoteWorkerError(
            503,
            f"{method} {url} failed {self.retries + 1} times, last with {last}; "
            "check that the worker is running and reachable (veilml worker --host/--port)",
            url,
        )


def _segment(value: str) -> str:
    # layer names may hold dots and even slashes; the worker's routes accept both
    return quote(value, safe="/.")


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        detail = None
    if not isinstance(detail, str):
        detail = response.text[:500] or response.reason_phrase
    return detail


def _changed(url: str) -> RemoteWorkerError:
    return RemoteWorkerError(
        409,
        f"the worker at {url} now serves different layers or weights than when this transport first read them; "
        "its results would not match this session: start over with a new HTTPTransport and EncryptedLinearExecutor",
        url,
    )
