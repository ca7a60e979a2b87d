"""The ``bfv-seal`` backend: exact encrypted ``x @ M`` by RLWE coefficient encoding with SEAL's BFV.

The client encrypts row blocks as polynomials (:mod:`veilml.linear.bfv.encoding`) with a fresh secret key per
session and parameter set (:class:`~.crypto.ClientKey`) and sends seeded ciphertexts; the worker multiplies
them by its weight blocks, encoded as plaintexts in NTT form, sums over the inner blocks in NTT form, switches
each result to a small modulus and sends back only the coefficients the client needs. The worker receives
public parameters (:class:`~.params.BFVParams`), never a key: there is no evaluation key. Exactness and
failure probability: :mod:`veilml.linear.bfv.planner`; bounded work (parameters and plan derived by the
worker, result size refused above a limit, one unit per row block with a deadline checked between units and
between column blocks): :mod:`veilml.linear.bfv.server`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from veilml.linear.base import ClientSession, LinearBackend, LinearServer, Work
from veilml.linear.bfv.cache import DEFAULT_WEIGHT_CACHE_BYTES, WeightBudget
from veilml.linear.bfv.encoding import encode_weights, unpack_bits
from veilml.linear.bfv.planner import POLY_DEGREE, Plan
from veilml.linear.bfv.seal.crypto import SealContext, seal_context
from veilml.linear.bfv.seal.params import CIPHERTEXT_FORMAT, RESULT_FORMAT, SEAL_COSTS, SETUP_FORMAT, BFVParams, client_params
from veilml.linear.bfv.seal.product import BlockProduct
from veilml.linear.bfv.seal.session import SealBFVSession
from veilml.linear.bfv.server import COST_BOUND, DEFAULT_MAX_RESULT_BYTES, BlockServer, Checked
from veilml.linear.limits import DEFAULT_RUN_TIMEOUT
from veilml.runtime.seal_bytes import PRNG_INFO_BYTES, PRNG_TYPES

__all__ = ["COST_BOUND", "DEFAULT_MAX_RESULT_BYTES", "SealBFVBackend", "SealBFVServer"]


class SealBFVServer(BlockServer):
    """Holds the clear matrix (and, within the budget, its NTT-form encoding); never a key (:class:`~..server.BlockServer`)."""

    costs = SEAL_COSTS
    setup_format, ciphertext_format, result_format = SETUP_FORMAT, CIPHERTEXT_FORMAT, RESULT_FORMAT

    @staticmethod
    def client_params(d: int, input_bits: int, w_max: int) -> BFVParams:
        return client_params(d, input_bits, w_max)

    @staticmethod
    def parse_params(data: bytes) -> BFVParams:
        return BFVParams.from_bytes(data)

    @staticmethod
    def held(column: list[Any]) -> int:
        """Bytes of one encoded column block: its plaintexts in NTT form (8 bytes per coefficient; None for zero blocks)."""
        return sum(plain is not None for plain in column) * POLY_DEGREE * 8

    def check_keys(self, evaluation_keys: bytes) -> None:
        seal_context(self.params(evaluation_keys))  # SEAL checks the parameters too

    def _weight_column(self, seal: SealContext, plan: Plan, c: int) -> list[Any]:
        """The J plaintexts (NTT form; None for an all-zero block) of column block ``c``."""
        block = self.matrix[:, c * plan.n_m : (c + 1) * plan.n_m]
        polys = encode_weights(block, plan.n_t, plan.n_d, plan.n_m, seal.params.plain_modulus)[:, 0]
        return [seal.plaintext(p, ntt=True) if p.any() else None for p in polys]

    def _work(self, checked: Checked, deadline: float | None) -> Work:
        params, plan, frames, (r, j, c) = checked.params, checked.plan, checked.frames, checked.counts
        if len(frames) != 2 or len(frames[1]) != r * j * PRNG_INFO_BYTES:
            raise ValueError(f"expected {r * j} seeded ciphertexts (two data frames of the right sizes)")
        first = unpack_bits(frames[0], r * j * POLY_DEGREE, params.coeff_modulus.bit_length())
        if first.size and first.max() >= params.coeff_modulus:
            raise ValueError("a ciphertext coefficient is not below the coefficient modulus")
        seeds = [frames[1][i : i + PRNG_INFO_BYTES] for i in range(0, len(frames[1]), PRNG_INFO_BYTES)]
        if any(seed[0] not in PRNG_TYPES for seed in seeds):
            raise ValueError("unknown PRNG type in a seed")
        seal = seal_context(params)
        weights = self.weights(params, plan, c, partial(self._weight_column, seal, plan))
        first = first.reshape(r, j, POLY_DEGREE)
        product = BlockProduct(seal, plan, checked.n, (r, j, c), first, seeds, weights, checked.size, deadline)
        return Work(tuple(partial(product.row_block, row) for row in range(r)), product.finish)


class SealBFVBackend(LinearBackend):
    """Exact encrypted products with SEAL's BFV and coefficient encoding (see the module docstring).

    Args:
        weight_cache_bytes: memory the worker's servers may keep weights encoded in (NTT form; for cached rows
            r <= 64, one block shape per n_t in 1, 2, 4 .. r, about 8 n_t bytes per weight and direction each);
            what does not fit is encoded for every request instead.
        run_timeout: seconds one request may compute (checked between units of work) when the caller gives
            no deadline; then :class:`~veilml.linear.base.WorkTimeout`.
        max_result_bytes: the largest result one request may produce; larger requests are refused unrun.
    """

    name = "bfv-seal"

    def __init__(
        self,
        *,
        weight_cache_bytes: int = DEFAULT_WEIGHT_CACHE_BYTES,
        run_timeout: float = DEFAULT_RUN_TIMEOUT,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.weight_cache_bytes = weight_cache_bytes
        self.run_timeout, self.max_result_bytes = run_timeout, max_result_bytes
        self._budget = WeightBudget(weight_cache_bytes)

    def server(self, matrix: np.ndarray, input_bits: int) -> LinearServer:
        return SealBFVServer(
            matrix, input_bits, self._budget, run_timeout=self.run_timeout, max_result_bytes=self.max_result_bytes
        )

    def session(self) -> ClientSession:
        return SealBFVSession()
