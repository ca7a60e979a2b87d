"""Integers of a few bits each packed into a little-endian bit stream (numba kernels, compiled on first use).

Value ``i`` of a stream of ``bits``-bit values occupies bits ``i * bits`` to ``(i + 1) * bits - 1``, bit 0
being the lowest bit of the first byte. Uploads and results of the encrypted paths send residues of primes
of fewer than 64 bits this way instead of whole 64-bit words (the ``bfv`` LoRA engine's frames, the batched
tree path's seeded ciphertexts).
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["pack", "pack_values", "unpack", "unpack_values"]

_jit = nb.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)


@_jit
def pack(values: np.ndarray, bits: int, out: np.ndarray) -> None:
    """Non-negative ``values`` below 2**bits (bits <= 63) into ``out`` (uint8, at least ``ceil(size * bits / 8)``
    bytes, zeroed), ``bits`` bits each from bit 0 of a little-endian stream."""
    acc, held, at = np.uint64(0), 0, 0
    for i in range(values.size):
        v = np.uint64(values[i])
        acc |= v << np.uint64(held)
        held += bits
        if held >= 64:  # a whole word: write it, keep the value's bits that did not fit
            for k in range(8):
                out[at + k] = (acc >> np.uint64(8 * k)) & np.uint64(0xFF)
            at += 8
            held -= 64
            acc = (v >> np.uint64(bits - held)) if held > 0 else np.uint64(0)
    k = 0
    while held > 0:
        out[at + k] = (acc >> np.uint64(8 * k)) & np.uint64(0xFF)
        held -= 8
        k += 1


@_jit
def unpack(words: np.ndarray, bits: int, out: np.ndarray) -> None:
    """The values of :func:`pack` (``out.size`` of them) from its bytes read as little-endian uint64 ``words``,
    zero-padded by at least one word (:func:`unpack_values`); the caller checks the length.

    Value i starts at bit i * bits: the word holding that bit, and the next one when the value spills into it.
    """
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(out.size):
        bit = i * bits
        w, shift = bit >> 6, bit & 63
        value = words[w] >> np.uint64(shift)
        if shift + bits > 64:
            value |= words[w + 1] << np.uint64(64 - shift)
        out[i] = value & mask


def pack_values(values: np.ndarray, bits: int) -> bytes:
    """Non-negative integers below 2**bits (bits <= 63) as ``ceil(size * bits / 8)`` bytes."""
    flat = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    out = np.zeros(-(-flat.size * bits // 8), np.uint8)
    pack(flat, bits, out)
    return out.tobytes()


def unpack_values(data: bytes, count: int, bits: int, dtype: type = np.int64) -> np.ndarray:
    """The ``count`` values of :func:`pack_values` (int64, or ``dtype`` when they fit it); ValueError unless
    ``data`` has exactly their size."""
    size = -(-count * bits // 8)
    if len(data) != size:
        raise ValueError(f"expected {count} values of {bits} bits ({size} bytes), got {len(data)} bytes")
    words = np.zeros(size // 8 + 2, "<u8")  # whole little-endian words, one more than the data reaches
    words.view(np.uint8)[:size] = np.frombuffer(data, np.uint8)
    out = np.empty(count, dtype)
    unpack(words.astype(np.uint64, copy=False), bits, out)
    return out
