"""Request bodies within bounds: size, bytes held at once (in all and per client), stalls and total upload time.

A service reads every body through :func:`receive_body`. It refuses a declared or actual size over
the payload limit (413) and a body that stalls longer than the read timeout or takes longer than the
upload timeout in all (408), before anything is parsed. Bytes are counted against the in-flight
budgets *as they arrive*, not as declared: an upload that announces 256 MiB and trickles holds only
what it sent, so slow uploads cannot fill the budget and turn every other client away (found: four
uploads declaring 256 MiB and sending 24 bytes in all made every other request get 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from veilml.serving.limits import ServiceError, ServiceLimits

__all__ = ["BodyBudget", "receive_body", "too_large"]


def too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (
        f"request body of {'more than ' if at_least else ''}{size} bytes exceeds this server's limit of {limit} bytes; "
        "send fewer rows per request, or restart the server with a larger --max-payload-mb"
    )


class BodyBudget:
    """Caps the request-body bytes held at once, over all requests and per client.

    A request holds its bytes from their arrival until its ``async with receive_body(...)`` block
    ends (while the body is being worked on too). Touched only from the event loop: no lock.
    """

    def __init__(self, max_bytes: int, max_bytes_per_client: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_bytes_per_client = max_bytes if max_bytes_per_client is None else max_bytes_per_client
        self.used = 0
        self.by_client: defaultdict[str, int] = defaultdict(int)

    @classmethod
    def for_limits(cls, limits: ServiceLimits) -> BodyBudget:
        """The budget of a service with these ``limits`` (``max_inflight_bytes`` and its per-client twin)."""
        return cls(limits.max_inflight_bytes, limits.max_inflight_bytes_per_client)

    def take(self, size: int, client: str = "") -> None:
        if self.by_client[client] + size > self.max_bytes_per_client:
            raise ServiceError(
                429,
                f"your requests already hold {self.by_client[client]} bytes on this server and this one would pass its "
                f"limit of {self.max_bytes_per_client} bytes per client; wait for them to finish",
                "busy-client",
            )
        if self.used + size > self.max_bytes:
            raise ServiceError(
                503,
                f"the server is receiving {self.used} bytes of other requests and this one would pass its limit of "
                f"{self.max_bytes} bytes in flight; retry shortly",
                "busy",
            )
        self.used += size
        self.by_client[client] += size

    def give(self, size: int, client: str = "") -> None:
        self.used -= size
        self.by_client[client] -= size
        if not self.by_client[client]:
            del self.by_client[client]


@contextlib.asynccontextmanager
async def receive_body(request: Any, limits: ServiceLimits, budget: BodyBudget, client: str = "") -> AsyncIterator[bytes]:
    """The body of a Starlette ``request`` within ``limits`` and ``budget``; its bytes count against the
    budget (as ``client``'s) until the ``async with`` block ends."""
    from starlette.requests import ClientDisconnect

    max_bytes = limits.max_payload_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceError(400, "the Content-Length header is not a byte count; send a well-formed request")
        if int(declared) > max_bytes:
            raise ServiceError(413, too_large(int(declared), max_bytes))
    held = 0
    deadline = time.monotonic() + limits.upload_timeout
    try:
        chunks, size = [], 0
        stream = request.stream().__aiter__()
        while True:
            wait = min(limits.read_timeout, deadline - time.monotonic())
            try:
                if wait <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(stream.__anext__(), timeout=wait)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    message = f"the request body took longer than {limits.upload_timeout:g} s to arrive; send it again"
                else:
                    message = f"the request body stalled for {limits.read_timeout:g} s; send it again"
                raise ServiceError(408, message, "upload-timeout") from None
            except ClientDisconnect:
                raise ServiceError(400, "the client disconnected before sending the whole body") from None
            size += len(chunk)
            if size > max_bytes:
                raise ServiceError(413, too_large(size, max_bytes, at_least=True))
            budget.take(len(chunk), client)
            held += len(chunk)
            chunks.append(chunk)
        body = b"".join(chunks)
        del chunks
        yield body
    finally:
        budget.give(held, client)
