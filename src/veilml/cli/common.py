"""What the ``veilml`` commands share: their user error, reading access tokens, and serving an app over HTTP."""

from __future__ import annotations

from typing import Any

from veilml.errors import VeilmlError

__all__ = ["LOOPBACK", "CommandError", "read_tokens", "run_app", "service_modules", "url_of"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class CommandError(VeilmlError):
    """A command that cannot go on; printed as ``veilml <command>: error: ...`` with exit status 1."""


def read_tokens(path: str) -> Any:
    """The access tokens in a file of mode 0600 (one per line, ``NAME TOKEN`` or ``TOKEN``, 16 characters or more)."""
    from veilml.serving.app import AccessTokens

    try:
        return AccessTokens.read(path)
    except (OSError, PermissionError, UnicodeDecodeError, ValueError) as error:
        raise CommandError(f"cannot read the access tokens from {path}: {error}") from None


def url_of(host: str, port: int) -> str:
    """The URL of a service listening on ``host`` (an IPv6 address in brackets) and ``port``."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def service_modules(subject: str) -> Any:
    """``uvicorn``, once FastAPI and uvicorn are known to be installed (a CommandError tells ``subject``'s user how
    to get them)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise CommandError(f"{subject} needs FastAPI and uvicorn ({error}); pip install 'veilml[worker]'") from None
    return uvicorn


def run_app(app: Any, command: str, *, host: str, port: int, log_level: str, exposed: str, paths: str) -> None:
    """Serve ``app`` with uvicorn until stopped, after saying where (and warning when it listens beyond this
    machine: ``exposed`` says what an open service gives away). uvicorn's access log is off: the app logs
    requests itself, without secrets."""
    from veilml.serving.app import log_to_stderr

    uvicorn = service_modules(f"veilml {command}")
    log_to_stderr(log_level)
    if host not in LOOPBACK:
        print(f"veilml {command}: WARNING: listening on {host}, beyond this machine, without TLS{exposed}", flush=True)
    print(f"veilml {command}: listening on {url_of(host, port)} ({paths})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
