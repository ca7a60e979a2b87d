"""The base of every exception veilml defines: ``except veilml.VeilmlError`` catches them all.

Each veilml exception also derives from the built-in a caller would expect (``ValueError`` for bad
input, ``RuntimeError`` for a failed computation, ...), as scikit-learn's ``NotFittedError(ValueError,
AttributeError)`` does, so existing ``except ValueError`` clauses keep working.
"""

from __future__ import annotations

__all__ = ["VeilmlError"]


class VeilmlError(Exception):
    """An error raised by veilml (see the subclasses for what went wrong and how to fix it)."""
