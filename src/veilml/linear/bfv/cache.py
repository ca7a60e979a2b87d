"""The ``bfv`` worker's encoded weights (both engines): the backend-wide byte budget and each server's cache.

Weights encoded for products (SEAL plaintexts in NTT form, or the numba engine's transformed weight blocks)
take several times the bytes of the clear weights, and encoding them costs about as much as the products of
a few rows (each engine's :class:`~.planner.CostModel`). So a worker keeps, for each matrix, the encoded
weights of the block shapes the planner uses for few rows per block (:func:`~.planner.cached_shape`), within
one budget shared by all its matrices (:class:`WeightBudget`), and never evicts them (:class:`WeightCache`):
an honest client's shapes stay encoded whatever other clients send. Shapes outside the cache are encoded
per request (:class:`EncodedColumns` shared by concurrent requests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from veilml.linear.bfv.planner import MAX_CACHED_ROWS

__all__ = ["DEFAULT_WEIGHT_CACHE_BYTES", "EncodedColumns", "WeightBudget", "WeightCache"]

#: memory a worker may spend on weights kept encoded: for cached rows r, one block shape per n_t in 1, 2, 4 .. r
#: (each engine's size per shape: :meth:`~.planner.CostModel.weight_bytes`); what does not fit is encoded again
#: for every request
DEFAULT_WEIGHT_CACHE_BYTES = 2 << 30


@dataclass
class WeightBudget:
    """Bytes of encoded weights the servers of one backend may keep: ``used`` never exceeds ``limit``.

    Every server announces its cache size as a function of its cached rows when it is made; at its first
    ``setup()`` (once the worker has made them all), each reserves the largest cached rows <= MAX_CACHED_ROWS
    (a power of two) at which every announced server's cache fits, if its own still fits what is left. If
    not even 1 fits for all, the first matrices to ask take 1 while the budget lasts, the others keep
    nothing (their weights are encoded per request).
    """

    limit: int
    used: int = 0
    _sizes: list[Callable[[int], int]] = field(default_factory=list, repr=False)
    _totals: dict[int, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def announce(self, size: Callable[[int], int]) -> None:
        """Count a server whose cache takes ``size(cached_rows)`` bytes."""
        with self._lock:
            self._sizes.append(size)
            self._totals.clear()

    def reserve(self, size: Callable[[int], int]) -> int:
        """The cached rows of a server whose cache takes ``size(rows)`` bytes; its bytes are reserved."""
        with self._lock:
            rows = MAX_CACHED_ROWS
            while rows >= 1:
                if rows not in self._totals:
                    self._totals[rows] = sum(announced(rows) for announced in self._sizes)
                if self._totals[rows] <= self.limit and self.used + size(rows) <= self.limit:
                    break
                rows //= 2
            if rows < 1:
                rows = 1 if self.used + size(1) <= self.limit else 0
            self.used += size(rows) if rows else 0
            return rows


class EncodedColumns:
    """The weight plaintexts of one block shape, column block by column block, encoded on first use (thread-safe).

    ``keep(column)`` decides whether an encoded column is kept (the cache's budget); a column not kept is
    encoded again when asked for again.
    """

    def __init__(self, count: int, encode: Callable[[int], Any], keep: Callable[[Any], bool]) -> None:
        self._columns: list[Any] = [None] * count
        self._encode, self._keep = encode, keep
        self._lock = threading.Lock()

    def __getitem__(self, c: int) -> Any:
        found = self._columns[c]
        if found is None:
            with self._lock:  # one encoding of a column at a time: concurrent requests wait for it, never copy it
                found = self._columns[c]
                if found is None:
                    found = self._encode(c)
                    if self._keep(found):
                        self._columns[c] = found
        return found


class WeightCache:
    """The encoded weights one server keeps: one block shape per n_t <= its cached rows, never evicted.

    The planner uses only these shapes for n_t <= cached rows, so every request of those shapes finds its
    weights here once encoded, whatever row counts other clients send (nothing to thrash). ``held`` (bytes
    of coefficients kept) never exceeds ``limit`` (what the server reserved in its backend's budget: the
    size of every shape's encoded weights); ``encoded`` counts the column blocks ever encoded into it.
    ``size_of(column)`` is the bytes an encoded column holds.
    """

    def __init__(self, limit: int, size_of: Callable[[Any], int]) -> None:
        self.limit, self.held, self.encoded = limit, 0, 0
        self._size_of = size_of
        self.shapes: dict[tuple[int, int, int], EncodedColumns] = {}
        self._lock = threading.Lock()

    def columns(self, shape: tuple[int, int, int], count: int, encode: Callable[[int], Any]) -> EncodedColumns:
        with self._lock:
            if shape not in self.shapes:
                self.shapes[shape] = EncodedColumns(count, encode, self._keep)
            return self.shapes[shape]

    def _keep(self, column: Any) -> bool:
        size = self._size_of(column)
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            self.encoded += 1
            return True
