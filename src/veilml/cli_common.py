"""What the ``veilml`` commands share: their user error, the loopback hosts, reading an access token."""

from __future__ import annotations

__all__ = ["LOOPBACK", "CommandError", "read_token"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class CommandError(Exception):
    """A command that cannot go on; printed as ``veilml <command>: error: ...`` with exit status 1."""


def read_token(path: str) -> str:
    """An access token from a file of mode 0600 (at least 16 characters)."""
    from veilml.runtime.client import read_private_file

    try:
        token = read_private_file(path).decode().strip()
    except (OSError, PermissionError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read the access token from {path}: {error}") from None
    if len(token) < 16:
        raise CommandError(
            f"the access token in {path} is shorter than 16 characters; make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token
