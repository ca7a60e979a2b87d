"""What the ``veilml`` commands share: their user error, the loopback hosts, reading access tokens."""

from __future__ import annotations

from typing import Any

from veilml.errors import VeilmlError

__all__ = ["LOOPBACK", "CommandError", "read_tokens"]

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
