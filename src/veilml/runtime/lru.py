"""The one least-recently-used cache of veilml: :class:`LRUCache`.

Deserialized evaluation keys (:class:`~veilml.runtime.server.FHEServer`) and loaded circuits (the
isolated children of :mod:`veilml.linear.concrete`) are expensive to make and large to hold, so each
is kept in a bounded cache that drops the entry used longest ago.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """At most ``capacity`` entries; reading or adding one makes it the most recent, and adding one past
    ``capacity`` drops the least recent. Each call holds a lock, so threads may share one cache."""

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"an LRU cache holds at least one entry, got capacity {capacity!r}")
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recent), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` as the most recent entry, dropping the least recent beyond capacity."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached now (it does not count as a use)."""
        with self._lock:
            return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """The keys, least recently used first (a snapshot: iterating does not count as a use)."""
        with self._lock:
            return iter(list(self._entries))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
