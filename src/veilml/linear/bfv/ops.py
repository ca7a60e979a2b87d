"""The array operations of one ``bfv`` product, on the numba kernels (CPU) or the torch ones (CPU or CUDA).

The worker's products (:mod:`.product`) are a few operations on arrays of residues, the prime
axis first (T is :func:`~.params.transform_size`; a polynomial is cut into ``chunks`` = n_t pieces, one
for n_t = 1):

- ``weights(blocks, n_t)``: signed weight polynomials (J, C, L) -> their transforms W (primes, T, J, C);
  ``matrix_weights(matrix, n_d, n_m, n_t)`` the same from the matrix (:func:`~.encoding.weight_blocks`'s blocks);
- ``matmul_mod(rows, matrix, limbs)``: residues (primes, n, d) times a clear matrix (d, m), mod each prime:
  the first polynomials' products (:mod:`.product`);
- ``load(coefficients, n_t)``: polynomials' residues (primes, N, J) -> the transforms of their chunks
  X (primes, T, chunks, J); ``load_uniform(a_hat, n_t)`` the same for polynomials given in the ring's
  transform domain (the session's uniform ones; for n_t = 1 used as they come);
- ``multiply(X, W)``: Y[r, s] = X[r, s] @ W[r, s] mod p, slot by slot (the GEMM);
- ``residues(Y, n_t)``: back from the transform domain, chunks added up negacyclically: (primes, polys, C, N);
- ``finish(Y, n_t, indices, bits)``: the coefficients ``indices`` of the C result polynomials CRT'd to [0, q)
  and switched to q' = 2**bits: (C, len(indices)) int64 on the CPU, ready to pack.

:class:`NumbaKernels` runs them with :mod:`.kernels` on :mod:`.threads`; ``TorchKernels``
(:mod:`.kernels_torch`) with torch on any device. :func:`kernel_set` picks one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veilml.linear.bfv.ntt import tables
from veilml.linear.bfv.params import MODULI, transform_size
from veilml.linear.bfv.planner import POLY_DEGREE
from veilml.linear.bfv.threads import split

__all__ = ["INVERSE_P1", "NumbaKernels", "kernel_set"]

INVERSE_P1 = pow(MODULI[0], -1, MODULI[1])
_PRIMES = np.array(MODULI, dtype=np.int64)
_LOW = 14  # bits of a residue's low limb in matmul_mod


def _kernels() -> Any:
    from veilml.linear.bfv import kernels

    return kernels


class NumbaKernels:
    """The operations of the module docstring with the numba kernels, split across :func:`~.threads.threads`."""

    name = "numba"
    device = "cpu"

    def forward(self, a: np.ndarray, size: int) -> None:
        """In place: transforms of length ``size`` of every column of ``a`` (primes, size, B)."""
        k, table, view = _kernels(), tables(size), a.reshape(len(MODULI), size, -1)
        split(
            view.shape[2],
            lambda lo, hi: k.forward(view, lo, hi, table.forward, table.forward_shoup, table.moduli),
            minimum=8,
        )

    def inverse(self, a: np.ndarray, size: int) -> None:
        """In place: inverse transforms (T**-1 included) of every column of ``a`` (primes, size, B)."""
        k, t, view = _kernels(), tables(size), a.reshape(len(MODULI), size, -1)
        split(
            view.shape[2],
            lambda lo, hi: k.inverse(view, lo, hi, t.inverse, t.inverse_shoup, t.moduli, t.scale, t.scale_shoup),
            minimum=8,
        )

    def weights(self, blocks: np.ndarray, n_t: int) -> np.ndarray:
        size = transform_size(n_t)
        out = np.empty((len(MODULI), size, blocks.shape[0], blocks.shape[1]), np.int32)
        _kernels().scatter_weights(np.ascontiguousarray(blocks, dtype=np.int64), out, _PRIMES)
        self.forward(out, size)
        return out

    def matrix_weights(self, matrix: np.ndarray, n_d: int, n_m: int, n_t: int) -> np.ndarray:
        """``weights(weight_blocks(matrix, n_d, n_m), n_t)``, read straight from the matrix (on every thread)."""
        size, (d, m) = transform_size(n_t), matrix.shape
        out = np.empty((len(MODULI), size, -(-d // n_d), -(-m // n_m)), np.int32)
        split(size, lambda lo, hi: _kernels().matrix_weights(matrix, n_d, n_m, out, _PRIMES, lo, hi))
        self.forward(out, size)
        return out

    def load(self, coefficients: np.ndarray, n_t: int) -> np.ndarray:
        k, size, chunks = _kernels(), transform_size(n_t), 1 if n_t == 1 else n_t
        x = np.empty((len(MODULI), size, chunks, coefficients.shape[2]), np.int32)
        k.scatter(coefficients, x, chunks, 0)
        self.forward(x, size)
        return x

    def load_uniform(self, a_hat: np.ndarray, n_t: int) -> np.ndarray:
        if n_t == 1:  # the ring's own transform: the polynomials arrive in it
            return np.ascontiguousarray(a_hat, dtype=np.int32).reshape(len(MODULI), POLY_DEGREE, 1, -1)
        coefficients = np.array(a_hat, dtype=np.int32, order="C")
        self.inverse(coefficients, POLY_DEGREE)
        return self.load(coefficients, n_t)

    def matmul_mod(self, rows: np.ndarray, matrix: np.ndarray, limbs: int) -> np.ndarray:
        """``rows[prime] @ matrix mod p`` for residues rows (primes, n, d) and integers (d, m): (primes, n, m) int64.

        float64 products (BLAS) whose sums are exact: ``limbs`` = 1 when d (p - 1) max|w| < 2**53, else each residue in
        two limbs of 14 and 13 bits (:func:`~.product.limbs_for`).
        """
        primes, n, d = rows.shape
        w = np.asarray(matrix, dtype=np.float64)
        x = rows.reshape(primes * n, d)
        if limbs == 1:
            parts = [(x.astype(np.float64) @ w).astype(np.int64).reshape(primes, n, -1)]
        else:
            low, high = (x & ((1 << _LOW) - 1)).astype(np.float64), (x >> _LOW).astype(np.float64)
            parts = [(part @ w).astype(np.int64).reshape(primes, n, -1) for part in (low, high)]
        out = parts[0] % _PRIMES[:, None, None]
        if limbs > 1:
            out = (out + ((parts[1] % _PRIMES[:, None, None]) << _LOW)) % _PRIMES[:, None, None]
        return out

    def multiply(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], x.shape[1], x.shape[2], w.shape[3]), np.int32)
        split(x.shape[1], lambda lo, hi: _kernels().gemm(x, w, out, _PRIMES, lo, hi))
        return out

    def residues(self, y: np.ndarray, n_t: int) -> np.ndarray:
        chunks = 1 if n_t == 1 else n_t
        self.inverse(y, y.shape[1])
        out = np.empty((len(MODULI), y.shape[2] // chunks, y.shape[3], POLY_DEGREE), np.int32)
        split(y.shape[3], lambda lo, hi: _kernels().overlap_add(y, chunks, _PRIMES, out, lo, hi))
        return out

    def finish(self, y: np.ndarray, n_t: int, indices: np.ndarray, bits: int) -> np.ndarray:
        res = self.residues(y, n_t)[:, 0]  # (primes, C, N)
        out = np.empty((res.shape[1], indices.size), np.int64)
        split(
            res.shape[1],
            lambda lo, hi: _kernels().crt_switch(res[:, lo:hi], indices, _PRIMES, INVERSE_P1, bits, out[lo:hi]),
        )
        return out

    def to_numpy(self, a: Any) -> np.ndarray:
        return a


def kernel_set(kernels: str = "numba", device: str = "cpu") -> Any:
    """The operations on ``kernels`` ("numba": CPU only; "torch": any torch ``device``, e.g. "cuda")."""
    if kernels == "numba":
        if device != "cpu":
            raise ValueError(f"the numba kernels run on the CPU; use kernels='torch' for device {device!r}")
        return NumbaKernels()
    if kernels == "torch":
        from veilml.linear.bfv.kernels_torch import TorchKernels

        return TorchKernels(device)
    raise ValueError(f"unknown bfv kernels {kernels!r}; choose 'numba' (CPU) or 'torch' (CPU or CUDA)")
