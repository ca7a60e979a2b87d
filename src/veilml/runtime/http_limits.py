"""Request-body limits shared by veilml's HTTP services: size, bytes in flight, stalls.

A service reads every body through :func:`receive_body`, which refuses a declared or actual size over
the payload limit (413), more bytes held at once across requests than the in-flight budget (503,
retry), and a body that stops sending for longer than the read timeout (408), before anything is
parsed. Errors are :class:`ServiceError` with an HTTP status and a machine-readable code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

__all__ = [
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_READ_TIMEOUT",
    "BodyBudget",
    "ServiceError",
    "receive_body",
    "too_large",
]

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 2**20
DEFAULT_MAX_INFLIGHT_BYTES = 1024 * 2**20
DEFAULT_READ_TIMEOUT = 30.0


class ServiceError(Exception):
    """An error answered with ``status`` and ``{"detail": message, "code": code}``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (
        f"request body of {'more than ' if at_least else ''}{size} bytes exceeds this server's limit of {limit} bytes; "
        "send fewer rows per request, or restart the server with a larger --max-payload-mb"
    )


class BodyBudget:
    """Caps the request-body bytes held at once, across all requests (a stalled upload holds its share).

    Touched only from the event loop, so it needs no lock.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.used = max_bytes, 0

    def take(self, size: int) -> None:
        if self.used + size > self.max_bytes:
            raise ServiceError(
                503,
                f"the server is receiving {self.used} bytes of other requests and this one would pass its limit of "
                f"{self.max_bytes} bytes in flight; retry shortly",
                "busy",
            )
        self.used += size


@contextlib.asynccontextmanager
async def receive_body(request: Any, max_bytes: int, budget: BodyBudget, read_timeout: float) -> AsyncIterator[bytes]:
    """The body of a Starlette ``request`` within the size limit, the in-flight budget and the read
    timeout; its bytes count against ``budget`` until the ``async with`` block ends (while the body
    is being worked on, not only while it arrives)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceError(400, "the Content-Length header is not a byte count; send a well-formed request")
        if int(declared) > max_bytes:
            raise ServiceError(413, too_large(int(declared), max_bytes))
    held = int(declared or 0)
    budget.take(held)
    try:
        chunks, size = [], 0
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), timeout=read_timeout)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise ServiceError(408, f"the request body stalled for {read_timeout:g} s; send it again") from None
            except ClientDisconnect:
                raise ServiceError(400, "the client disconnected before sending the whole body") from None
            size += len(chunk)
            if size > max_bytes:
                raise ServiceError(413, too_large(size, max_bytes, at_least=True))
            if size > held:  # no (or a short) Content-Length: count bytes as they come
                budget.take(size - held)
                held = size
            chunks.append(chunk)
        body = b"".join(chunks)
        del chunks
        yield body
    finally:
        budget.used -= held
