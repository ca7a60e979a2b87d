"""Pure-numpy (and Python-integer) references of the ``bfv`` engine's kernels, for the tests.

Each reference computes what a kernel of :mod:`.kernels` promises from its definition, not from its
algorithm: transforms by evaluating polynomials at roots of unity, products by schoolbook multiplication in
Z[X] / (X**N + 1), the CRT and the switch with Python integers. Slow and exact; never used by the engine.
"""

from __future__ import annotations

import numpy as np

from veilml.linear.bfv.ntt import bit_reverse, tables

__all__ = [
    "cbd_reference",
    "crt_reference",
    "gemm_reference",
    "intt_reference",
    "negacyclic_reference",
    "ntt_reference",
    "switch_reference",
    "uniform_reference",
]

_LIMB = 14


def _matvec(matrix: np.ndarray, vectors: np.ndarray, p: int) -> np.ndarray:
    """``matrix @ vectors mod p`` exactly in int64 (entries below 2**27, at most 4096 terms): 14-bit limbs of vectors."""
    low, high = vectors & ((1 << _LIMB) - 1), vectors >> _LIMB
    return ((matrix @ low) % p + (((matrix @ high) % p) << _LIMB)) % p


def _evaluation(size: int, p: int, psi: int, sign: int) -> np.ndarray:
    """(size, size): entry (k, j) = psi ** (sign (2 brv(k) + 1) j) mod p."""
    exponents = (2 * bit_reverse(np.arange(size), size.bit_length() - 1) + 1)[:, None] * np.arange(size)[None, :]
    root = psi if sign > 0 else pow(psi, -1, p)
    powers = np.array([pow(root, e, p) for e in range(2 * size)], dtype=np.int64)  # psi has order 2 size
    return powers[exponents % (2 * size)]


def ntt_reference(a: np.ndarray, prime: int, size: int) -> np.ndarray:
    """The transform of length ``size`` of the rows ``a[..., size]`` modulo MODULI[prime], by its definition."""
    table = tables(size)
    p, psi = int(table.moduli[prime]), table.psi[prime]
    flat = np.asarray(a, dtype=np.int64).reshape(-1, size) % p
    return _matvec(_evaluation(size, p, psi, 1), flat.T, p).T.reshape(np.shape(a))


def intt_reference(a: np.ndarray, prime: int, size: int) -> np.ndarray:
    """The inverse of :func:`ntt_reference` (T**-1 included)."""
    table = tables(size)
    p, psi = int(table.moduli[prime]), table.psi[prime]
    flat = np.asarray(a, dtype=np.int64).reshape(-1, size) % p
    out = _matvec(_evaluation(size, p, psi, -1).T, flat.T, p).T
    return (out * pow(size, -1, p) % p).reshape(np.shape(a))


def negacyclic_reference(a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
    """``a * b mod (X**N + 1, modulus)`` with Python integers (object array); b may be sparse."""
    a = np.asarray(a).astype(object)
    out = np.zeros(len(a), dtype=object)
    for i in np.flatnonzero(np.asarray(b)):  # X**i a: shifted up by i, the wrapped coefficients negated
        out += int(b[i]) * np.concatenate([-a[len(a) - i :], a[: len(a) - i]])
    return out % modulus


def gemm_reference(x: np.ndarray, w: np.ndarray, prime_moduli: np.ndarray) -> np.ndarray:
    """``x[r, s] @ w[r, s] mod p[r]`` with Python integers."""
    out = np.einsum("rsmj,rsjc->rsmc", x.astype(object), w.astype(object))
    return (out % np.asarray(prime_moduli, dtype=object)[:, None, None, None]).astype(np.int64)


def crt_reference(residues: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """The integers in [0, p1 p2) with the residues ``residues[prime, ...]`` (object array)."""
    p1, p2 = moduli
    low, high = residues[0].astype(object), residues[1].astype(object)
    return low + p1 * (((high - low) * pow(p1, -1, p2)) % p2)


def switch_reference(values: np.ndarray, q: int, bits: int) -> np.ndarray:
    """``floor((v 2**(bits+1) + q) / (2 q)) mod 2**bits`` for each integer v (rounding half up)."""
    return np.array([((int(v) << (bits + 1)) + q) // (2 * q) % 2**bits for v in np.ravel(values)], dtype=np.int64).reshape(
        np.shape(values)
    )


def uniform_reference(stream: bytes, p: int, count: int) -> list[int] | None:
    """The first ``count`` values of a stream: little-endian 32-bit words, low 27 bits, kept when below p."""
    words = np.frombuffer(stream[: len(stream) // 4 * 4], dtype="<u4").astype(np.int64) & ((1 << 27) - 1)
    kept = [int(v) for v in words if v < p]
    return kept[:count] if len(kept) >= count else None


def cbd_reference(words: np.ndarray) -> np.ndarray:
    """popcount of bits 0..20 minus popcount of bits 21..41 of each int64 word."""
    words = np.asarray(words, dtype=np.int64)
    bits = (words[..., None] >> np.arange(42)) & 1
    return bits[..., :21].sum(-1) - bits[..., 21:].sum(-1)
