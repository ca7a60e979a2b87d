"""The one HTTP client loop of veilml's remote clients: retries, a time budget, bounded reads, typed errors.

:class:`~veilml.serving.remote_model.RemoteModel` (a client of ``veilml serve``) and
:class:`~veilml.linear.transport.HTTPTransport` (a client of ``veilml worker``) send every request
through :class:`HTTPClient`:

- **Retries.** A request that fails on the way (connection refused or reset, a timeout) or is
  answered with one of the policy's statuses (502, 503, 504 by default) is sent again after a wait
  that doubles each time, while the :class:`RetryPolicy` allows: a number of retries, a time
  budget, or both. Every other answer of 400 or more is raised at once.
- **Bounded reads.** Answers are streamed and counted as they arrive, not as announced, up to the
  limit each call gives; an encoded (compressed) answer is refused, since it could inflate past the
  limit before it is counted.
- **Errors** are :class:`RemoteError` (each client raises its own subclass), carrying the HTTP
  ``status`` and the service's ``code`` (``{"detail", "code"}`` is what both services answer, see
  :mod:`veilml.serving.app`), so that a client can act on a refusal without parsing its message.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from veilml.errors import VeilmlError

__all__ = ["HOSTILE", "MAX_JSON_BYTES", "HTTPClient", "RemoteError", "RetryPolicy"]

logger = logging.getLogger("veilml.remote")

#: the largest JSON answer (``/health``, ``/keys``, ``/sessions``) or error body read: real ones are a few hundred bytes
MAX_JSON_BYTES = 16 * 2**10
#: how a refusal of an answer ends
HOSTILE = "the server may be hostile"


class RemoteError(VeilmlError, RuntimeError):
    """A veilml service refused a request (its ``status`` and ``code`` kept), could not be reached, or sent
    an answer this client refuses (too large, malformed, not an answer to what was sent)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.url = status, code, url

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.status, self.code, self.url))


@dataclass(frozen=True)
class RetryPolicy:
    """When a request that failed on the way is sent again.

    After a connection error or an answer in ``statuses``, the request is sent again after
    ``backoff`` seconds, doubled each time up to ``max_delay`` and stretched by up to ``jitter``
    (a fraction, drawn at random), as long as at most ``retries`` retries were made (None: no count)
    and the wait ends within ``budget`` seconds of the first attempt. When they run out, the error
    has the last answer's status, or ``give_up_status`` when given.
    """

    retries: int | None = 3
    budget: float = math.inf
    backoff: float = 0.5
    max_delay: float = math.inf
    jitter: float = 0.0
    statuses: frozenset[int] = frozenset({502, 503, 504})
    give_up_status: int | None = None

    def __post_init__(self) -> None:
        if (self.retries is not None and self.retries < 0) or min(self.backoff, self.budget, self.max_delay, self.jitter) < 0:
            raise ValueError("retries, the time budget (retry_for), backoff, max_delay and jitter must be non-negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th attempt failed (1 for the first)."""
        return min(self.backoff * 2 ** (attempt - 1), self.max_delay) * random.uniform(1.0, 1.0 + self.jitter)

    def allows(self, attempts: int, elapsed: float) -> bool:
        """Whether another attempt may follow ``attempts`` of them, once ``elapsed`` seconds (the wait included) have passed."""
        return (self.retries is None or attempts <= self.retries) and elapsed <= self.budget


@dataclass
class _Failure:
    """Why one attempt failed: the error to raise if it is the last, and a short description for the log."""

    error: RemoteError
    last: str


class HTTPClient:
    """Requests to one service at ``base_url`` (see the module docstring).

    Args:
        base_url: the service's URL, without a trailing slash.
        client: the ``httpx.Client`` that sends the requests (it may be replaced later: ``client`` is an attribute).
        policy: when failed requests are sent again.
        error: the client's error class (called with ``message``, ``status``, ``code`` and ``url`` as keywords).
        headers: sent with every request (an access token, ...).
        redact: how a path is shown in messages and logs (e.g. session ids removed).
        unavailable: what to do when the retries run out, appended to that error's message.
    """

    def __init__(
        self,
        base_url: str,
        client: Any,
        *,
        policy: RetryPolicy,
        error: Callable[..., RemoteError] = RemoteError,
        headers: Mapping[str, str] | None = None,
        redact: Callable[[str], str] = lambda path: path,
        unavailable: str = "check that the server is running and reachable",
    ) -> None:
        self.base_url, self.client, self.policy = base_url, client, policy
        self._error, self._redact, self._unavailable = error, redact, unavailable
        # identity: a compressed answer could inflate past the limits before it is counted
        self.headers = {"accept-encoding": "identity", **(headers or {})}
        #: how many requests were sent again
        self.retries_done = 0

    def request(
        self, method: str, path: str, *, limit: int, content: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """The body of a successful answer to ``method path``, read up to ``limit`` bytes (more is refused)."""
        import httpx

        what = f"{method} {self._redact(path)}"
        start, attempts = time.monotonic(), 0
        while True:
            attempts += 1
            try:
                with self.client.stream(
                    method, self.base_url + path, content=content, headers={**self.headers, **(headers or {})}
                ) as response:
                    if response.status_code < 400:
                        return self.read(response, limit, what)
                    failure = self._refusal(response, what)
                    if response.status_code not in self.policy.statuses:
                        raise failure.error
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as error:  # will not get better
                raise ValueError(f"cannot send {what} to {self.base_url}: {error}; check the URL") from None
            except httpx.TransportError as error:  # refused, reset, timed out: the service may be restarting
                last = f"{type(error).__name__}: {error}"
                failure = _Failure(self._refuse(f"cannot reach {self.base_url}: {last}"), last)
            delay = self.policy.delay(attempts)
            if not self.policy.allows(attempts, time.monotonic() - start + delay):
                raise self._gave_up(failure, what, attempts, time.monotonic() - start)
            logger.warning("%s %s failed (%s); retry %d in %.1f s", what, self.base_url, failure.last, attempts, delay)
            time.sleep(delay)
            self.retries_done += 1

    def json(self, method: str, path: str, *, limit: int = MAX_JSON_BYTES, content: bytes | None = None) -> dict[str, Any]:
        """The JSON object a successful answer holds (anything else is refused)."""
        body = self.request(method, path, limit=limit, content=content)
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            raise self._refuse(f"{method} {self._redact(path)}: the server's answer is not a JSON object; {HOSTILE}")
        return answer

    def read(self, response: Any, limit: int, what: str) -> bytes:
        """At most ``limit`` bytes of a streamed answer, counted as they arrive (not as announced)."""
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise self._refuse(f"{what}: the server sent a {encoding!r}-encoded answer, and this client reads plain bytes only")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._refuse(
                f"{what}: the server announces {int(declared):,} bytes, more than the {limit:,} expected; {HOSTILE}"
            )
        chunks, size = [], 0
        for chunk in response.iter_bytes():  # no decoding to do: only identity-encoded answers get here
            size += len(chunk)
            if size > limit:
                raise self._refuse(f"{what}: the server sent more than the {limit:,} bytes expected; {HOSTILE}")
            chunks.append(chunk)
        return b"".join(chunks)

    def _refusal(self, response: Any, what: str) -> _Failure:
        """An answer of 400 or more as an error: the service's ``detail`` and ``code`` (its body read up to a bound)."""
        status = response.status_code
        try:
            body = self.read(response, MAX_JSON_BYTES, what)
        except RemoteError:
            body = b"(an error body over the size limit)"
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        if isinstance(document, dict) and "detail" in document:
            detail, code = str(document["detail"])[:1000], document.get("code")
        else:
            detail, code = body.decode("utf-8", "replace")[:500] or response.reason_phrase or "(no detail)", None
        error = self._refuse(f"{what}: {status}: {detail}", status, code if isinstance(code, str) else None)
        return _Failure(error, f"HTTP {status}: {detail}")

    def _gave_up(self, failure: _Failure, what: str, attempts: int, elapsed: float) -> RemoteError:
        """The error once the retries ran out: how many attempts, the last failure, what to do."""
        times = "time" if attempts == 1 else "times"
        return self._refuse(
            f"{what} failed {attempts} {times} in {elapsed:.1f} s, last with {failure.last}; {self._unavailable}",
            self.policy.give_up_status or failure.error.status,
            failure.error.code,
        )

    def _refuse(self, message: str, status: int | None = None, code: str | None = None) -> RemoteError:
        """The client's error (its own class) for this service."""
        return self._error(message=message, status=status, code=code, url=self.base_url)
