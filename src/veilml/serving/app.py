"""The HTTP kit of ``veilml serve`` and ``veilml worker``: a service class, who is asking, error bodies, access logs.

A service is a :class:`Service` subclass whose methods are its endpoints (listed by :meth:`Service.routes`);
the base holds what both services do: their :class:`~veilml.serving.limits.ServiceLimits`, their access
tokens, request bodies within bounds (:mod:`.body`), fair turns of encrypted work (:mod:`.scheduler`), and
the app's start and stop. :func:`create_service_app` makes the FastAPI app with what both share:

- **Who is asking.** With access tokens (``--access-token-file``: one token per line, ``NAME TOKEN``
  or just ``TOKEN``), every endpoint but ``/health`` needs ``Authorization: Bearer <token>`` and the
  request's *client* is the token's name; without tokens, it is the peer's address. Quotas, fair
  shares and in-flight budgets are per client (:mod:`.limits`).
- **Errors** are ``{"detail", "code"}`` with the HTTP status of a
  :class:`~veilml.serving.limits.ServiceError`; an unexpected exception is a 500 that names
  its type only (the traceback goes to the log, never to the client).
- **Access log** (logger ``<name>.access``, INFO): method, path (with ``redact`` applied: session
  ids are replaced), status, seconds and client name — never a token, a secret or a body.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from veilml.serving.body import BodyBudget, receive_body
from veilml.serving.limits import ServiceError, ServiceLimits
from veilml.serving.scheduler import FairScheduler

__all__ = [
    "AccessTokens",
    "Route",
    "Service",
    "access_tokens",
    "client_of",
    "create_service_app",
    "log_to_stderr",
    "service_limits",
]

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_MIN_TOKEN = 16


@dataclass(frozen=True)
class AccessTokens:
    """Who may query a service: the sha256 of each token, and the client name it stands for."""

    names: dict[bytes, str]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("no access token given")

    @classmethod
    def single(cls, token: str, name: str = "client") -> AccessTokens:
        return cls.parse(f"{name} {token}")

    @classmethod
    def parse(cls, text: str) -> AccessTokens:
        """Tokens from text: one per line, ``NAME TOKEN`` or ``TOKEN``; blank lines and ``#`` comments skipped."""
        names: dict[bytes, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) > 2:
                raise ValueError(f"line {number} of the access tokens has {len(fields)} fields; write 'NAME TOKEN' or 'TOKEN'")
            name, token = (fields[0], fields[1]) if len(fields) == 2 else (f"token-{number}", fields[0])
            if not _NAME.fullmatch(name):
                raise ValueError(f"line {number}: a client name is 1 to 64 of A-Z a-z 0-9 _ . @ -, got {name!r}")
            if len(token) < _MIN_TOKEN:
                raise ValueError(
                    f"line {number}: an access token must have at least {_MIN_TOKEN} characters; make one with "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
            digest = hashlib.sha256(token.encode()).digest()
            if digest in names:
                raise ValueError(f"line {number} repeats a token: give each client its own")
            names[digest] = name
        return cls(names)

    @classmethod
    def read(cls, path: str | Path) -> AccessTokens:
        """Tokens from a file readable by its owner only (mode 0600, owned by this user, not a link)."""
        from veilml.runtime.private_files import read_private_file

        return cls.parse(read_private_file(path).decode())

    def identify(self, token: str) -> str | None:
        """The client name of ``token``, or None; every known token is compared (constant time each)."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, name in self.names.items():
            if hmac.compare_digest(known, digest):
                found = name
        return found


def access_tokens(access_token: str | AccessTokens | None) -> AccessTokens | None:
    """The tokens of a service given one token (a client named ``client``), tokens, or None (no token needed)."""
    return AccessTokens.single(access_token) if isinstance(access_token, str) else access_token


def client_of(request: Any) -> str:
    """The client a request comes from (set by the app's middleware)."""
    return getattr(request.state, "client", "") or "unknown"


def _error(status: int, detail: str, code: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if code == "access-token" else None
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


class _GuardAndLog:
    """Who is asking (the token's client name, or the peer's address) and the access log line, as plain ASGI.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` wraps every response
    in a stream and a task group, which cost a worker's event loop most of its time on small requests.
    """

    def __init__(self, app: Any, *, tokens: AccessTokens | None, redact: Callable[[str], str], access_logger: logging.Logger):
        self.app, self.tokens, self.redact, self.access_logger = app, tokens, redact, access_logger

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = scope.setdefault("state", {})  # what ``request.state`` reads
        status = 500  # unless a response starts

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.tokens is None:
                peer = scope.get("client")
                state["client"] = f"addr:{peer[0] if peer else '?'}"
                await self.app(scope, receive, send_status)
            elif scope["path"] == "/health":
                state["client"] = "health"
                await self.app(scope, receive, send_status)
            else:
                header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
                scheme, _, token = header.decode("latin-1").partition(" ")
                client = self.tokens.identify(token.strip()) if scheme.lower() == "bearer" and token else None
                if not token or scheme.lower() != "bearer":
                    refusal = _error(
                        401, "this server needs an access token: send 'Authorization: Bearer <token>'", "access-token"
                    )
                elif client is None:
                    refusal = _error(403, "wrong access token for this server", "forbidden")
                else:
                    state["client"] = client
                    refusal = None
                await (self.app if refusal is None else refusal)(scope, receive, send_status)
        finally:
            self.access_logger.info(
                "%s %s %d %.3fs client=%s",
                scope["method"],
                self.redact(scope["path"]),
                status,
                time.perf_counter() - start,
                state.get("client", "-"),
            )


def create_service_app(
    *,
    title: str,
    description: str,
    name: str,
    endpoints: str,
    tokens: AccessTokens | None,
    redact: Callable[[str], str] = lambda path: path,
    lifespan: Any = None,
) -> Any:
    """A FastAPI app with the kit's middleware and error handlers (see the module docstring).

    ``name`` is the service's logger (``veilml.serve``, ``veilml.worker``); ``endpoints`` lists them for 404s.
    """
    from fastapi import FastAPI, Request
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from veilml import __version__

    logger = logging.getLogger(name)
    access_logger = logging.getLogger(f"{name}.access")
    app = FastAPI(title=title, version=__version__, description=description, lifespan=lifespan)

    app.add_middleware(_GuardAndLog, tokens=tokens, redact=redact, access_logger=access_logger)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> Any:
        return _error(error.status, str(error), error.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Any:
        where = redact(request.url.path)
        if error.status_code == 404:
            return _error(404, f"no endpoint {request.method} {where}; this server has {endpoints}")
        if error.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {where}; endpoints: {endpoints}")
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Any:
        logger.error("unexpected %s on %s %s", type(error).__name__, request.method, redact(request.url.path), exc_info=error)
        return _error(500, f"internal server error ({type(error).__name__}); see the server's log")

    return app


def log_to_stderr(level: str) -> None:
    """Show veilml's log records (access log, evictions, refusals) on stderr, like uvicorn's own."""
    logger = logging.getLogger("veilml")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


def service_limits(
    limits: ServiceLimits | None, default: ServiceLimits, overrides: Mapping[str, Any], aliases: Mapping[str, str]
) -> ServiceLimits:
    """``limits`` (or ``default``) with the single fields ``overrides`` names; ``aliases`` maps the keywords of
    earlier releases to today's fields."""
    return (limits or default).override(**{aliases.get(name, name): value for name, value in overrides.items()})


@dataclass(frozen=True)
class Route:
    """One endpoint: ``method path`` answered by ``endpoint``; ``options`` go to FastAPI's ``add_api_route``."""

    method: str
    path: str
    endpoint: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)


class Service:
    """A veilml HTTP service: a subclass names itself and lists its endpoints (its methods) in :meth:`routes`.

    The base keeps the service's ``limits``, its access ``tokens`` (None: anyone may ask, each client known by
    its address), the in-flight ``budget`` of request bodies and the fair ``scheduler`` of encrypted work;
    :meth:`app` is the FastAPI app, which closes the service when it stops. A subclass makes its own parts
    first (checks that may fail start no thread), then calls ``super().__init__``.
    """

    title: ClassVar[str]
    description: ClassVar[str]
    #: the logger (``<name>.access`` is the access log) and, dashed, the scheduler's thread names
    name: ClassVar[str]
    #: the endpoints as a 404 answer lists them
    endpoints: ClassVar[str]

    def __init__(self, limits: ServiceLimits, access_token: str | AccessTokens | None = None) -> None:
        self.limits = limits
        self.tokens = access_tokens(access_token)
        self.budget = BodyBudget.for_limits(limits)
        self.scheduler = FairScheduler.for_limits(limits, name=self.name.replace(".", "-"))

    def routes(self) -> list[Route]:
        """The service's endpoints."""
        raise NotImplementedError

    def redact(self, path: str) -> str:
        """``path`` as logs and messages show it (a service with secrets in its paths removes them)."""
        return path

    def start(self) -> None:
        """Called once the app starts serving."""

    def close(self) -> None:
        """Called when the app stops: requests still waiting for encrypted work fail with 503."""
        self.scheduler.close()

    def body(self, request: Any) -> contextlib.AbstractAsyncContextManager[bytes]:
        """The body of ``request`` within the limits, its bytes held against its client's budget (``async with``)."""
        return receive_body(request, self.limits, self.budget, client_of(request))

    def status(self) -> dict[str, Any]:
        """What both services' ``GET /health`` says besides their own facts: alive, veilml's version, work admitted
        now, and every limit."""
        from veilml import __version__

        return {"status": "ok", "version": __version__, "admitted": self.scheduler.admitted, **self.limits.public()}

    def app(self) -> Any:
        """The FastAPI app of this service (see :func:`create_service_app`)."""

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            self.start()
            yield
            self.close()

        app = create_service_app(
            title=self.title,
            description=self.description,
            name=self.name,
            endpoints=self.endpoints,
            tokens=self.tokens,
            redact=self.redact,
            lifespan=lifespan,
        )
        for route in self.routes():
            app.add_api_route(route.path, route.endpoint, methods=[route.method], **route.options)
        app.state.service, app.state.limits = self, self.limits
        app.state.body_budget, app.state.scheduler = self.budget, self.scheduler
        return app
