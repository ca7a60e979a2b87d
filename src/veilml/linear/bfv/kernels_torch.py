"""The ``bfv`` engine's array operations with torch, on any device (CUDA for a GPU worker; the CPU for the tests).

The same operations as :class:`~.ops.NumbaKernels` (see :mod:`.ops`), with the same results bit for bit: every
operation ends in canonical residues in [0, p) of the same mathematical values, and the switch's rounding is
the exact one (:func:`~.reference.switch_reference`). Residues are held as int64 tensors; products of two
residues (below 2**54) never overflow. The arithmetic:

- transforms: the butterflies of :mod:`.ntt`, one stage at a time over every polynomial at once (a view
  (primes, groups, 2, half, columns) and the stage's twiddles broadcast), each stage reduced mod p;
- the slot-wise GEMM: CUDA has no int64 matrix product, so each residue is split into a 14-bit low and a
  13-bit high limb and four float64 batched products are taken; a product of limbs is below 2**28, so sums of
  up to 2**25 of them (J <= 32,896 here) are exact in float64's 53 bits, then reduced mod p and recombined;
- the switch: a float64 estimate corrected by the exact residual ``v 2**bits - y q``, computed mod 2**60 from
  30-bit pieces so that no product overflows 64 bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veilml.linear.bfv.encoding import weight_blocks
from veilml.linear.bfv.ntt import tables
from veilml.linear.bfv.params import MODULI, transform_size
from veilml.linear.bfv.planner import POLY_DEGREE

__all__ = ["TorchKernels"]

_LOW = 14  # bits of the low limb of a residue in the float64 GEMM
_MASK60 = (1 << 60) - 1
_MASK30 = (1 << 30) - 1


class TorchKernels:
    """The operations of :mod:`.ops` with torch tensors on ``device`` ("cpu", "cuda", "cuda:1", ...)."""

    name = "torch"

    def __init__(self, device: str = "cuda") -> None:
        import torch

        self.torch = torch
        try:
            self.device = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"not a torch device: {device!r} ({error})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"torch sees no CUDA device here; use device='cpu' (numba kernels) instead of {device!r}")
        self.p = torch.tensor(MODULI, dtype=torch.int64, device=self.device)
        self._tables: dict[int, tuple[Any, ...]] = {}

    def _table(self, size: int) -> tuple[Any, ...]:
        if size not in self._tables:
            t, to = tables(size), self._tensor
            self._tables[size] = (to(t.forward), to(t.inverse), to(t.scale))
        return self._tables[size]

    def _tensor(self, array: np.ndarray) -> Any:
        return self.torch.as_tensor(np.ascontiguousarray(array), device=self.device).to(self.torch.int64)

    def _moduli(self, dims: int) -> Any:
        """The primes' moduli shaped to broadcast against a tensor of ``dims`` dimensions, the prime axis first."""
        return self.p.view(-1, *([1] * (dims - 1)))

    def forward(self, a: Any, size: int) -> Any:
        """The transforms of length ``size`` of every column of ``a`` (primes, size, ...): a new tensor in [0, p)."""
        w, _, _ = self._table(size)
        shape = a.shape
        x = a.reshape(len(MODULI), size, -1) % self._moduli(3)
        p = self._moduli(4)
        half, groups = size, 1
        while groups < size:
            half >>= 1
            view = x.view(len(MODULI), groups, 2, half, -1)
            tw = w[:, groups : 2 * groups].view(len(MODULI), groups, 1, 1)
            top, bottom = view[:, :, 0], view[:, :, 1] * tw % p
            x = self.torch.stack(((top + bottom) % p, (top - bottom) % p), dim=2).view(len(MODULI), size, -1)
            groups <<= 1
        return x.view(shape)

    def inverse(self, a: Any, size: int) -> Any:
        """The inverse transforms (T**-1 included) of every column of ``a`` (primes, size, ...): a new tensor."""
        _, w, scale = self._table(size)
        shape = a.shape
        x = a.reshape(len(MODULI), size, -1) % self._moduli(3)
        p = self._moduli(4)
        half, groups = 1, size >> 1
        while groups >= 1:
            view = x.view(len(MODULI), groups, 2, half, -1)
            tw = w[:, groups : 2 * groups].view(len(MODULI), groups, 1, 1)
            top, bottom = view[:, :, 0], view[:, :, 1]
            x = self.torch.stack(((top + bottom) % p, (top - bottom) * tw % p), dim=2).view(len(MODULI), size, -1)
            half <<= 1
            groups >>= 1
        return (x * scale.view(-1, 1, 1) % self._moduli(3)).view(shape)

    def weights(self, blocks: np.ndarray, n_t: int) -> Any:
        size = transform_size(n_t)
        b = self._tensor(blocks)  # (J, C, L) signed
        j, c, length = b.shape
        x = self.torch.zeros((len(MODULI), size, j, c), dtype=self.torch.int64, device=self.device)
        x[:, :length] = b.permute(2, 0, 1).unsqueeze(0) % self._moduli(4)
        return self.forward(x, size)

    def matrix_weights(self, matrix: np.ndarray, n_d: int, n_m: int, n_t: int) -> Any:
        return self.weights(weight_blocks(matrix, n_d, n_m), n_t)

    def _scatter(self, src: Any, x: Any, chunks: int, offset: int) -> None:
        """x[prime, k, offset + i, j] = src[prime, i L + k, j] for k < L (the rest stays zero)."""
        length = POLY_DEGREE // chunks
        parts = src.view(len(MODULI), chunks, length, -1).permute(0, 2, 1, 3)
        x[:, :length, offset : offset + chunks] = parts

    def load(self, coefficients: np.ndarray, n_t: int) -> Any:
        size, chunks = transform_size(n_t), 1 if n_t == 1 else n_t
        first = coefficients if isinstance(coefficients, self.torch.Tensor) else self._tensor(coefficients)
        x = self.torch.zeros((len(MODULI), size, chunks, first.shape[2]), dtype=self.torch.int64, device=self.device)
        self._scatter(first, x, chunks, 0)
        return self.forward(x, size)

    def load_uniform(self, a_hat: np.ndarray, n_t: int) -> Any:
        second = self._tensor(a_hat)
        if n_t == 1:  # the ring's own transform: the polynomials arrive in it
            return second.view(len(MODULI), POLY_DEGREE, 1, -1)
        return self.load(self.inverse(second, POLY_DEGREE), n_t)

    def matmul_mod(self, rows: np.ndarray, matrix: np.ndarray, limbs: int) -> np.ndarray:
        """``rows[prime] @ matrix mod p`` with float64 products on the device (see :meth:`~.ops.NumbaKernels.matmul_mod`)."""
        torch = self.torch
        primes, n, d = rows.shape
        x = self._tensor(rows).view(primes * n, d)
        w = self._tensor(matrix).to(torch.float64)
        p = self.p.view(-1, 1, 1)
        if limbs == 1:
            out = (x.to(torch.float64) @ w).to(torch.int64).view(primes, n, -1) % p
        else:
            mask = (1 << _LOW) - 1
            low = ((x & mask).to(torch.float64) @ w).to(torch.int64).view(primes, n, -1) % p
            high = ((x >> _LOW).to(torch.float64) @ w).to(torch.int64).view(primes, n, -1) % p
            out = (low + (high << _LOW)) % p
        return self.to_numpy(out)

    def multiply(self, x: Any, w: Any) -> Any:
        """Y[r, s] = X[r, s] @ W[r, s] mod p: four float64 batched products of 14/13-bit limbs, each exact."""
        torch = self.torch
        primes, size, rows, inner = x.shape
        cols = w.shape[3]
        xs = x.reshape(primes * size, rows, inner)
        ws = w.reshape(primes * size, inner, cols)
        mask = (1 << _LOW) - 1
        x_limbs = ((xs & mask).to(torch.float64), (xs >> _LOW).to(torch.float64))
        w_limbs = ((ws & mask).to(torch.float64), (ws >> _LOW).to(torch.float64))
        p = self.p.repeat_interleave(size).view(-1, 1, 1)

        def part(a: int, b: int) -> Any:
            return torch.bmm(x_limbs[a], w_limbs[b]).to(torch.int64) % p

        low, middle, high = part(0, 0), (part(0, 1) + part(1, 0)) % p, part(1, 1)
        square = torch.tensor([(1 << 2 * _LOW) % q for q in MODULI], dtype=torch.int64, device=self.device)
        out = (low + (middle << _LOW) % p + high * square.repeat_interleave(size).view(-1, 1, 1) % p) % p
        return out.view(primes, size, rows, cols)

    def residues(self, y: Any, n_t: int) -> Any:
        chunks = 1 if n_t == 1 else n_t
        primes, size, rows, cols = y.shape
        polys = rows // chunks
        z = self.inverse(y, size).view(primes, size, polys, chunks, cols)
        if chunks == 1:
            return z[:, :, :, 0].permute(0, 2, 3, 1).contiguous()  # (primes, polys, C, N)
        length = size // 2
        head, tail = z[:, :length], z[:, length:]
        carried = self.torch.roll(tail, 1, dims=3)  # chunk i receives chunk i - 1's tail
        carried[:, :, :, 0] = -carried[:, :, :, 0]  # the last chunk's tail wraps around X**N = -1
        v = (head + carried) % self._moduli(5)  # (primes, L, polys, chunks, C)
        return v.permute(0, 2, 4, 3, 1).reshape(primes, polys, cols, POLY_DEGREE)

    def finish(self, y: Any, n_t: int, indices: np.ndarray, bits: int) -> np.ndarray:
        picked = self.residues(y, n_t)[:, 0][:, :, self._tensor(indices)]  # (primes, C, len(indices))
        p1, p2 = MODULI
        low = picked[0]
        high = (picked[1] - low + 2 * p2) * pow(p1, -1, p2) % p2
        return self.to_numpy(_switch(self.torch, low + p1 * high, bits, p1 * p2))

    def to_numpy(self, a: Any) -> np.ndarray:
        return a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a)


def _switch(torch: Any, v: Any, bits: int, q: int) -> Any:
    """round(v 2**bits / q) mod 2**bits for 0 <= v < q < 2**54, exactly (rounding half up, as the numba kernel)."""
    y = torch.floor(v.to(torch.float64) * (2.0**bits / q) + 0.5).to(torch.int64)
    shifted = (v & ((1 << (60 - bits)) - 1)) << bits  # v 2**bits mod 2**60, below 2**60
    q_low, q_high = q & _MASK30, q >> 30
    y_low, y_high = y & _MASK30, y >> 30
    cross = ((y_high * q_low + y_low * q_high) & _MASK30) << 30
    product = (cross + y_low * q_low) & _MASK60  # y q mod 2**60
    residual = (shifted - product) & _MASK60
    residual = torch.where(residual >= 1 << 59, residual - (1 << 60), residual)  # |v 2**bits - y q| < 2**56: exact
    for _ in range(2):  # the estimate is off by at most one
        up, down = 2 * residual >= q, 2 * residual < -q
        y = torch.where(up, y + 1, torch.where(down, y - 1, y))
        residual = torch.where(up, residual - q, torch.where(down, residual + q, residual))
    return y & ((1 << bits) - 1)
