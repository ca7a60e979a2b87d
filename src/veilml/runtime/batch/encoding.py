"""What the client of the batched path encrypts: each feature's quantized code as bits, one row per slot.

Two encodings (:class:`BatchEncoding`), both independent of the model (every bit is encrypted and sent):

- ``thermometer``: ``[q >= k]`` for every code ``k = 1 .. 2**n_bits - 1``; every comparison a tree makes is
  then one of the encrypted bits, free.
- ``digits``: ``q = B h + l`` with ``B = 2**low_bits``, and the thermometer bits of each digit, ``[h >= a]`` and
  ``[l >= b]`` (``2**high_bits - 1 + 2**low_bits - 1`` bits: 14 instead of 63 at 6 bits); a comparison then costs
  one product (:mod:`veilml.models.trees.batch`).

Both the client (which encodes) and the server (whose programs read the bits) use this module.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["BatchEncoding", "bits_per_feature", "encode_codes", "split_bits"]


class BatchEncoding(enum.StrEnum):
    """How the client encodes each feature's code as encrypted bits (see the module docstring)."""

    THERMOMETER = "thermometer"
    DIGITS = "digits"


def split_bits(n_bits: int) -> tuple[int, int]:
    """(high, low) bits of the digits encoding: the low digit takes the larger half."""
    low = (n_bits + 1) // 2
    return n_bits - low, low


def bits_per_feature(encoding: BatchEncoding, n_bits: int) -> int:
    """Encrypted bits per feature of ``n_bits``-bit codes in ``encoding``."""
    if BatchEncoding(encoding) is BatchEncoding.THERMOMETER:
        return 2**n_bits - 1
    high, low = split_bits(n_bits)
    return 2**high - 1 + 2**low - 1


def encode_codes(codes: np.ndarray, encoding: BatchEncoding, n_bits: int) -> np.ndarray:
    """The encrypted inputs' bits (n_features * bits_per_feature, n_rows) uint8 of codes (n_rows, n_features)."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.size and (codes.min() < 0 or codes.max() >= 2**n_bits):
        raise ValueError(f"codes must be a 2-D array of integers in [0, {2**n_bits})")
    if BatchEncoding(encoding) is BatchEncoding.THERMOMETER:
        levels = np.arange(1, 2**n_bits)
        bits = codes[:, :, None] >= levels[None, None, :]  # (rows, features, levels)
    else:
        high, low = split_bits(n_bits)
        high_digit, low_digit = codes >> low, codes & (2**low - 1)
        bits = np.concatenate(
            [
                high_digit[:, :, None] >= np.arange(1, 2**high)[None, None, :],
                low_digit[:, :, None] >= np.arange(1, 2**low)[None, None, :],
            ],
            axis=2,
        )
    return np.ascontiguousarray(bits.reshape(codes.shape[0], -1).T.astype(np.uint8))
