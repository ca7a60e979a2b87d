"""Coefficient encoding of ``x @ W`` blocks (Cheetah, Huang et al. 2022; BumbleBee, Lu et al. 2023), and bit packing.

For a block shape (n_t, n_d, n_m) with n_t n_d n_m = N, an (n_t, n_d) block X of rows and an (n_d, n_m)
block W of weights become the polynomials

    x(X) = sum_{i, k} X[i, k] X^(i n_d n_m + k)        w(X) = sum_{k, j} W[k, j] X^(j n_d + n_d - 1 - k)

and the coefficient of x * w in Z[X] / (X^N + 1) at ``i n_d n_m + j n_d + n_d - 1`` is ``sum_k X[i, k] W[k, j]``:
another pair (k', j') reaches that degree only with k' = k and j' = j, and the terms that wrap around
X^N land below degree n_d - 1, never on an output. So one ciphertext-plaintext product gives n_t n_m
dot products, and the products of the J inner blocks add up.
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode_rows", "encode_weights", "output_positions", "pack_bits", "switch_modulus", "unpack_bits"]


def encode_rows(x: np.ndarray, n_t: int, n_d: int, n_m: int) -> np.ndarray:
    """Rows (n, d) as polynomials (R, J, N) uint64: block (r, j) holds rows r n_t.. and columns j n_d.."""
    n, d = x.shape
    r, j = -(-n // n_t), -(-d // n_d)
    padded = np.zeros((r * n_t, j * n_d), np.uint64)
    padded[:n, :d] = x
    blocks = padded.reshape(r, n_t, j, n_d).transpose(0, 2, 1, 3)  # (R, J, n_t, n_d)
    polys = np.zeros((r, j, n_t, n_d * n_m), np.uint64)
    polys[..., :n_d] = blocks
    return polys.reshape(r, j, n_t * n_d * n_m)


def encode_weights(w: np.ndarray, n_t: int, n_d: int, n_m: int, t: int) -> np.ndarray:
    """A matrix (d, m) as polynomials (J, C, N) uint64 with coefficients mod t (negative weights as t + w)."""
    d, m = w.shape
    j, c = -(-d // n_d), -(-m // n_m)
    padded = np.zeros((j * n_d, c * n_m), np.int64)
    padded[:d, :m] = w
    blocks = padded.reshape(j, n_d, c, n_m).transpose(0, 2, 3, 1)[..., ::-1]  # (J, C, n_m, n_d), k reversed
    polys = np.zeros((j, c, n_t * n_d * n_m), np.int64)
    polys[..., : n_d * n_m] = blocks.reshape(j, c, n_m * n_d)
    return np.mod(polys, t).astype(np.uint64)


def output_positions(n_t: int, n_d: int, n_m: int) -> np.ndarray:
    """Coefficient index of output (i, j) of a block, flattened row-major over (n_t, n_m)."""
    i, j = np.meshgrid(np.arange(n_t), np.arange(n_m), indexing="ij")
    return (i * n_d * n_m + j * n_d + n_d - 1).reshape(-1)


def switch_modulus(values: np.ndarray, q: int, bits: int) -> np.ndarray:
    """``floor((values * 2**(bits+1) + q) / (2 q))`` (rounding to nearest) mod 2**bits, exactly, for values in [0, q).

    A float64 estimate is corrected with the exact residual ``values * 2**bits - y q``, which is small
    and so exact in wrapping 64-bit arithmetic (q < 2**54, bits <= 48: the estimate is off by at most one).
    """
    v = np.asarray(values, dtype=np.uint64)
    y = np.rint(v.astype(np.float64) * (2.0**bits / q)).astype(np.uint64)
    with np.errstate(over="ignore"):
        residual = ((v << np.uint64(bits)) - y * np.uint64(q)).view(np.int64)  # exact: |residual| < 2**63
    for _ in range(2):  # the estimate is off by at most one
        up, down = 2 * residual >= q, 2 * residual < -q
        y[up] += np.uint64(1)
        residual[up] -= q
        y[down] -= np.uint64(1)
        residual[down] += q
    return y & np.uint64((1 << bits) - 1)


CHUNK = 1 << 16  # values per step of the bit packing (bounds its temporary memory to 4 MiB)


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers below 2**bits, ``bits`` bits each, little-endian bit order, the last byte zero-padded."""
    flat = np.ascontiguousarray(values, dtype="<u8").reshape(-1)
    planes = np.empty((flat.size, bits), np.uint8)
    for start in range(0, flat.size, CHUNK):  # the 64 bits of each value, of which the low ``bits`` are kept
        part = flat[start : start + CHUNK].view(np.uint8).reshape(-1, 8)
        planes[start : start + CHUNK] = np.unpackbits(part, axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, count: int, bits: int) -> np.ndarray:
    """The ``count`` values of :func:`pack_bits`; ValueError unless ``data`` has exactly their size."""
    if len(data) != -(-count * bits // 8):
        raise ValueError(f"expected {count} values of {bits} bits ({-(-count * bits // 8)} bytes), got {len(data)} bytes")
    planes = np.unpackbits(np.frombuffer(data, np.uint8), count=count * bits, bitorder="little").reshape(count, bits)
    out = np.empty(count, "<u8")
    for start in range(0, count, CHUNK):
        part = planes[start : start + CHUNK]
        wide = np.zeros((part.shape[0], 64), np.uint8)
        wide[:, :bits] = part
        out[start : start + CHUNK] = np.packbits(wide, axis=1, bitorder="little").view("<u8").reshape(-1)
    return out.astype(np.uint64)
