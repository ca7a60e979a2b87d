"""The ``bfv`` backend: exact encrypted ``x @ M`` by RLWE coefficient encoding with SEAL's BFV.

The client encrypts row blocks as polynomials (:mod:`.encoding`) with a fresh secret key per session and
parameter set (:class:`~.crypto.ClientKey`) and sends seeded ciphertexts; the worker multiplies them by
its weight blocks, encoded as plaintexts in NTT form, sums over the inner blocks in NTT form, switches
each result to a small modulus and sends back only the coefficients the client needs. The worker
receives public parameters (:class:`~.params.BFVParams`), never a key: there is no evaluation key.
Exactness and failure probability: :mod:`.params`.

Bounded work. Everything a request's cost depends on is derived by the worker, never taken from the
client: the parameters must be those veilml's client derives for the matrix (:func:`~.params.client_params`)
and the block plan the one :func:`~.params.plan_product` gives for the announced row count. So a request
of n rows costs the worker what the honest request of n rows costs, with constant :data:`COST_BOUND` = 1:
the same R J ciphertext loads, R J C products, R C result ciphertexts and result bytes, whatever the
ciphertexts hold. The only cost a request can add to that is encoding a block shape's weights the first
time it is used (once per server and shape, kept within the weight budget, never again: :mod:`.cache`). The
result's size follows from the plan (:func:`~.params.result_bytes`) and is refused above ``max_result_bytes``;
the work is cut into one unit per row block (:meth:`BFVServer.work`, :mod:`.product`) with a deadline checked
between units and between column blocks (:meth:`BFVServer.run`).
"""

from __future__ import annotations

import threading
import time
import weakref
from functools import partial
from typing import Any

import numpy as np

from veilml.linear.base import ClientSession, LinearBackend, LinearServer, Work, run_work
from veilml.linear.bfv.cache import DEFAULT_WEIGHT_CACHE_BYTES, EncodedColumns, WeightBudget, WeightCache
from veilml.linear.bfv.crypto import SealContext, seal_context
from veilml.linear.bfv.encoding import encode_weights, unpack_bits
from veilml.linear.bfv.params import (
    COEFF_BITS,
    POLY_DEGREE,
    BFVParams,
    Plan,
    cache_bytes,
    cached_shape,
    client_params,
    plain_bits_for,
    plan_product,
    result_bytes,
)
from veilml.linear.bfv.product import BlockProduct
from veilml.linear.bfv.seal_bytes import PRNG_INFO_BYTES, PRNG_TYPES
from veilml.linear.bfv.session import BFVSession
from veilml.linear.bfv.wire import CIPHERTEXT_FORMAT, RESULT_FORMAT, BFVSetup, pack_message, read_message
from veilml.linear.limits import DEFAULT_RUN_TIMEOUT

__all__ = ["COST_BOUND", "DEFAULT_MAX_RESULT_BYTES", "BFVBackend", "BFVServer"]

#: the largest result one request may produce, as the worker holds it (8 bytes per switched coefficient; the
#: bytes sent back are (plain_bits + shift) / 64 of it); honest 4096-row requests of SmolLM2's layers hold < 250 MB
DEFAULT_MAX_RESULT_BYTES = 1 << 30
#: a request of n rows costs at most this times the honest request of n rows (see the module docstring),
#: plus the one-time encoding of a block shape's weights
COST_BOUND = 1


class BFVServer(LinearServer):
    """Holds the clear matrix (and, within the budget, its NTT-form encoding); never a key.

    Args:
        budget: the backend's weight budget (None: keep no weights encoded).
        run_timeout: seconds :meth:`run` may compute when not given a deadline.
        max_result_bytes: largest result of one request as the worker holds it (8 bytes per coefficient; larger
            ones are refused before any work); what is sent back is exactly :func:`~.params.result_bytes`.
    """

    def __init__(
        self,
        matrix: np.ndarray,
        input_bits: int,
        budget: WeightBudget | None = None,
        *,
        run_timeout: float = DEFAULT_RUN_TIMEOUT,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        super().__init__(matrix, input_bits)
        if not isinstance(input_bits, (int, np.integer)) or isinstance(input_bits, bool) or not 1 <= input_bits <= 16:
            raise ValueError(f"input_bits must be an integer in [1, 16], got {input_bits!r}")
        if not run_timeout > 0 or max_result_bytes <= 0:
            raise ValueError("run_timeout and max_result_bytes must be positive")
        self.w_max = int(np.abs(self.matrix).max(initial=0))
        if self.w_max < 2**15:  # the same integers in 2 bytes instead of 8 (a SmolLM2-sized worker)
            self.matrix = self.matrix.astype(np.int16)
        self.run_timeout, self.max_result_bytes = float(run_timeout), int(max_result_bytes)
        self._budget = budget
        self._expected: BFVParams | ValueError | None = None
        self._sizes: dict[int, int] = {}
        self._cached_rows: int | None = None if budget is not None else 0
        self._cache = WeightCache(0)
        self._transient: weakref.WeakValueDictionary[tuple[int, int, int], EncodedColumns] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        if budget is not None:
            budget.announce(self.cache_size)

    @property
    def expected_params(self) -> BFVParams:
        """The parameters veilml's client derives for this matrix: the only ones this server accepts."""
        if self._expected is None:
            try:
                self._expected = client_params(self.spec.rows, self.spec.input_bits, max(self.w_max, 1))
            except ValueError as error:
                self._expected = error
        if isinstance(self._expected, ValueError):
            raise ValueError(f"no bfv parameters serve this matrix: {self._expected}")
        return self._expected

    def cache_size(self, cached_rows: int) -> int:
        """Bytes of this matrix's weights kept encoded for ``cached_rows`` (0 if the matrix cannot be served)."""
        if cached_rows not in self._sizes:
            try:
                params, (d, m) = self.expected_params, self.matrix.shape
                self._sizes[cached_rows] = cache_bytes(params, d, m, max(self.w_max, 1), cached_rows)
            except ValueError:
                self._sizes[cached_rows] = 0
        return self._sizes[cached_rows]

    @property
    def cached_rows(self) -> int:
        """Plans of at most this many rows per block use weights kept encoded (decided at the first setup)."""
        with self._lock:
            if self._cached_rows is None:
                self._cached_rows = self._budget.reserve(self.cache_size)
                self._cache = WeightCache(self.cache_size(self._cached_rows) if self._cached_rows else 0)
            return self._cached_rows

    @property
    def weight_cache(self) -> WeightCache:
        """The weights this server keeps encoded, with its bookkeeping (``held`` <= ``limit``)."""
        self.cached_rows  # noqa: B018 - decides the cache's size on first use
        return self._cache

    def setup(self) -> bytes:
        rows, cols = self.matrix.shape
        return BFVSetup(rows, cols, self.spec.input_bits, self.w_max, self.cached_rows).to_bytes()

    def params(self, evaluation_keys: bytes) -> BFVParams:
        """The client's public parameters, if they are exactly those veilml's client derives for this matrix."""
        params = BFVParams.from_bytes(evaluation_keys)
        need = plain_bits_for(self.spec.rows, self.spec.input_bits, self.w_max)
        if params.plain_bits < need:
            raise ValueError(f"a {params.plain_bits}-bit plaintext modulus is too small for this matrix (it needs {need} bits)")
        expected = self.expected_params
        if params != expected:
            raise ValueError(
                f"these bfv parameters (coefficient modulus {params.coeff_modulus}, a {params.plain_bits}-bit plaintext "
                f"modulus) are not this worker's for this matrix (SEAL's {COEFF_BITS}-bit prime {expected.coeff_modulus}, "
                f"{expected.plain_bits} bits); use veilml's client, which derives them from the worker's setup"
            )
        return expected

    def check_keys(self, evaluation_keys: bytes) -> None:
        seal_context(self.params(evaluation_keys))  # SEAL checks the parameters too

    def request_rows(self, ciphertext: bytes) -> int:
        return read_message(ciphertext, CIPHERTEXT_FORMAT)[0]

    def plan(self, params: BFVParams, n: int) -> Plan:
        """The block plan of a request of ``n`` rows: the one veilml's client computes from the setup."""
        d, m = self.matrix.shape
        return plan_product(params, n, d, m, max(self.w_max, 1), self.cached_rows)

    def _weight_column(self, seal: SealContext, plan: Plan, c: int) -> list[Any]:
        """The J plaintexts (NTT form; None for an all-zero block) of column block ``c``."""
        block = self.matrix[:, c * plan.n_m : (c + 1) * plan.n_m]
        polys = encode_weights(block, plan.n_t, plan.n_d, plan.n_m, seal.params.plain_modulus)[:, 0]
        return [seal.plaintext(p, ntt=True) if p.any() else None for p in polys]

    def _weights(self, seal: SealContext, plan: Plan, columns: int) -> EncodedColumns:
        """The weights of ``plan``'s shape: kept in the cache for a cached shape, else shared by the requests using them."""
        shape, encode = (plan.n_t, plan.n_d, plan.n_m), partial(self._weight_column, seal, plan)
        d, m = self.matrix.shape
        if plan.n_t <= self.cached_rows and plan == cached_shape(seal.params, d, m, max(self.w_max, 1), plan.n_t):
            return self._cache.columns(shape, columns, encode)
        with self._lock:  # encoded for this request, shared with concurrent ones of the same shape, freed after
            found = self._transient.get(shape)
            if found is None:
                found = self._transient[shape] = EncodedColumns(columns, encode, lambda column: True)
            return found

    def work(self, ciphertext: bytes, evaluation_keys: bytes) -> Work:
        """The request validated (ValueError before any heavy work) and cut into one unit per row block.

        Each unit loads its row block's J ciphertexts, multiplies them by all C column blocks and writes its
        slice of the result; the units run in any order (or at once, from several threads); ``finish``,
        after all of them, packs the result. Refused: parameters or a plan other than veilml's client's,
        sizes that do not match the plan, coefficients not below the modulus, and a result over
        ``max_result_bytes``.
        """
        return self._work(ciphertext, evaluation_keys, None)

    def run(self, ciphertext: bytes, evaluation_keys: bytes, deadline: float | None = None) -> bytes:
        """:meth:`work`, every unit in order and the finish; :class:`~..base.WorkTimeout` past ``deadline``.

        ``deadline`` is a :func:`time.monotonic` value, checked between units and between column blocks;
        None means ``run_timeout`` seconds from now.
        """
        if deadline is None:
            deadline = time.monotonic() + self.run_timeout
        return run_work(self._work(ciphertext, evaluation_keys, deadline), deadline)

    def _work(self, ciphertext: bytes, evaluation_keys: bytes, deadline: float | None) -> Work:
        params = self.params(evaluation_keys)
        n, plan, frames = read_message(ciphertext, CIPHERTEXT_FORMAT)
        if n == 0:
            empty = pack_message(RESULT_FORMAT, 0, None, [])
            return Work((), lambda: empty)
        expected = self.plan(params, n)
        if plan != expected:
            raise ValueError(
                f"the block plan {plan} is not this worker's plan for {n} rows ({expected}); use veilml's client, "
                "which derives the same plan from the worker's setup"
            )
        d, m = self.matrix.shape
        r, j, c = plan.counts(n, d, m)
        size = result_bytes(params, plan, n, d, m)  # what is sent back, fixed by the plan
        held = r * c * (POLY_DEGREE + plan.n_t * plan.n_m) * 8  # the worker's array of it
        if held > self.max_result_bytes:
            raise ValueError(
                f"the result of {n} rows would take {held} bytes, over this worker's limit of {self.max_result_bytes}; "
                "send fewer rows per request"
            )
        if len(frames) != 2 or len(frames[1]) != r * j * PRNG_INFO_BYTES:
            raise ValueError(f"expected {r * j} seeded ciphertexts (two data frames of the right sizes)")
        first = unpack_bits(frames[0], r * j * POLY_DEGREE, params.coeff_modulus.bit_length())
        if first.size and first.max() >= params.coeff_modulus:
            raise ValueError("a ciphertext coefficient is not below the coefficient modulus")
        seeds = [frames[1][i : i + PRNG_INFO_BYTES] for i in range(0, len(frames[1]), PRNG_INFO_BYTES)]
        if any(seed[0] not in PRNG_TYPES for seed in seeds):
            raise ValueError("unknown PRNG type in a seed")
        seal = seal_context(params)
        weights = self._weights(seal, plan, c)
        product = BlockProduct(seal, plan, n, (r, j, c), first.reshape(r, j, POLY_DEGREE), seeds, weights, size, deadline)
        return Work(tuple(partial(product.row_block, row) for row in range(r)), product.finish)


class BFVBackend(LinearBackend):
    """Exact encrypted products with SEAL's BFV and coefficient encoding (see the module docstring).

    Args:
        weight_cache_bytes: memory the worker's servers may keep weights encoded in (NTT form; for cached rows
            r <= 64, one block shape per n_t in 1, 2, 4 .. r, about 8 n_t bytes per weight and direction each);
            what does not fit is encoded for every request instead.
        run_timeout: seconds one request may compute (checked between units of work) when the caller gives
            no deadline; then :class:`~veilml.linear.base.WorkTimeout`.
        max_result_bytes: the largest result one request may produce; larger requests are refused unrun.
    """

    name = "bfv"

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
        return BFVServer(matrix, input_bits, self._budget, run_timeout=self.run_timeout, max_result_bytes=self.max_result_bytes)

    def session(self) -> ClientSession:
        return BFVSession()
