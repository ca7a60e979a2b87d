"""What the worker's HTTP service and its clients agree on, without importing either side's libraries."""

from __future__ import annotations

import re

__all__ = ["SECRET_HEADER", "SESSION_ID", "redact_path"]

#: the header that carries a session's secret (never the URL: URLs end up in logs)
SECRET_HEADER = "x-veilml-session-secret"

#: session ids are lowercase hex, 16 to 128 characters (the worker makes 32)
SESSION_ID = re.compile(r"[0-9a-f]{16,128}")

_SESSION_IN_PATH = re.compile(r"^/sessions/[^/]+")


def redact_path(path: str) -> str:
    """``path`` with its session id replaced by ``{session}`` (for logs and error messages)."""
    return _SESSION_IN_PATH.sub("/sessions/{session}", path)
