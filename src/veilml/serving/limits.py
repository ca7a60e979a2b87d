"""The limits every veilml HTTP service applies, as one typed settings object and one set of command flags.

``veilml serve`` (encrypted trees) and ``veilml worker`` (encrypted linear layers) bound the same
things, with the same flags, and publish them on ``GET /health``:

- request bodies: the largest body, the bytes held at once over all requests and per client, how
  long a body may stall and how long a whole upload may take;
- FHE work: how many computations run at once (``workers``), how many requests may wait and how
  many one client may have in flight, rows per request, and the time one request may compute;
- the key/session store: bytes and entries in all and per client.

A *client* is an identity: the name of the access token it presented (``--access-token-file`` may
hold one token per client), or its network address when the service has no tokens.

This module imports nothing heavy: the command line builds its parser from it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from veilml.errors import VeilmlError

__all__ = [
    "MIB",
    "SERVE_LIMITS",
    "ServiceError",
    "ServiceLimits",
    "add_limit_arguments",
    "limits_from_args",
    "positive",
]

MIB = 2**20


class ServiceError(VeilmlError):
    """An error answered with ``status`` and ``{"detail": message, "code": code}``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def __reduce__(self) -> tuple[object, ...]:  # raised in an isolated process, re-raised in the server
        return (type(self), (self.status, str(self), self.code))


@dataclass(frozen=True)
class ServiceLimits:
    """What one veilml service allows; every field is a flag of both commands (``--max-payload-mb`` ...).

    Byte sizes are bytes here and MiB on the command line; times are seconds.
    """

    max_payload_bytes: int = 256 * MIB  #: largest request body (413 beyond)
    max_inflight_bytes: int = 1024 * MIB  #: body bytes held at once over all requests (503 beyond: retry)
    max_inflight_bytes_per_client: int = 512 * MIB  #: the same, per client
    read_timeout: float = 30.0  #: seconds a body may go without a byte (408)
    upload_timeout: float = 300.0  #: seconds a whole body may take to arrive (408)
    workers: int = 1  #: FHE computations at once (processes for ``serve``, threads for ``worker``)
    max_queue: int = 64  #: requests waiting for or in FHE work over all clients (503 beyond: retry)
    max_requests_per_client: int = 8  #: the same, per client (429 beyond)
    max_rows: int = 256  #: rows per request (413 beyond)
    run_timeout: float = 600.0  #: seconds one request may compute, queueing included (504 beyond)
    max_key_bytes: int = 8192 * MIB  #: evaluation keys kept, all clients (the least recently used go first)
    max_key_sets: int = 1024  #: key sets (``serve``) or sessions (``worker``) kept, all clients
    max_key_bytes_per_client: int = 2048 * MIB  #: evaluation keys one client may keep
    max_key_sets_per_client: int = 32  #: key sets or sessions one client may keep

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"the service limit {field.name} must be a positive number, got {value!r}")
        if self.max_payload_bytes > self.max_inflight_bytes:
            raise ValueError(
                f"max_payload_bytes ({self.max_payload_bytes}) exceeds max_inflight_bytes ({self.max_inflight_bytes}): "
                "no request of the largest size could ever be received; raise --max-inflight-mb"
            )

    def replace(self, **changes: Any) -> ServiceLimits:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def override(self, **overrides: Any) -> ServiceLimits:
        """A copy with the fields given as keywords (None leaves a field as it is); unknown names are a TypeError."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown service limit(s) {unknown}; the limits are {sorted(self.public())}")
        return self.replace(**{name: value for name, value in overrides.items() if value is not None})

    def public(self) -> dict[str, int | float]:
        """The limits as ``/health`` publishes them (clients read ``max_rows`` and ``max_payload_bytes``)."""
        return dataclasses.asdict(self)


#: the limits of ``veilml serve`` unless told otherwise (a tree key set is 20-60 MB; a row 0.1-2 s of work)
SERVE_LIMITS = ServiceLimits(max_rows=256, max_key_bytes=16384 * MIB, max_key_sets=1024)

# flag name, field, MiB?, help
_FLAGS: tuple[tuple[str, str, bool, str], ...] = (
    ("--max-payload-mb", "max_payload_bytes", True, "largest request body in MiB (HTTP 413 beyond)"),
    ("--max-inflight-mb", "max_inflight_bytes", True, "request-body MiB held at once over all requests (HTTP 503 beyond)"),
    ("--max-inflight-mb-per-client", "max_inflight_bytes_per_client", True, "request-body MiB one client may have in flight"),
    ("--read-timeout", "read_timeout", False, "seconds a request body may stall before it is dropped (HTTP 408)"),
    ("--upload-timeout", "upload_timeout", False, "seconds a whole request body may take to arrive (HTTP 408)"),
    ("--workers", "workers", False, "encrypted computations run at once"),
    ("--max-queue", "max_queue", False, "requests waiting for or in encrypted work, all clients (HTTP 503 beyond)"),
    ("--max-requests-per-client", "max_requests_per_client", False, "requests one client may have waiting or running"),
    ("--max-rows", "max_rows", False, "rows in one request (HTTP 413 beyond); clients split larger inputs"),
    ("--run-timeout", "run_timeout", False, "seconds one request may take, waiting included, before it is stopped (HTTP 504)"),
    ("--max-key-mb", "max_key_bytes", True, "MiB of evaluation keys kept for all clients (least recently used evicted)"),
    ("--max-key-sets", "max_key_sets", False, "key sets or sessions kept for all clients (least recently used evicted)"),
    ("--max-key-mb-per-client", "max_key_bytes_per_client", True, "MiB of evaluation keys one client may keep"),
    ("--max-key-sets-per-client", "max_key_sets_per_client", False, "key sets or sessions one client may keep"),
)


def positive(kind: type) -> Any:
    """An argparse type: a positive ``kind`` (int or float), or a message that says what came in."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value

    return parse


def add_limit_arguments(parser: argparse.ArgumentParser, defaults: ServiceLimits, aliases: dict[str, str] | None = None) -> None:
    """Add one flag per field of :class:`ServiceLimits` to ``parser``, with ``defaults`` shown.

    ``aliases`` maps a flag to an older name it also answers to (``--max-sessions`` for ``--max-key-sets``).
    """
    aliases = aliases or {}
    group = parser.add_argument_group("limits (published on GET /health)")
    for flag, field, in_mib, help_text in _FLAGS:
        value = getattr(defaults, field)
        kind = float if in_mib or isinstance(value, float) else int
        default = value / MIB if in_mib else value
        names = [flag, *([aliases[flag]] if flag in aliases else [])]
        group.add_argument(*names, dest=field, type=positive(kind), default=default, metavar="N", help=help_text)


def limits_from_args(args: argparse.Namespace) -> ServiceLimits:
    """The :class:`ServiceLimits` of parsed flags (MiB turned into bytes); ValueError names a bad combination."""
    values = {}
    for _, field, in_mib, _ in _FLAGS:
        value = getattr(args, field)
        values[field] = int(value * MIB) if in_mib else value
    return ServiceLimits(**values)
