"""Negacyclic number-theoretic transforms in SEAL's NTT form, for primes below 2**62 (numba kernels).

For a prime p = 1 mod 2N, the transform of a polynomial a of degree < N evaluates it at the odd powers of psi,
the *smallest* primitive 2N-th root of unity mod p (SEAL's choice), in bit-reversed order:

    NTT(a)[k] = a(psi ** (2 brv(k) + 1)) mod p        (brv: bit reversal on log2 N bits)

so that ``NTT(a * b mod (X**N + 1)) = NTT(a) NTT(b)`` slot by slot. This is the layout SEAL keeps keys in and
uses for batching (:mod:`veilml.runtime.batch.encrypt` relies on both; its tests check them against SEAL).

Products ``w x mod p`` use Shoup's method with 64-bit constants floor(w 2**64 / p): the high word of a 64 x 64-bit
product (four 32-bit products) estimates the quotient, and the remainder is exact in wrapping unsigned 64-bit
arithmetic. Forward: Cooley-Tukey butterflies with twiddles psi ** brv(k); inverse: Gentleman-Sande with
psi ** -brv(k), then a multiplication by N**-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np

__all__ = ["Tables64", "bit_reverse", "forward", "inverse", "is_prime", "minimal_root", "mul_rows", "shoup64", "tables64"]

_jit = nb.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (the first 13 primes as bases)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for b in bases:
        if n % b == 0:
            return n == b
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for b in bases:
        x = pow(b, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def minimal_root(p: int, order: int) -> int:
    """The smallest primitive ``order``-th root of unity mod the prime p (order a power of two dividing p - 1)."""
    if (p - 1) % order:
        raise ValueError(f"{p} - 1 is not a multiple of {order}")
    for g in range(2, p):
        root = pow(g, (p - 1) // order, p)
        if pow(root, order // 2, p) == p - 1:  # of order exactly ``order``
            break
    else:  # pragma: no cover - a prime 1 mod order always has one
        raise ValueError(f"no primitive {order}-th root mod {p}")
    # the odd powers of a primitive root are the primitive roots: the smallest one, in steps of root**2
    step, best, power = root * root % p, root, root
    for _ in range(order // 2 - 1):
        power = power * step % p
        best = min(best, power)
    return best


def bit_reverse(k: np.ndarray, bits: int) -> np.ndarray:
    """The bit reversal of each entry of ``k`` on ``bits`` bits."""
    k = np.asarray(k, dtype=np.int64)
    out = np.zeros_like(k)
    for b in range(bits):
        out |= ((k >> b) & 1) << (bits - 1 - b)
    return out


@dataclass(frozen=True)
class Tables64:
    """Twiddles of the length-N transforms modulo each prime: arrays (primes, N) of uint64 with Shoup constants."""

    n: int
    moduli: np.ndarray  # (primes,) uint64
    forward: np.ndarray
    forward_shoup: np.ndarray
    inverse: np.ndarray
    inverse_shoup: np.ndarray
    scale: np.ndarray  # N**-1 mod p, (primes,) uint64
    scale_shoup: np.ndarray


def shoup64(w: np.ndarray, p: int) -> np.ndarray:
    """Shoup constants floor(w 2**64 / p) of values w < p (uint64)."""
    return np.array([(v << 64) // p for v in np.asarray(w, dtype=np.uint64).reshape(-1).tolist()], dtype=np.uint64).reshape(
        np.shape(w)
    )


def _powers(root: int, exponents: np.ndarray, p: int) -> np.ndarray:
    """root ** e mod p for each exponent (e < len(exponents)): every power once, then gathered."""
    powers, value = [], 1
    for _ in range(len(exponents)):
        powers.append(value)
        value = value * root % p
    return np.array(powers, dtype=np.uint64)[exponents]


@lru_cache(maxsize=16)
def tables64(n: int, moduli: tuple[int, ...]) -> Tables64:
    """The transforms' tables of length ``n`` (a power of two) modulo each prime (p = 1 mod 2n, p < 2**62)."""
    if n < 2 or n & (n - 1):
        raise ValueError(f"transform lengths are powers of two, got {n}")
    for p in moduli:
        if not 2 < p < 1 << 62 or (p - 1) % (2 * n):
            raise ValueError(f"{p} is not a prime below 2**62 that is 1 mod {2 * n}")
    reversed_k = bit_reverse(np.arange(n), n.bit_length() - 1)
    forward, inverse, scale = [], [], []
    for p in moduli:
        psi = minimal_root(p, 2 * n)
        forward.append(_powers(psi, reversed_k, p))
        inverse.append(_powers(pow(psi, -1, p), reversed_k, p))
        scale.append(pow(n, -1, p))
    f, i = np.stack(forward), np.stack(inverse)
    s = np.array(scale, dtype=np.uint64)
    return Tables64(
        n,
        np.array(moduli, dtype=np.uint64),
        f,
        np.stack([shoup64(row, p) for row, p in zip(f, moduli)]),
        i,
        np.stack([shoup64(row, p) for row, p in zip(i, moduli)]),
        s,
        np.array([int(shoup64(np.array([v]), p)[0]) for v, p in zip(scale, moduli)], dtype=np.uint64),
    )


@_jit
def _mulhi(a: np.uint64, b: np.uint64) -> np.uint64:
    """The high 64 bits of the 128-bit product a b."""
    a0, a1, b0, b1 = a & _M32, a >> _S32, b & _M32, b >> _S32
    p00, p01, p10 = a0 * b0, a0 * b1, a1 * b0
    mid = (p00 >> _S32) + (p01 & _M32) + (p10 & _M32)
    return a1 * b1 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32)


@_jit
def _mul_shoup(x: np.uint64, w: np.uint64, w_shoup: np.uint64, p: np.uint64) -> np.uint64:
    """w x mod p for any 64-bit x (w < p, w_shoup = floor(w 2**64 / p))."""
    r = w * x - _mulhi(w_shoup, x) * p  # in [0, 2p): wrapping arithmetic is exact here
    return r - p if r >= p else r


@_jit
def forward(a: np.ndarray, w: np.ndarray, w_shoup: np.ndarray, p: np.uint64) -> None:
    """In place: the columns of ``a`` (N, B) uint64 in [0, p), each a polynomial's coefficients, to SEAL's NTT
    form (Harvey's lazy butterflies: values stay below 4p inside, p < 2**62; the inner loop runs along the
    columns with one twiddle, which the compiler vectorizes)."""
    n, p2 = a.shape[0], p + p
    t, m = n, 1
    while m < n:
        t >>= 1
        for i in range(m):
            j1 = 2 * i * t
            wi, ws = w[m + i], w_shoup[m + i]
            for j in range(j1, j1 + t):
                x, y = a[j], a[j + t]
                for b in range(a.shape[1]):
                    u = x[b]
                    u = u - p2 if u >= p2 else u
                    v = wi * y[b] - _mulhi(ws, y[b]) * p  # in [0, 2p)
                    x[b] = u + v
                    y[b] = u + p2 - v
        m <<= 1
    for j in range(n):
        x = a[j]
        for b in range(a.shape[1]):
            v = x[b] - p2 if x[b] >= p2 else x[b]
            x[b] = v - p if v >= p else v


@_jit
def inverse(a: np.ndarray, w: np.ndarray, w_shoup: np.ndarray, scale: np.uint64, scale_shoup: np.uint64, p: np.uint64) -> None:
    """In place: the columns of ``a`` (N, B) in SEAL's NTT form, in [0, p), back to coefficients (lazy: values
    below 2p inside)."""
    n, p2 = a.shape[0], p + p
    t, m = 1, n
    while m > 1:
        h, j1 = m >> 1, 0
        for i in range(h):
            wi, ws = w[h + i], w_shoup[h + i]
            for j in range(j1, j1 + t):
                x, y = a[j], a[j + t]
                for b in range(a.shape[1]):
                    u, v = x[b], y[b]
                    s = u + v
                    x[b] = s - p2 if s >= p2 else s
                    d = u + p2 - v
                    y[b] = wi * d - _mulhi(ws, d) * p
            j1 += 2 * t
        t <<= 1
        m = h
    for j in range(n):
        x = a[j]
        for b in range(a.shape[1]):
            x[b] = _mul_shoup(x[b], scale, scale_shoup, p)


@_jit
def mul_rows(a: np.ndarray, s: np.ndarray, s_shoup: np.ndarray, p: np.uint64) -> None:
    """In place: ``a[j, :] *= s[j] mod p`` (a (N, B) in the transform domain, s fixed with its Shoup constants)."""
    for j in range(a.shape[0]):
        x, sj, sh = a[j], s[j], s_shoup[j]
        for b in range(a.shape[1]):
            x[b] = _mul_shoup(x[b], sj, sh, p)
