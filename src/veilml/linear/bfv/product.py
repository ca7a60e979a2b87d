"""One validated ``bfv`` request as units of work: each row block's products, then the packed result.

:meth:`~.backend.BFVServer.work` checks a request and hands the checked pieces to a :class:`RNSProduct`. Its
units (:meth:`~RNSProduct.row_block`, one per row block of n_t rows) run the array operations of
:mod:`.ops` on the block's J ciphertexts:

1. expand their second polynomials from the request's seed, in the ring's transform domain (:mod:`.prg`);
2. ``load``: cut both polynomials of each ciphertext into n_t chunks of L = N / n_t coefficients and transform
   them with length T = 2 L (n_t = 1: the ring's own transform, of c0 only);
3. ``multiply``: slot by slot, the (2 n_t, J) chunks times the (J, C) transformed weight blocks (a small GEMM
   per slot and prime, lazy reduction): the sums over the J inner blocks of every product;
4. ``finish``: back from the transform domain; the chunks' linear products added up negacyclically (X**N = -1)
   into the C result ciphertexts mod p1 and p2; CRT to [0, q) and the switch to q' = t 2**shift, c1 whole and
   c0 at the output coefficients only.

A chunk of L coefficients times a weight polynomial of L coefficients has fewer than 2 L coefficients, so the
transform of length 2 L computes it without wrapping: the weights cost 2 words per weight and prime whatever
n_t, and the ring product is recovered exactly. ``finish`` packs the result once every unit ran. The units may
run in any order, or at once from several threads.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from veilml.linear.bfv.encoding import output_positions
from veilml.linear.bfv.params import MODULI, RESULT_FORMAT
from veilml.linear.bfv.planner import POLY_DEGREE, Plan
from veilml.linear.bfv.prg import expand_uniform
from veilml.linear.bfv.wire import pack_message

__all__ = ["RNSProduct", "check_residues", "pack_values", "unpack_values"]


def pack_values(values: np.ndarray, bits: int) -> bytes:
    """Non-negative integers below 2**bits (bits <= 55), ``bits`` bits each from bit 0 of a little-endian stream
    (the layout of :func:`~.encoding.pack_bits`)."""
    from veilml.linear.bfv import kernels

    flat = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    out = np.zeros(-(-flat.size * bits // 8), np.uint8)
    kernels.pack(flat, bits, out)
    return out.tobytes()


def unpack_values(data: bytes, count: int, bits: int, dtype: type = np.int64) -> np.ndarray:
    """The ``count`` values of :func:`pack_values` (int64, or ``dtype`` when they fit it); ValueError unless ``data``
    has exactly their size."""
    from veilml.linear.bfv import kernels

    size = -(-count * bits // 8)
    if len(data) != size:
        raise ValueError(f"expected {count} values of {bits} bits ({size} bytes), got {len(data)} bytes")
    out = np.empty(count, dtype)
    kernels.unpack(np.frombuffer(data, np.uint8), bits, out)
    return out


class RowBlocks:
    """What a validated request of either engine shares: each row block (a unit) stores its slice of the switched
    result under a lock; ``finish`` packs the whole once every unit ran. Subclasses set ``result_format`` and
    ``bits`` and give :meth:`_pack`."""

    result_format: str
    bits: int
    first: Any
    weights: Any

    def _start(self, plan: Plan, n: int, counts: tuple[int, int, int], size: int, dtype: type) -> None:
        self.plan, self.n, self.counts, self.size = plan, n, counts, size
        self.positions = output_positions(plan.n_t, plan.n_d, plan.n_m)
        r, _, c = counts
        self.out: np.ndarray | None = np.zeros((r, c, POLY_DEGREE + self.positions.size), dtype)
        self.done: set[int] = set()
        self._lock = threading.Lock()

    def _store(self, row: int, switched: np.ndarray) -> None:
        with self._lock:
            if self.out is None:
                raise RuntimeError("this work is finished already")
            self.out[row] = switched
            self.done.add(row)

    def _pack(self, out: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        with self._lock:
            out, r = self.out, self.counts[0]
            if out is None:
                raise RuntimeError("this work is finished already")
            if len(self.done) != r:
                raise RuntimeError(f"finish() before every unit ran ({len(self.done)} of {r} row blocks done)")
            self.out = self.first = self.weights = None  # type: ignore[assignment]  # free them now
        values = self._pack(out)
        if len(values) != self.size:  # the plan fixes the size; anything else is a bug, never sent
            raise RuntimeError(f"a result of {len(values)} bytes, not the plan's {self.size}")
        return pack_message(self.result_format, self.n, self.plan, [values])


class RNSProduct(RowBlocks):
    """One validated request: each row block (a unit) writes its slice of the switched result; ``finish`` packs it.

    ``first`` is the c0 residues (R, J, primes, N), ``weights`` the transformed weight blocks of the plan's shape
    (primes, T, J, C) as the kernel set holds them, ``bits`` log2 q'.
    """

    result_format = RESULT_FORMAT

    def __init__(
        self,
        ops: Any,
        plan: Plan,
        n: int,
        counts: tuple[int, int, int],
        first: np.ndarray,
        seed: bytes,
        weights: Any,
        size: int,
        bits: int,
    ) -> None:
        self.ops, self.first, self.seed, self.weights, self.bits = ops, first, seed, weights, bits
        self._start(plan, n, counts, size, np.int64)

    def row_block(self, row: int) -> None:
        """Expand, load, multiply and switch row block ``row``'s J ciphertexts; store its C result ciphertexts."""
        if self.out is None:
            raise RuntimeError("this work is finished already")
        j = self.counts[1]
        c0 = self.first[row].transpose(1, 2, 0)  # (primes, N, J), a view: the kernels read it in place
        a_hat = expand_uniform(self.seed, row * j, j)
        x = self.ops.load(c0, a_hat, self.plan.n_t)
        y = self.ops.multiply(x, self.weights)
        self._store(row, self.ops.finish(y, self.plan.n_t, self.positions, self.bits))

    def _pack(self, out: np.ndarray) -> bytes:
        return pack_values(out, self.bits)


def check_residues(first: np.ndarray) -> None:
    """ValueError unless every residue (..., primes, N) is below its prime."""
    for prime, p in enumerate(MODULI):
        if first.size and first[..., prime, :].max() >= p:
            raise ValueError("a ciphertext residue is not below its prime")
