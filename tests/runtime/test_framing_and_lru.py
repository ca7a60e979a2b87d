"""The one framing of byte strings (runtime.envelope's batch) and the one LRU cache (runtime.lru)."""

from __future__ import annotations

import struct

import pytest

from veilml.linear.base import pack_frames, unpack_frames
from veilml.runtime.envelope import BATCH_MAGIC, EnvelopeError, batch_bytes, pack_batch, unpack_batch
from veilml.runtime.lru import LRUCache


def test_linear_frames_are_the_envelope_batch():
    frames = [b"", b"header", bytes(300)]
    assert pack_frames(frames) == pack_batch(frames)
    assert unpack_frames(pack_batch(frames)) == frames
    assert unpack_frames(pack_frames([])) == []  # a message may be empty, a tree batch may not
    with pytest.raises(EnvelopeError, match="no rows"):
        unpack_batch(pack_batch([]), max_items=4)
    assert len(pack_batch(frames)) == batch_bytes(3, 0) + sum(map(len, frames))


def test_a_count_its_bytes_cannot_hold_is_refused_before_reading():
    forged = BATCH_MAGIC + struct.pack(">HI", 1, 2**32 - 1) + bytes(64)
    with pytest.raises(EnvelopeError, match="announces 4294967295 frames, more than its 78 bytes can hold"):
        unpack_frames(forged, max_frames=2**32)
    with pytest.raises(EnvelopeError, match="more than the limit of 1048576"):
        unpack_frames(forged)


def test_lru_drops_the_least_recently_used():
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and list(cache) == ["a", "c"] and len(cache) == 2
    assert cache.get("b") is None
    with pytest.raises(ValueError, match="at least one entry"):
        LRUCache(0)
