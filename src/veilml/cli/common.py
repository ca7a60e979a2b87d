"""What the ``veilml`` commands share: their user error, reading access tokens, the state directory, and
serving an app over HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from veilml.errors import VeilmlError

__all__ = [
    "LOOPBACK",
    "CommandError",
    "default_state_dir",
    "one_line",
    "private_state_dir",
    "read_tokens",
    "run_app",
    "service_modules",
    "url_of",
]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class CommandError(VeilmlError):
    """A command that cannot go on; printed as ``veilml <command>: error: ...`` with exit status 1."""


def one_line(error: BaseException | str) -> str:
    """An error's message on one line (libraries' messages may span several: scikit-learn's list of columns,
    a C++ library's backtrace after its first line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    if lines[0].startswith("[") and "Stack trace" in str(error):  # XGBoost: "[time] file:line: message\nStack trace:"
        return lines[0].split(": ", 1)[-1]
    return " ".join(line for line in lines if not line.startswith("Stack trace")).rstrip(":")


def check_key_dir(key_dir: str, *, missing: str | None) -> None:
    """Refuse a ``--key-dir`` that cannot be this client's, saying the fix, before any library loads or any byte is
    sent. ``missing``: the fix to name when it does not exist (None: it is made, 0700, where it is missing)."""
    from veilml.runtime.private_files import check_private_dir

    path = Path(key_dir).expanduser()
    if not path.exists():
        if missing is None:
            return
        raise CommandError(f"--key-dir {key_dir} does not exist; {missing}")
    if not path.is_dir():
        raise CommandError(f"--key-dir {key_dir} is not a directory; give a directory for this client's keys")
    try:
        check_private_dir(path, "--key-dir", "others could read or plant secret keys")
    except OSError as error:  # another user's, or writable by others: its message says what to do
        raise CommandError(str(error)) from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise CommandError(f"--key-dir {key_dir} cannot be read and written by you; chmod 700 {key_dir}")


def default_state_dir() -> Path:
    """Where ``veilml serve`` keeps its state unless told: the per-user state directory (platformdirs' where
    it is installed, else ``$XDG_STATE_HOME`` or ``~/.local/state``) / ``veilml/serve``."""
    try:
        from platformdirs import user_state_dir
    except ImportError:
        base = os.environ.get("XDG_STATE_HOME", "")
        root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"  # the XDG spec: relative is invalid
        return root / "veilml" / "serve"
    return Path(user_state_dir("veilml", appauthor=False)) / "serve"


def private_state_dir(path: Path) -> Path:
    """``path``, made (mode 0700, with a missing ``veilml`` parent too) if missing; refused, with the fix, where it
    is not a directory of this user's that no one else can write."""
    from veilml.runtime.private_files import check_private_dir

    risk = "whoever can write there can plant or swap the evaluation keys the server loads"
    try:
        check_private_dir(path, "--state", risk)
        if path.parent.name == "veilml" and not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot use --state {path}: {one_line(error)}") from None
    return path


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
