"""One validated ``bfv`` request as units of work: column tiles of one matrix product, the session's hint, the result.

:meth:`~.backend.BFVServer.work` checks a request and hands the checked pieces to a :class:`RNSProduct`. The
engine's block shapes hold one column per weight polynomial (n_m = 1, n_t n_d = N: :class:`~.params.RNSCosts`),
so ciphertext (r, j) holds rows r n_t .. and columns j n_d .. of the input, coefficient i n_d + k for entry
(i, k), and a result ciphertext (r, c) the n_t outputs of column c at coefficients i n_d + n_d - 1. A
ciphertext is ``(c0, a_j)``: c0 travels, a_j is the session's public uniform polynomial of inner block j
(:mod:`.prg`), the same in every row block and request, each row block under its own fresh secret
(:mod:`.keys`). So the products split in two:

- ``c0 * W`` at the output coefficients: the coefficient of degree i n_d + n_d - 1 of ``c0_{r,j} w_{j,c}`` is
  ``sum_k c0_{r,j}[i n_d + k] W[j n_d + k, c]`` (no other pair of degrees reaches it, and nothing wraps past
  X**N), so the first polynomials of every result are one matrix product: the c0 coefficients laid out as
  an (R n_t, J n_d) matrix, times W, mod p1 and mod p2. Its sums are exact in float64 (27-bit residues, or
  two limbs of them, times the weights: :func:`limbs_for`), so the worker multiplies with BLAS, a tile of
  columns per unit (:meth:`~RNSProduct.columns`), then CRTs to [0, q) and switches to q' = t 2**shift.
- ``sum_j a_j * W`` (:meth:`~RNSProduct.hint_block`): the second polynomials of the C result ciphertexts, the
  same for every row block and request of the session and block shape, switched whole. The client asks for
  them once per matrix and shape (the request's ``hint`` field) and keeps them; other results carry none.
  They are ring products, computed in the transform domain (:mod:`.ops`: chunks of L = n_d coefficients,
  transforms of length 2 L, a GEMM per slot).

``finish`` packs the result once every unit ran. The units may run in any order, or at once from several
threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from veilml.linear.bfv.ops import INVERSE_P1
from veilml.linear.bfv.params import MODULI, RESULT_FORMAT
from veilml.linear.bfv.planner import POLY_DEGREE, Plan
from veilml.linear.bfv.wire import pack_message
from veilml.runtime.bitpack import pack_values, unpack_values

__all__ = ["TILE_BYTES", "RNSProduct", "check_residues", "limbs_for", "pack_values", "result_size", "unpack_values"]

_ALL = np.arange(POLY_DEGREE)
_PRIMES = np.array(MODULI, dtype=np.int64)


#: bytes of one tile of the weight matrix converted to float64 for a unit of :class:`RNSProduct`
TILE_BYTES = 8 << 20


def limbs_for(d: int, w_max: int) -> int:
    """Residue limbs per prime for exact float64 sums of d products of residues (< 2**27) and weights (|w| <= w_max):
    one when they stay below 2**53, else two (of 14 and 13 bits)."""
    return 1 if d * (max(MODULI) - 1) * max(w_max, 1) < 2**53 else 2


class RNSProduct:
    """One validated request: units of column tiles of ``c0 W``, and the hint's when asked; ``finish`` packs them
    (see the module docstring).

    ``first`` is the c0 residues (R, J, primes, N); ``matrix`` the clear (d, m) weights; ``uniform`` the session's
    a_j (primes, N, J) in the transform domain, or None when the request asks for no hint; ``hint_weights`` gives
    the transformed weight blocks of the plan's shape for the hint; ``bits`` log2 q'; ``request`` the request's
    id, echoed.
    """

    def __init__(
        self,
        ops: Any,
        plan: Plan,
        n: int,
        counts: tuple[int, int, int],
        first: np.ndarray,
        matrix: np.ndarray,
        w_max: int,
        uniform: np.ndarray | None,
        hint_weights: Callable[[], Any],
        size: int,
        bits: int,
        request: str,
    ) -> None:
        (r, j, c), (d, m) = counts, matrix.shape
        if plan.n_m != 1 or c != m or first.shape != (r, j, len(MODULI), POLY_DEGREE):
            raise ValueError(
                f"the plan {plan} and {first.shape} residues do not fit this engine's product of a {matrix.shape} matrix"
            )
        self.ops, self.plan, self.n, self.counts, self.size, self.bits = ops, plan, n, counts, size, bits
        self.matrix, self.uniform, self.hint_weights = matrix, uniform, hint_weights
        self.fields = {"id": request, "hint": uniform is not None}
        # (primes, R n_t, d): entry (r n_t + i, j n_d + k) is coefficient i n_d + k of c0_{r,j}
        rows = first.reshape(r, j, len(MODULI), plan.n_t, plan.n_d).transpose(2, 0, 3, 1, 4)
        self.rows: np.ndarray | None = np.ascontiguousarray(rows.reshape(len(MODULI), r * plan.n_t, j * plan.n_d)[:, :, :d])
        self.limbs = limbs_for(d, w_max)
        self.tile = max(16, TILE_BYTES // (8 * max(d, 1)))
        self.out: np.ndarray | None = np.zeros((c, r * plan.n_t), np.int64)  # (C, R n_t): switched outputs
        self.hint: np.ndarray | None = None
        self.done: set[int] = set()
        self._lock = threading.Lock()

    def units(self) -> list[Callable[[], None]]:
        """Every unit of the request: one per tile of columns, then the hint's if asked."""
        tiles: list[Callable[[], None]] = [partial(self.columns, lo) for lo in range(0, self.counts[2], self.tile)]
        return tiles + ([self.hint_block] if self.uniform is not None else [])

    def columns(self, lo: int) -> None:
        """Columns lo .. lo + tile of ``c0 W`` for every row block: residues, CRT, switch; stored under the lock."""
        from veilml.linear.bfv import kernels

        rows = self.rows
        if rows is None:
            raise RuntimeError("this work is finished already")
        hi = min(lo + self.tile, self.counts[2])
        residues = self.ops.matmul_mod(rows, self.matrix[:, lo:hi], self.limbs)  # (primes, R n_t, hi - lo)
        out = np.empty((hi - lo, rows.shape[1]), np.int64)
        kernels.crt_switch(residues.transpose(0, 2, 1), np.arange(rows.shape[1]), _PRIMES, INVERSE_P1, self.bits, out)
        with self._lock:
            if self.out is None:
                raise RuntimeError("this work is finished already")
            self.out[lo:hi] = out
            self.done.add(lo)

    def hint_block(self) -> None:
        """The session's second polynomials of the C result ciphertexts, switched whole (see the module docstring)."""
        if self.out is None or self.uniform is None:
            raise RuntimeError("this work is finished already" if self.out is None else "no hint was asked for")
        x = self.ops.load_uniform(self.uniform, self.plan.n_t)
        hint = self.ops.finish(self.ops.multiply(x, self.hint_weights()), self.plan.n_t, _ALL, self.bits)
        with self._lock:
            self.hint = hint

    def finish(self) -> bytes:
        with self._lock:
            out, tiles = self.out, -(-self.counts[2] // self.tile)
            if out is None:
                raise RuntimeError("this work is finished already")
            if len(self.done) != tiles or (self.uniform is not None and self.hint is None):
                raise RuntimeError(f"finish() before every unit ran ({len(self.done)} of {tiles} column tiles done)")
            self.out = self.rows = None  # free them now
        r, _, c = self.counts
        values = out.reshape(c, r, self.plan.n_t).transpose(1, 0, 2)  # (R, C, n_t): result ciphertext (r, c)'s outputs
        frames = [pack_values(values, self.bits)] + ([] if self.hint is None else [pack_values(self.hint, self.bits)])
        if sum(map(len, frames)) != self.size:  # the plan fixes the size; anything else is a bug, never sent
            raise RuntimeError(f"a result of {sum(map(len, frames))} bytes, not the plan's {self.size}")
        return pack_message(RESULT_FORMAT, self.n, self.plan, frames, **self.fields)


def result_size(plan: Plan, counts: tuple[int, int, int], bits: int, hint: bool) -> int:
    """Bytes of a result's frames: R C ciphertexts' n_t n_m output coefficients, and C whole second polynomials for a
    hint, ``bits`` bits each."""
    r, _, c = counts
    size = -(-r * c * plan.n_t * plan.n_m * bits // 8)
    return size + (-(-c * POLY_DEGREE * bits // 8) if hint else 0)


def check_residues(first: np.ndarray) -> None:
    """ValueError unless every residue (..., primes, N) is below its prime."""
    for prime, p in enumerate(MODULI):
        if first.size and first[..., prime, :].max() >= p:
            raise ValueError("a ciphertext residue is not below its prime")
