"""One validated ``bfv-seal`` request as units of work: each row block's products, then the packed result.

:meth:`~.backend.SealBFVServer.work` checks a request and hands the checked pieces to a :class:`BlockProduct`;
its :meth:`~BlockProduct.row_block` units load one row block's ciphertexts, multiply them by every column
block of weights (NTT form), switch each sum to the result modulus and store its slice; ``finish`` packs the
result once every unit ran. The units may run in any order, or at once from several threads.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from veilml.linear.base import check_deadline
from veilml.linear.bfv.cache import EncodedColumns
from veilml.linear.bfv.encoding import output_positions, pack_bits, switch_modulus
from veilml.linear.bfv.planner import POLY_DEGREE, Plan
from veilml.linear.bfv.seal.crypto import SealContext
from veilml.linear.bfv.seal.params import RESULT_FORMAT
from veilml.linear.bfv.wire import pack_message

__all__ = ["BlockProduct"]


class RowBlocks:
    """A validated request cut into row blocks: each (a unit) stores its slice of the switched result under a lock;
    ``finish`` packs the whole once every unit ran. Subclasses set ``result_format`` and ``bits`` and give
    :meth:`_frames` (and the header ``fields`` of their result)."""

    result_format: str
    bits: int
    first: Any
    weights: Any
    fields: dict[str, object] = {}

    def _start(self, plan: Plan, n: int, counts: tuple[int, int, int], size: int, dtype: type, width: int | None = None) -> None:
        self.plan, self.n, self.counts, self.size = plan, n, counts, size
        self.positions = output_positions(plan.n_t, plan.n_d, plan.n_m)
        r, _, c = counts
        width = POLY_DEGREE + self.positions.size if width is None else width
        self.out: np.ndarray | None = np.zeros((r, c, width), dtype)
        self.done: set[int] = set()
        self._lock = threading.Lock()

    def _store(self, row: int, switched: np.ndarray) -> None:
        with self._lock:
            if self.out is None:
                raise RuntimeError("this work is finished already")
            self.out[row] = switched
            self.done.add(row)

    def _missing(self) -> str | None:
        """What is not done yet (None once every unit ran)."""
        r = self.counts[0]
        return None if len(self.done) == r else f"{len(self.done)} of {r} row blocks done"

    def _frames(self, out: np.ndarray) -> list[bytes]:
        raise NotImplementedError

    def finish(self) -> bytes:
        with self._lock:
            out = self.out
            if out is None:
                raise RuntimeError("this work is finished already")
            missing = self._missing()
            if missing is not None:
                raise RuntimeError(f"finish() before every unit ran ({missing})")
            self.out = self.first = self.weights = None  # type: ignore[assignment]  # free them now
        frames = self._frames(out)
        if sum(map(len, frames)) != self.size:  # the plan fixes the size; anything else is a bug, never sent
            raise RuntimeError(f"a result of {sum(map(len, frames))} bytes, not the plan's {self.size}")
        return pack_message(self.result_format, self.n, self.plan, frames, **self.fields)


class BlockProduct(RowBlocks):
    """One validated request on SEAL: each row block (a unit) computes and stores its slice (:class:`RowBlocks`)."""

    result_format = RESULT_FORMAT

    def __init__(
        self,
        seal: SealContext,
        plan: Plan,
        n: int,
        counts: tuple[int, int, int],
        first: np.ndarray,
        seeds: list[bytes],
        weights: EncodedColumns,
        size: int,
        deadline: float | None,
    ) -> None:
        self.seal, self.first, self.seeds, self.weights, self.deadline = seal, first, seeds, weights, deadline
        self.bits = seal.params.plain_bits + plan.shift
        self._start(plan, n, counts, size, np.uint64)

    def row_block(self, row: int) -> None:
        """Load row block ``row``'s J ciphertexts, multiply them by every column block, switch, store."""
        seal, evaluator, (r, j, c) = self.seal, self.seal.evaluator, self.counts
        if self.out is None:
            raise RuntimeError("this work is finished already")
        inputs = []
        for inner in range(j):
            ct = seal.load_seeded(self.first[row, inner], self.seeds[row * j + inner])
            evaluator.transform_to_ntt_inplace(ct)
            inputs.append(ct)
        block = np.zeros((c, POLY_DEGREE + self.positions.size), np.uint64)
        for col in range(c):
            check_deadline(self.deadline, len(self.done), r)  # a no-op without a deadline
            total = None
            for inner, plain in enumerate(self.weights[col]):
                if plain is None:  # an all-zero block adds nothing (and SEAL refuses a product with zero)
                    continue
                term = seal.ciphertext()
                evaluator.multiply_plain(inputs[inner], plain, term)
                if total is None:
                    total = term
                else:
                    evaluator.add_inplace(total, term)
            if total is None:  # the whole column block is zero: a trivial encryption of zeros
                continue
            evaluator.transform_from_ntt_inplace(total)
            polys = seal.polynomials(total)
            block[col, :POLY_DEGREE] = polys[1]
            block[col, POLY_DEGREE:] = polys[0][self.positions]
        self._store(row, switch_modulus(block, seal.params.coeff_modulus, self.bits))

    def _frames(self, out: np.ndarray) -> list[bytes]:
        return [pack_bits(out, self.bits)]
