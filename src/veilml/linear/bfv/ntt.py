"""Tables of the number-theoretic transforms of the ``bfv`` engine: roots of unity, twiddles, Shoup constants.

The transform of length T (a power of two, T <= N) modulo a prime p = 1 mod 2T is negacyclic: it evaluates a
polynomial a of degree < T at the odd powers of psi_T, a primitive 2T-th root of unity, in bit-reversed order,

    NTT_T(a)[k] = a(psi_T ** (2 brv(k) + 1)) mod p        (brv: the bit reversal of k on log2 T bits)

so that ``NTT_T(a * b mod (X**T + 1)) = NTT_T(a) NTT_T(b)`` slot by slot, and it is a bijection of
(Z/p)^T. psi_N is the *smallest* primitive 2N-th root of unity mod p (the root SEAL chooses, so that the
ring transform of length N is SEAL's NTT form, which the SEAL decryption test relies on) and
psi_T = psi_N ** (N / T).

Twiddles are laid out for the merged Cooley-Tukey forward and Gentleman-Sande inverse butterflies: entry k of
the forward table is psi_T ** brv(k), of the inverse table psi_T ** -brv(k). Each comes with its Shoup
constant floor(w 2**31 / p), so that ``w x mod p`` costs two 32 x 32-bit products and a shift for x < 2**31.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from veilml.linear.bfv.params import MODULI
from veilml.linear.bfv.planner import POLY_DEGREE
from veilml.runtime.ntt import bit_reverse, is_prime, minimal_root

__all__ = ["SHOUP_BITS", "Tables", "bit_reverse", "is_prime", "minimal_root", "shoup", "tables"]

SHOUP_BITS = 31


def shoup(w: np.ndarray, p: int) -> np.ndarray:
    """Shoup constants floor(w 2**31 / p) of twiddles w < p (int32)."""
    return ((np.asarray(w, dtype=np.int64) << SHOUP_BITS) // p).astype(np.int32)


def _powers(root: int, exponents: np.ndarray, p: int) -> np.ndarray:
    return np.array([pow(root, int(e), p) for e in exponents], dtype=np.int64)


@dataclass(frozen=True)
class Tables:
    """Twiddles of the transforms of length ``size`` for every prime: arrays (primes, size) of int32."""

    size: int
    moduli: np.ndarray  # (primes,) int64
    psi: tuple[int, ...]  # psi_T per prime
    forward: np.ndarray
    forward_shoup: np.ndarray
    inverse: np.ndarray
    inverse_shoup: np.ndarray
    scale: np.ndarray  # T**-1 mod p per prime (int32), applied by the inverse transform
    scale_shoup: np.ndarray


@lru_cache(maxsize=32)
def tables(size: int, moduli: tuple[int, ...] = MODULI) -> Tables:
    """The tables of the transforms of length ``size`` (a power of two, 2 <= size <= N) modulo each prime."""
    if size < 2 or size > POLY_DEGREE or size & (size - 1):
        raise ValueError(f"transform lengths are powers of two in [2, {POLY_DEGREE}], got {size}")
    bits = size.bit_length() - 1
    reversed_k = bit_reverse(np.arange(size), bits)
    rows: dict[str, list[np.ndarray]] = {"forward": [], "inverse": []}
    psis, scales = [], []
    for p in moduli:
        psi = pow(minimal_root(p, 2 * POLY_DEGREE), POLY_DEGREE // size, p)
        psis.append(psi)
        rows["forward"].append(_powers(psi, reversed_k, p))
        rows["inverse"].append(_powers(pow(psi, -1, p), reversed_k, p))
        scales.append(pow(size, -1, p))
    forward, inverse = np.stack(rows["forward"]), np.stack(rows["inverse"])
    moduli_array = np.array(moduli, dtype=np.int64)
    scale = np.array(scales, dtype=np.int64)
    return Tables(
        size,
        moduli_array,
        tuple(psis),
        forward.astype(np.int32),
        np.stack([shoup(row, p) for row, p in zip(forward, moduli)]),
        inverse.astype(np.int32),
        np.stack([shoup(row, p) for row, p in zip(inverse, moduli)]),
        scale.astype(np.int32),
        np.array([int(shoup(s, p)) for s, p in zip(scales, moduli)], dtype=np.int32),
    )
