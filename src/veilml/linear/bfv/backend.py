"""The ``bfv`` backend: exact encrypted ``x @ M`` by RLWE coefficient encoding, in RNS form with veilml's own kernels.

The client encrypts every row block of a request at once (:class:`~.keys.ClientKey`: a fresh secret per
session and parameter set, one seed per request) and sends the first polynomials' residues mod p1 and p2 and
the seed; the worker expands the second polynomials from the seed in the transform domain (:mod:`.prg`),
multiplies both by its transformed weight blocks slot by slot, transforms back, switches each result to a
small modulus and sends back only the coefficients the client needs (:mod:`.product`). The worker receives
public parameters (:class:`~.params.BFVParams`), never a key: there is no evaluation key. Exactness and
failure probability: :mod:`.planner`; bounded work (parameters and plan derived by the worker, result size
refused above a limit, one unit per row block with the deadline checked between units, the weight cache
within its budget): :mod:`.server`.

The arithmetic runs on a kernel set (:func:`~.ops.kernel_set`): numba on the CPU (the default), or torch on
any device (``device="cuda"``; ``veilml worker --device cuda``). Both give the same bits.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from veilml.linear.base import ClientSession, LinearBackend, LinearServer, Work
from veilml.linear.bfv.cache import DEFAULT_WEIGHT_CACHE_BYTES, WeightBudget
from veilml.linear.bfv.params import (
    CIPHERTEXT_FORMAT,
    MODULI,
    PRIME_BITS,
    RESULT_FORMAT,
    RNS_COSTS,
    SEED_BYTES,
    SETUP_FORMAT,
    BFVParams,
    client_params,
)
from veilml.linear.bfv.planner import POLY_DEGREE, Plan
from veilml.linear.bfv.product import RNSProduct, check_residues, unpack_values
from veilml.linear.bfv.server import COST_BOUND, DEFAULT_MAX_RESULT_BYTES, BlockServer, Checked
from veilml.linear.bfv.session import BFVSession
from veilml.linear.limits import DEFAULT_RUN_TIMEOUT

__all__ = ["COST_BOUND", "DEFAULT_MAX_RESULT_BYTES", "BFVBackend", "BFVServer"]


class BFVServer(BlockServer):
    """Holds the clear matrix (and, within the budget, its transformed weight blocks); never a key.

    Args (besides :class:`~.server.BlockServer`'s): ``ops``, the kernel set its products run on
    (:func:`~.ops.kernel_set`; default numba on the CPU).
    """

    costs = RNS_COSTS
    setup_format, ciphertext_format, result_format = SETUP_FORMAT, CIPHERTEXT_FORMAT, RESULT_FORMAT

    def __init__(
        self, matrix: np.ndarray, input_bits: int, budget: WeightBudget | None = None, *, ops: Any = None, **limits: Any
    ) -> None:
        super().__init__(matrix, input_bits, budget, **limits)
        if ops is None:
            from veilml.linear.bfv.ops import kernel_set

            ops = kernel_set()
        self.ops = ops

    @staticmethod
    def client_params(d: int, input_bits: int, w_max: int) -> BFVParams:
        return client_params(d, input_bits, w_max)

    @staticmethod
    def parse_params(data: bytes) -> BFVParams:
        return BFVParams.from_bytes(data)

    @staticmethod
    def held(column: Any) -> int:
        """Bytes of one shape's transformed weight blocks (primes, T, J, C) int32, wherever they are."""
        return int(column.nbytes)

    def _encode(self, plan: Plan, column: int) -> Any:
        """The transformed weight blocks of ``plan``'s shape (the whole matrix: one "column" of the cache)."""
        return self.ops.matrix_weights(self.matrix, plan.n_d, plan.n_m, plan.n_t)

    def _work(self, checked: Checked, deadline: float | None) -> Work:
        params, plan, frames, (r, j, c) = checked.params, checked.plan, checked.frames, checked.counts
        if len(frames) != 2 or len(frames[1]) != SEED_BYTES:
            raise ValueError(f"expected {r * j} ciphertexts and one {SEED_BYTES}-byte seed (two data frames)")
        first = unpack_values(frames[0], r * j * len(MODULI) * POLY_DEGREE, PRIME_BITS, np.int32)  # ValueError: wrong size
        first = first.reshape(r, j, len(MODULI), POLY_DEGREE)
        check_residues(first)
        weights = self.weights(params, plan, 1, partial(self._encode, plan))[0]
        bits = params.plain_bits + plan.shift
        product = RNSProduct(self.ops, plan, checked.n, (r, j, c), first, frames[1], weights, checked.size, bits)
        return Work(tuple(partial(product.row_block, row) for row in range(r)), product.finish)


class BFVBackend(LinearBackend):
    """Exact encrypted products by coefficient encoding in RNS form, on numba or torch kernels (see the module docstring).

    Args:
        weight_cache_bytes: memory the worker's servers may keep transformed weight blocks in (for cached rows
            r <= 64, one block shape per n_t in 1, 2, 4 .. r, 16 bytes per weight and direction each); what
            does not fit is transformed for every request instead.
        run_timeout: seconds one request may compute (checked between units of work) when the caller gives
            no deadline; then :class:`~veilml.linear.base.WorkTimeout`.
        max_result_bytes: the largest result one request may produce; larger requests are refused unrun.
        device: where the worker computes: ``"cpu"`` (numba kernels) or a torch device such as ``"cuda"``
            (torch kernels). The client always encrypts and decrypts on the CPU.
        kernels: ``"numba"`` or ``"torch"``; None picks numba on the CPU and torch elsewhere.
    """

    name = "bfv"

    def __init__(
        self,
        *,
        weight_cache_bytes: int = DEFAULT_WEIGHT_CACHE_BYTES,
        run_timeout: float = DEFAULT_RUN_TIMEOUT,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        device: str = "cpu",
        kernels: str | None = None,
    ) -> None:
        from veilml.linear.bfv.ops import kernel_set

        self.weight_cache_bytes = weight_cache_bytes
        self.run_timeout, self.max_result_bytes = run_timeout, max_result_bytes
        self.device, self.kernels = device, kernels or ("numba" if device == "cpu" else "torch")
        self.ops = kernel_set(self.kernels, device)
        self._budget = WeightBudget(weight_cache_bytes)

    def server(self, matrix: np.ndarray, input_bits: int) -> LinearServer:
        return BFVServer(
            matrix, input_bits, self._budget, ops=self.ops, run_timeout=self.run_timeout, max_result_bytes=self.max_result_bytes
        )

    def session(self) -> ClientSession:
        return BFVSession()
